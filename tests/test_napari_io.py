"""napari reader, writer and sample data (needs a display: run under Xvfb via pytest-xvfb)."""
import nibabel as nib
import numpy as np
import pytest

from conftest import phantom_scan
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform
from napari_brainuad._reader import napari_get_reader
from napari_brainuad._sample_data import mslub_patient26, mslub_patient26_flair
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


def world_ras(layer, index):
    """RAS position (mm) napari gives to ``index`` of the layer's data."""
    napari_world = layer.data_to_world(np.asarray(index))
    return np.array([-napari_world[2], -napari_world[1], napari_world[0]])


def without_permutation(layer_affine) -> bool:
    """Each data axis maps mostly onto its own world axis: napari can slice it in 2D."""
    return list(np.abs(np.asarray(layer_affine)[:3, :3]).argmax(axis=0)) == [0, 1, 2]


def test_reader_places_layer_by_full_affine(make_napari_viewer, oblique_scan):
    path, data, affine = oblique_scan
    viewer = make_napari_viewer()
    reader = napari_get_reader(str(path))
    assert reader is not None and napari_get_reader("notes.txt") is None
    (array, kwargs, kind), = reader(str(path))
    layer = viewer.add_image(array, **kwargs)
    assert kind == "image" and sorted(layer.data.shape) == sorted(data.shape)
    assert without_permutation(layer.affine.affine_matrix)
    for ijk in [(0, 0, 0), (19, 0, 0), (3, 11, 7)]:  # the voxel holding the file's value at ijk lies where ijk does
        index = np.argwhere(layer.data == data[ijk])[0]
        np.testing.assert_allclose(world_ras(layer, index), (affine @ [*ijk, 1])[:3], atol=1e-4)
    assert layer.metadata["header"] is not None


def test_writer_round_trip_keeps_affine(make_napari_viewer, oblique_scan, tmp_path):
    path, data, affine = oblique_scan
    (array, kwargs, _), = napari_get_reader(str(path))(str(path))
    viewer = make_napari_viewer()
    layer = viewer.add_image(array, **kwargs)
    out = write_image(str(tmp_path / "copy.nii.gz"), layer.data, {"affine": layer.affine.affine_matrix,
                                                                  "metadata": layer.metadata})
    back = nib.load(out[0])  # the file's own voxel order and affine
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    np.testing.assert_allclose(back.get_fdata(), data, atol=1e-6)
    out = write_image(str(tmp_path / "grid.nii.gz"), layer.data, {"affine": layer.affine.affine_matrix})
    back, source = nib.as_closest_canonical(nib.load(out[0])), nib.as_closest_canonical(nib.load(path))
    np.testing.assert_allclose(back.affine, source.affine, atol=1e-5)  # the layer's grid: same world
    np.testing.assert_allclose(back.get_fdata(), source.get_fdata(), atol=1e-6)
    with pytest.raises(ValueError, match="overwrite the input"):
        write_image(str(path), layer.data, {"metadata": layer.metadata})
    labels = write_labels(str(tmp_path / "labels"), (layer.data > 0.5).astype(np.int32), {"metadata": layer.metadata})
    assert labels[0].endswith(".nii.gz") and nib.load(labels[0]).shape == data.shape


@pytest.mark.parametrize("sample", [mslub_patient26, mslub_patient26_flair])
def test_sample_data_overlays_scan_and_lesions(make_napari_viewer, sample):
    viewer = make_napari_viewer()
    for data, kwargs, kind in sample():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    scan, lesions = viewer.layers
    assert scan.data.shape == lesions.data.shape
    np.testing.assert_allclose(scan.affine.affine_matrix, lesions.affine.affine_matrix)
    assert 7.0 < lesions.data.sum() / 1000.0 < 9.5  # 8.2 ml consensus mask at 1 mm


def reoriented(codes: str) -> nib.Nifti1Image:
    """The phantom brain stored with voxel axes ``codes`` (e.g. 'LIA'); the same world image."""
    img = phantom_scan(step=3, lesion=False)
    return img.as_reoriented(ornt_transform(io_orientation(img.affine), axcodes2ornt(codes)))


@pytest.mark.parametrize("codes, suffix", [("LIA", ".mgz"), ("LPS", ".nii.gz"), ("LAS", ".nii"),
                                           ("RAS", ".nii.gz"), ("PIL", ".nii.gz")])  # PIL: a sagittal acquisition
def test_every_orientation_shows_the_same_axial_slice(make_napari_viewer, tmp_path, codes, suffix):
    viewer = make_napari_viewer(show=True)
    layers = {}
    for name, stored in [("reference", "RAS"), ("scan", codes)]:
        img = reoriented(stored)
        path = tmp_path / f"{name}{suffix}"
        nib.save(nib.MGHImage(img.get_fdata().astype(np.float32), img.affine) if suffix == ".mgz" else img, path)
        assert nib.aff2axcodes(nib.load(path).affine) == tuple(stored)
        (data, kwargs, kind), = napari_get_reader(str(path))(str(path))
        layers[name] = viewer.add_image(data, **kwargs)
        assert without_permutation(layers[name].affine.affine_matrix)
    viewer.reset_view()
    viewer.dims.set_point(0, 10.0)  # an axial slice 10 mm above the origin
    pictures = {}
    for name in ("reference", "scan"):
        for other, layer in layers.items():
            layer.visible = other == name
        pictures[name] = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float).mean(axis=-1)
    scan, reference = pictures["scan"], pictures["reference"]
    assert (scan > 40).mean() > 0.1, f"{codes}: the canvas is black"
    assert np.corrcoef(scan.ravel(), reference.ravel())[0, 1] > 0.98


def test_few_valued_integer_volumes_open_as_labels(make_napari_viewer, tmp_path):
    rng = np.random.default_rng(0)
    lesions = (rng.random((20, 20, 20)) > 0.9).astype(np.int16) * rng.integers(1, 4, (20, 20, 20)).astype(np.int16)
    scan = (rng.random((20, 20, 20)) * 2000).astype(np.int16)  # an integer scan with many values stays an image
    viewer, kinds = make_napari_viewer(), {}
    for name, data in [("lesions", lesions), ("scan", scan)]:
        path = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, np.diag([-1.0, 1.0, 1.0, 1.0])), path)
        (array, kwargs, kinds[name]), = napari_get_reader(str(path))(str(path))
        getattr(viewer, f"add_{kinds[name]}")(array, **kwargs)
    assert kinds == {"lesions": "labels", "scan": "image"}
    labels = viewer.layers["lesions"]
    assert labels.data.dtype == np.uint8 and set(np.unique(labels.data)) == set(np.unique(lesions))
    assert labels.data.sum() == lesions.sum()
