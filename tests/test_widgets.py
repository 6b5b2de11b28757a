"""The napari widgets in a real viewer (under Xvfb via pytest-xvfb)."""
import csv
import time

import nibabel as nib
import numpy as np
import pytest

from conftest import LESION_CENTRE_MM, phantom_scan
from napari_brainuad._reader import read_layers
from napari_brainuad.sample import SAMPLE_MODEL
from napari_brainuad.widgets import BatchWidget, DetectWidget


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
    run_detection(widget, qtbot)
    scan = viewer.layers[0]
    names = [layer.name for layer in viewer.layers]
    assert names == [scan.name, f"{scan.name} reconstruction", f"{scan.name} anomaly map", f"{scan.name} mask"]
    for layer in viewer.layers[1:]:
        assert layer.data.shape == scan.data.shape
        np.testing.assert_allclose(layer.affine.affine_matrix, scan.affine.affine_matrix)
    assert widget.table.rowCount() == len(widget.result.findings) > 0
    run_detection(widget, qtbot, "dae-t1")  # a second run (learned model) updates the layers in place
    assert len(viewer.layers) == 4


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
    x, y, z = widget.result.findings[row].centroid_mm
    np.testing.assert_allclose(viewer.dims.point, [z, -y, -x], atol=2.0)


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
