"""The napari widgets in a real viewer (under Xvfb via pytest-xvfb)."""
import csv
import time

import nibabel as nib
import numpy as np
import pytest

from conftest import LESION_CENTRE_MM, near_lesion, phantom_scan
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform
from qtpy.QtWidgets import QScrollArea

from napari_brainuad._reader import read_layers
from napari_brainuad.progress import Step
from napari_brainuad.sample import SAMPLE_MODEL
from napari_brainuad.widgets import BatchWidget, DetectWidget
from napari_brainuad.widgets.card_view import flagged_note


@pytest.fixture
def viewer_with_scan(make_napari_viewer, phantom_path):
    viewer = make_napari_viewer()
    (data, kwargs, _), = read_layers(str(phantom_path))
    viewer.add_image(data, **kwargs)
    return viewer


def run_detection(widget, qtbot, model="intensity-t1"):
    widget.model.setCurrentText(model)
    widget.register.setChecked(False)
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)


def test_detect_widget_adds_layers_on_the_scan_grid(viewer_with_scan, qtbot):
    viewer = viewer_with_scan
    widget = DetectWidget(viewer)
    assert widget.model.currentText() == SAMPLE_MODEL and not widget.t_int.isEnabled()
    assert widget.findChild(QScrollArea) is not None
    run_detection(widget, qtbot)
    scan = viewer.layers[0]
    names = [layer.name for layer in viewer.layers]
    assert names == [scan.name] + [f"{scan.name} {kind} [intensity-t1]" for kind in ("reconstruction", "anomaly map",
                                                                                     "mask")]
    for layer in viewer.layers[1:]:
        assert layer.data.shape == scan.data.shape
        np.testing.assert_allclose(layer.affine.affine_matrix, scan.affine.affine_matrix)
    assert widget.table.rowCount() == len(widget.result.findings) > 0
    assert widget.status.text().startswith("Done in") and "findings" in widget.status.text()  # not "done (100%)"
    anomaly, mask = viewer.layers[2], viewer.layers[3]
    assert anomaly.blending == "translucent" and anomaly.colormap.colors[0][3] == 0 and anomaly.colorbar.visible
    assert anomaly.metadata["units"] == "residual (normalised intensity, 0-1)"
    assert widget.threshold_label.text() == f"threshold, in {anomaly.metadata['units']}"
    assert len({tuple(mask.colormap.map(label)) for label in range(1, 6)}) == 1  # one colour for every finding
    run_detection(widget, qtbot, "dae-t1")  # another model: its own layers, the first ones kept
    assert len(viewer.layers) == 7 and f"{scan.name} mask [dae-t1]" in viewer.layers
    run_detection(widget, qtbot)  # the same model again: its layers updated in place
    assert len(viewer.layers) == 7


def test_detect_widget_polarity_and_contrast_reach_the_run(viewer_with_scan, qtbot):
    widget = DetectWidget(viewer_with_scan)
    widget.model.setCurrentText("anatomy-any")
    assert widget.polarity.currentData() == "auto"  # the card's
    widget.model.setCurrentText("intensity-t1")
    assert widget.polarity.currentData() == "both"
    widget.polarity.setCurrentIndex(widget.polarity.findData("bright"))
    run_detection(widget, qtbot)
    assert widget.result.polarity == "bright" and "anomalous: brighter only" in widget.status.text()
    assert not near_lesion(widget.result.findings)  # the phantom's lesion is dark
    widget.polarity.setCurrentIndex(widget.polarity.findData("auto"))
    widget.contrast.setCurrentIndex(widget.contrast.findData("FLAIR"))  # stated: settles auto to bright
    run_detection(widget, qtbot)
    assert widget.result.polarity == "bright"
    assert any("a FLAIR scan, not the T1" in w for w in widget.result.warnings)


def test_threshold_slider_rethresholds_fast_and_moves_to_findings(viewer_with_scan, qtbot):
    viewer = viewer_with_scan
    widget = DetectWidget(viewer)
    run_detection(widget, qtbot)
    mask = viewer.layers[-1]
    before = int((mask.data > 0).sum())
    start = time.perf_counter()
    widget.slider.setValue(widget.slider.value() + 100)
    elapsed = time.perf_counter() - start
    assert int((mask.data > 0).sum()) < before
    assert elapsed < 0.05, f"re-thresholding took {elapsed * 1000:.0f} ms"
    qtbot.waitUntil(lambda: widget.result.threshold == widget._pending, timeout=2000)
    widget.set_threshold(0.05)
    qtbot.wait(300)
    distances = [np.linalg.norm(np.array(f.centroid_mm) - LESION_CENTRE_MM) for f in widget.result.findings]
    row = int(np.argmin(distances))
    widget.table.selectRow(row)
    finding = widget.result.findings[row]
    x, y, z = finding.centroid_mm
    np.testing.assert_allclose(viewer.dims.point, [z, -y, -x], atol=2.0)
    other = next(f.label for f in widget.result.findings if f.label != finding.label)
    assert tuple(mask.colormap.map(finding.label)) != tuple(mask.colormap.map(other))  # the selected one stands out


def test_worker_error_is_one_short_notification(viewer_with_scan, qtbot, monkeypatch):
    def failing(*args, **kwargs):
        yield Step("scoring", 0.5)
        raise RuntimeError(f"shapes differ: {np.arange(5000)}\nsecond line")

    shown = []
    monkeypatch.setattr("napari_brainuad.widgets.detect.iter_detect", failing)
    monkeypatch.setattr("napari_brainuad.widgets.worker.notifications.show_error", shown.append)
    widget = DetectWidget(viewer_with_scan)
    run_detection(widget, qtbot)  # pytest-qt fails the test if the error is re-raised in the UI thread
    assert len(shown) == 1 and len(shown[0]) <= 200 and "\n" not in shown[0]
    assert widget.status.text() == "Failed: " + shown[0] and len(viewer_with_scan.layers) == 1


def test_model_card_dialog_and_calibration_warning(make_napari_viewer):
    widget = DetectWidget(make_napari_viewer())
    widget.model.setCurrentText("restore-t1")
    card = widget.cards["restore-t1"]
    assert "timed on" in widget.card_line.text()
    text = widget.show_card().text.toPlainText()
    for expected in ("Calibration on healthy scans", "val splits of ixi, oasis", "Measured figures",
                     "non-commercial", "Known limits", card.metrics["evaluation"]["machine"]):
        assert expected in text
    assert flagged_note(card, 0.2, card.threshold).startswith("20.0% of the brain is flagged")
    assert flagged_note(card, 0.001, card.threshold) == "" and flagged_note(card, 0.2, 0.5 * card.threshold) == ""


def test_save_results_writes_cli_files_on_the_input_grid(make_napari_viewer, qtbot, tmp_path):
    img = phantom_scan()
    img = img.as_reoriented(ornt_transform(io_orientation(img.affine), axcodes2ornt("LIA")))
    path = tmp_path / "scan.mgz"
    nib.save(nib.MGHImage(img.get_fdata().astype(np.float32), img.affine), path)
    before = path.read_bytes()
    viewer = make_napari_viewer()
    (data, kwargs, _), = read_layers(str(path))
    viewer.add_image(data, **kwargs)
    widget = DetectWidget(viewer)
    run_detection(widget, qtbot)
    for layer in viewer.layers[1:]:
        np.testing.assert_allclose(layer.affine.affine_matrix, viewer.layers[0].affine.affine_matrix)
    widget.save(str(tmp_path))  # beside the input, which is never written
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30000)
    assert widget.status.text().startswith("Saved 4 files")
    assert path.read_bytes() == before
    mask = nib.load(tmp_path / "scan_mask.nii.gz")
    assert mask.shape == img.shape and np.allclose(mask.affine, img.affine)  # the input's own voxel order
    np.testing.assert_array_equal(np.asarray(mask.dataobj), widget.result.mask)
    with open(tmp_path / "scan_findings.csv") as f:
        assert len(list(csv.DictReader(f))) == len(widget.result.findings)


def test_detect_widget_error_is_a_notification(make_napari_viewer, qtbot, monkeypatch):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((16, 16, 16), np.float32), name="empty")
    shown = []
    monkeypatch.setattr("napari_brainuad.widgets.detect.notifications.show_error", shown.append)
    widget = DetectWidget(viewer)
    widget.run()
    assert shown and "constant" in shown[0] and widget.worker is None


def test_batch_widget_reports_bad_file_and_goes_on(make_napari_viewer, qtbot, tmp_path):
    src = tmp_path / "cohort"
    src.mkdir()
    nib.save(phantom_scan(step=3), src / "sub-01_T1w.nii.gz")
    (src / "sub-02_T1w.nii.gz").write_bytes(b"corrupt")
    widget = BatchWidget(make_napari_viewer())
    widget.input_dir.value = src
    widget.out_dir.value = tmp_path / "out"
    widget.pattern.setText("*_T1w.nii.gz")
    widget.model.setCurrentText("intensity-t1")
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120000)
    assert widget.table.rowCount() == 2
    assert [widget.table.item(r, 1).text() for r in range(2)] == ["ok", "error"]
    with open(tmp_path / "out" / "summary.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["ok", "error"]
    assert widget.findChild(QScrollArea) is not None
    widget.table.cellDoubleClicked.emit(0, 0)  # opens the scan and its outputs
    viewer = widget.viewer
    assert [layer.name for layer in viewer.layers] == ["sub-01_T1w"] + [
        f"sub-01_T1w {kind} [intensity-t1]" for kind in ("reconstruction", "anomaly map", "mask")]
    assert viewer.layers[-1].data.max() > 0 and viewer.layers[-1].data.shape == viewer.layers[0].data.shape


def cancel_during(widget, qtbot, stage: str) -> float:
    """Click Cancel once the status shows ``stage``; seconds until the worker has finished."""
    qtbot.waitUntil(lambda: stage in widget.status.text(), timeout=120000)
    start = time.perf_counter()
    widget.cancel_button.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=10000)
    return time.perf_counter() - start


@pytest.mark.parametrize("model, stage", [("intensity-t1", "affine registration"), ("ddpm-t1", "denoising")])
def test_cancel_stops_detection_within_two_seconds(make_napari_viewer, qtbot, tmp_path, model, stage):
    path = tmp_path / "scan.nii.gz"
    nib.save(phantom_scan(step=1), path)
    viewer = make_napari_viewer()
    (data, kwargs, _), = read_layers(str(path))
    viewer.add_image(data, **kwargs)
    widget = DetectWidget(viewer)
    widget.model.setCurrentText(model)
    widget.run()
    elapsed = cancel_during(widget, qtbot, stage)
    assert elapsed < 2.0, f"cancel took {elapsed:.2f} s"
    assert widget.status.text() == "Cancelled." and len(viewer.layers) == 1
    run_detection(widget, qtbot)  # the viewer and widget stay usable
    assert len(viewer.layers) == 4


def test_cancel_stops_batch_within_two_seconds_and_resumes(make_napari_viewer, qtbot, tmp_path):
    src = tmp_path / "cohort"
    src.mkdir()
    for i in range(3):
        nib.save(phantom_scan(step=1), src / f"sub-0{i}_T1w.nii.gz")
    widget = BatchWidget(make_napari_viewer())
    widget.input_dir.value = src
    widget.out_dir.value = tmp_path / "out"
    widget.model.setCurrentText("intensity-t1")
    widget.run()
    qtbot.waitUntil(lambda: "sub-00" in widget.status.text(), timeout=120000)  # first file done
    elapsed = cancel_during(widget, qtbot, "affine registration")
    assert elapsed < 2.0, f"cancel took {elapsed:.2f} s"
    assert "Cancelled" in widget.status.text()
    assert len(list((tmp_path / "out").glob("*_findings.csv"))) < 3
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120000)
    assert [widget.table.item(r, 1).text() for r in range(3)][0] == "skipped"
    assert len(list((tmp_path / "out").glob("*_findings.csv"))) == 3


@pytest.mark.parametrize("kind", [DetectWidget, BatchWidget])
def test_docked_widget_fits_its_width_with_long_names(make_napari_viewer, qtbot, kind):
    """A long layer name or choice is cut inside its box, not allowed to widen the widget past its dock."""
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((4, 4, 4)), name="a scan whose file name is far longer than any dock is wide " * 2)
    widget = kind(viewer)
    viewer.window.add_dock_widget(widget, area="right")
    body = widget.scroll.widget()
    assert body.minimumSizeHint().width() < 400
    dock = widget.parent()
    dock.resize(1, 900)  # as narrow as the dock allows
    qtbot.waitUntil(lambda: widget.scroll.viewport().width() >= body.minimumSizeHint().width(), timeout=5000)
    assert not widget.scroll.horizontalScrollBar().isVisible()
