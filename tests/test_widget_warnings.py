"""Issue 16 item 7 in napari: a scan that does not suit the model is warned about in the Detect widget."""
import nibabel as nib
import numpy as np

from conftest import phantom_scan
from napari_brainuad._reader import read_layers
from napari_brainuad.widgets import DetectWidget


def test_detect_widget_shows_the_scan_warnings(make_napari_viewer, qtbot, tmp_path):
    brain = phantom_scan()
    data = brain.get_fdata().astype(np.float32)
    path = tmp_path / "t2like.nii.gz"
    nib.save(nib.Nifti1Image(np.where(data > 0, data.max() - data + 50, 0).astype(np.float32), brain.affine), path)
    viewer = make_napari_viewer()
    (layer_data, kwargs, _), = read_layers(str(path))
    viewer.add_image(layer_data, **kwargs)
    widget = DetectWidget(viewer)
    widget.model.setCurrentText("intensity-t1")
    widget.register.setChecked(False)
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert "Warning: " in widget.status.text() and "looks like T2, not the T1" in widget.status.text()
