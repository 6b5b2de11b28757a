"""napari reader for NIfTI and MGZ: layers placed in world coordinates from the file's affine.

napari's world axes here are (S, -A, -R) in millimetres, so the default 2D view is axial in the
radiological convention (anterior up, the patient's right on the screen's left) and any two
files of the same subject overlay wherever their grids lie.

napari slices in 2D only along axes its affine does not mix, so a layer holds the file's array
reordered to the nearest RAS axis order (nibabel's ``io_orientation``: a permutation and flips, no
resampling) and an affine that is diagonal up to flips and the scan's small obliquity; world
positions stay exact. ``metadata["affine_ras"]`` keeps the file's own affine, and
:func:`from_layer_data` gives the array back in the file's voxel order.
"""
from __future__ import annotations

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from .io import InputError, Volume, is_image_path, read_volume

RAS_TO_NAPARI = np.array([[0, 0, 1, 0], [0, -1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
"""World RAS (x, y, z) -> napari world (S, -A, -R)."""
_FLIP = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
"""Array axes (i, j, k) <-> napari data axes (k, j, i): volumes are shown with the last file axis first."""
_RAS = axcodes2ornt("RAS")
MAX_LABEL_VALUES = 64
"""Integer volumes with at most this many distinct values (0 included) open as Labels."""


def napari_affine(affine: np.ndarray) -> np.ndarray:
    """napari layer affine for a voxel-to-RAS ``affine`` whose array is passed as ``data.transpose(2, 1, 0)``."""
    return RAS_TO_NAPARI @ np.asarray(affine, float) @ _FLIP


def nifti_affine(layer_affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`napari_affine`."""
    return np.linalg.inv(RAS_TO_NAPARI) @ np.asarray(layer_affine, float) @ _FLIP


def layer_affine(affine: np.ndarray, shape) -> np.ndarray:
    """napari affine of the layer that :func:`to_layer_data` makes from an array of ``shape`` on ``affine``."""
    ornt = io_orientation(affine)
    return napari_affine(np.asarray(affine, float) @ inv_ornt_aff(ornt, shape))


def to_layer_data(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Array in file voxel order on ``affine`` -> napari data (nearest RAS order, then axes (k, j, i))."""
    return apply_orientation(np.asarray(array), io_orientation(affine)).transpose(2, 1, 0)


def from_layer_data(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_layer_data`: napari data -> array in the voxel order of the file ``affine`` describes."""
    return apply_orientation(np.asarray(data).transpose(2, 1, 0), ornt_transform(_RAS, io_orientation(affine)))


def layer_kwargs(volume: Volume, name: str | None = None) -> dict:
    """Keyword arguments that place ``to_layer_data(volume.data, volume.affine)`` in napari's world."""
    meta = {"affine_ras": volume.affine, "source": str(volume.path) if volume.path else None}
    if volume.header is not None:
        meta["header"] = volume.header
    return {"name": name or volume.name, "affine": layer_affine(volume.affine, volume.shape), "metadata": meta}


def napari_get_reader(path):
    """Return :func:`read_layers` for a single NIfTI/MGZ path, else None."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    return read_layers if is_image_path(path) else None


def read_layers(path):
    """Read one file into an image layer, or a labels layer for a few-valued integer volume (a lesion mask)."""
    path = path[0] if isinstance(path, list) else path
    try:
        volume = read_volume(path)
    except InputError as exc:
        raise ValueError(str(exc)) from None
    kwargs = layer_kwargs(volume)
    labels = label_values(volume.data)
    if labels is not None:
        kwargs["opacity"] = 0.6
        dtype = np.uint8 if labels.max() < 256 else np.int32
        return [(to_layer_data(volume.data.astype(dtype), volume.affine), kwargs, "labels")]
    lo, hi = np.percentile(volume.data[::2, ::2, ::2], [0.5, 99.5])
    kwargs["contrast_limits"] = [float(lo), float(hi if hi > lo else volume.data.max())]
    return [(to_layer_data(volume.data, volume.affine), kwargs, "image")]


def label_values(data: np.ndarray) -> np.ndarray | None:
    """The distinct values of a volume of at most :data:`MAX_LABEL_VALUES` non-negative integers, else None."""
    for sample in (data[::4, ::4, ::4], data):  # a cheap look first: most scans stop here
        if sample.min() < 0 or not np.array_equal(sample, np.round(sample)):
            return None
        values = np.unique(sample)
        if len(values) > MAX_LABEL_VALUES:
            return None
    return values
