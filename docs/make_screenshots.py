"""Regenerate the README screenshots from the real napari window.

Run under a virtual display from the repository root:
    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_screenshots.py [--model NAME]
Writes docs/images/detect.png (sample + overlays + widget, the largest finding selected),
threshold.png (the whole Detect widget), card.png (the model card dialog), mslub.png (an MS scan with
its expert mask beside the model's mask), mslub-flair.png (its FLAIR under restore-any) and batch.png (the batch widget after a run over a temporary folder).
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_brainuad._sample_data import mslub_patient26, mslub_patient26_flair, stroke_t1
from napari_brainuad.sample import SAMPLE_MODEL, sample_path
from napari_brainuad.widgets import BatchWidget, DetectWidget

OUT = Path(__file__).parent / "images"


def wait(widget) -> None:
    while widget.worker is not None:
        QApplication.processEvents()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=SAMPLE_MODEL)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1600, 1000)
    for data, kwargs, kind in stroke_t1():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget = DetectWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Detect anomalies", area="right")
    widget.image.value = viewer.layers[0]
    widget.model.setCurrentText(args.model)
    widget.run()
    wait(widget)
    QApplication.processEvents()
    widget.table.selectRow(0)  # the largest finding, highlighted
    viewer.reset_view()
    viewer.dims.set_point(0, 22.0)  # an axial slice through the left posterior stroke (z = 22 mm)
    QApplication.processEvents()
    viewer.screenshot(str(OUT / "detect.png"), canvas_only=False)
    widget.scroll.widget().grab().save(str(OUT / "threshold.png"))
    dialog = widget.show_card()
    QApplication.processEvents()
    dialog.grab().save(str(OUT / "card.png"))
    dialog.close()

    viewer.layers.clear()  # an MS scan with its expert mask: the model's mask (cyan contours) stays distinct
    for data, kwargs, kind in mslub_patient26():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget.image.value = viewer.layers[0]
    widget.run()
    wait(widget)
    widget.table.selectRow(0)
    viewer.scene.camera.zoom *= 1.6
    QApplication.processEvents()
    viewer.screenshot(str(OUT / "mslub.png"), canvas_only=True)

    viewer.layers.clear()  # the same patient's FLAIR with the any-contrast model, contrast stated, default threshold
    for data, kwargs, kind in mslub_patient26_flair():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget.image.value = viewer.layers[0]
    widget.model.setCurrentText("restore-any")
    widget.contrast.setCurrentIndex(widget.contrast.findData("FLAIR"))
    widget.run()
    wait(widget)
    viewer.reset_view()
    QApplication.processEvents()
    viewer.screenshot(str(OUT / "mslub-flair.png"), canvas_only=False)
    widget.contrast.setCurrentIndex(0)
    widget.model.setCurrentText(args.model)

    viewer.window.remove_dock_widget("all")
    batch = BatchWidget(viewer)
    viewer.window.add_dock_widget(batch, name="Batch detection", area="right")
    with tempfile.TemporaryDirectory() as tmp:
        cohort = Path(tmp) / "cohort"
        cohort.mkdir()
        shutil.copy(sample_path("stroke T1"), cohort / "sub-01_T1w.nii.gz")
        shutil.copy(sample_path("MSLUB T1"), cohort / "sub-02_T1w.nii.gz")
        (cohort / "sub-03_T1w.nii.gz").write_bytes(b"not a scan")
        batch.input_dir.value, batch.out_dir.value = cohort, Path(tmp) / "results"
        batch.pattern.setText("*_T1w.nii.gz")
        batch.model.setCurrentText(args.model)
        batch.run()
        wait(batch)
        QApplication.processEvents()
        batch.grab().save(str(OUT / "batch.png"))
    viewer.close()


if __name__ == "__main__":
    main()
