"""napari reader for NIfTI and MGZ: layers placed in world coordinates from the file's affine.

napari's world axes here are (S, -A, -R) in millimetres, so the default 2D view is axial in the
radiological convention (anterior up, the patient's right on the screen's left) and any two
files of the same subject overlay wherever their grids lie.
"""
from __future__ import annotations

import numpy as np

from .io import InputError, Volume, is_image_path, read_volume

RAS_TO_NAPARI = np.array([[0, 0, 1, 0], [0, -1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
"""World RAS (x, y, z) -> napari world (S, -A, -R)."""
_FLIP = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
"""Array axes (i, j, k) <-> napari data axes (k, j, i): volumes are shown with the last file axis first."""


def napari_affine(affine: np.ndarray) -> np.ndarray:
    """napari layer affine for a NIfTI voxel-to-RAS ``affine`` (data passed as ``data.transpose(2, 1, 0)``)."""
    return RAS_TO_NAPARI @ np.asarray(affine, float) @ _FLIP


def nifti_affine(layer_affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`napari_affine`."""
    return np.linalg.inv(RAS_TO_NAPARI) @ np.asarray(layer_affine, float) @ _FLIP


def layer_kwargs(volume: Volume, name: str | None = None) -> dict:
    """Keyword arguments that place a volume-grid array in napari's world."""
    meta = {"affine_ras": volume.affine, "source": str(volume.path) if volume.path else None}
    if volume.header is not None:
        meta["header"] = volume.header
    return {"name": name or volume.name, "affine": napari_affine(volume.affine), "metadata": meta}


def to_layer_data(array: np.ndarray) -> np.ndarray:
    """Array in file voxel order (i, j, k) -> napari data order (k, j, i)."""
    return np.asarray(array).transpose(2, 1, 0)


def napari_get_reader(path):
    """Return :func:`read_layers` for a single NIfTI/MGZ path, else None."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    return read_layers if is_image_path(path) else None


def read_layers(path):
    """Read one file into an image layer (a clear error on a bad file)."""
    path = path[0] if isinstance(path, list) else path
    try:
        volume = read_volume(path)
    except InputError as exc:
        raise ValueError(str(exc)) from None
    kwargs = layer_kwargs(volume)
    lo, hi = np.percentile(volume.data[::2, ::2, ::2], [0.5, 99.5])
    kwargs["contrast_limits"] = [float(lo), float(hi if hi > lo else volume.data.max())]
    return [(to_layer_data(volume.data), kwargs, "image")]
