"""napari reader, writer and sample data (needs a display: run under Xvfb via pytest-xvfb)."""
import nibabel as nib
import numpy as np
import pytest

from napari_brainuad._reader import napari_get_reader
from napari_brainuad._sample_data import mslub_patient26
from napari_brainuad._writer import write_image, write_labels


@pytest.fixture
def oblique_scan(tmp_path):
    """A volume with rotation, flip, anisotropic voxels and an offset in its affine."""
    theta = np.deg2rad(20)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-1.2, 0.9, 3.0])
    affine[:3, 3] = [40.0, -25.0, 12.0]
    data = np.random.default_rng(0).random((20, 16, 10)).astype(np.float32)
    path = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    return path, data, affine


def world_ras(layer, ijk):
    """RAS position (mm) napari gives to voxel ``ijk`` of the file."""
    napari_world = layer.data_to_world(np.asarray(ijk)[::-1])
    return np.array([-napari_world[2], -napari_world[1], napari_world[0]])


def test_reader_places_layer_by_full_affine(make_napari_viewer, oblique_scan):
    path, data, affine = oblique_scan
    viewer = make_napari_viewer()
    reader = napari_get_reader(str(path))
    assert reader is not None and napari_get_reader("notes.txt") is None
    (array, kwargs, kind), = reader(str(path))
    layer = viewer.add_image(array, **kwargs)
    assert kind == "image" and layer.data.shape == data.shape[::-1]
    for ijk in [(0, 0, 0), (19, 0, 0), (3, 11, 7)]:
        np.testing.assert_allclose(world_ras(layer, ijk), (affine @ [*ijk, 1])[:3], atol=1e-4)
    assert layer.metadata["header"] is not None


def test_writer_round_trip_keeps_affine(make_napari_viewer, oblique_scan, tmp_path):
    path, data, affine = oblique_scan
    (array, kwargs, _), = napari_get_reader(str(path))(str(path))
    viewer = make_napari_viewer()
    layer = viewer.add_image(array, **kwargs)
    out = write_image(str(tmp_path / "copy.nii.gz"), layer.data, {"affine": layer.affine.affine_matrix})
    back = nib.load(out[0])
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    np.testing.assert_allclose(back.get_fdata(), data, atol=1e-6)
    labels = write_labels(str(tmp_path / "labels"), (layer.data > 0.5).astype(np.int32), {"metadata": layer.metadata})
    assert labels[0].endswith(".nii.gz") and nib.load(labels[0]).shape == data.shape


def test_sample_data_overlays_scan_and_lesions(make_napari_viewer):
    viewer = make_napari_viewer()
    for data, kwargs, kind in mslub_patient26():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    scan, lesions = viewer.layers
    assert scan.data.shape == lesions.data.shape
    np.testing.assert_allclose(scan.affine.affine_matrix, lesions.affine.affine_matrix)
    assert 7.0 < lesions.data.sum() / 1000.0 < 9.5  # 8.2 ml consensus mask at 1 mm
