"""napari writer: image and labels layers to NIfTI on the grid their affine describes."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ._reader import from_layer_data, nifti_affine
from .io import Volume, write_volume


def write_layer(path: str, data, meta: dict, dtype) -> list[str]:
    """Write a layer; one this plugin read goes back in its file's voxel order and affine, never over that file."""
    metadata = meta.get("metadata", {})
    affine = metadata.get("affine_ras")
    if affine is None:
        affine = nifti_affine(np.asarray(meta["affine"]) if "affine" in meta else np.eye(4))
        array = np.asarray(data).transpose(2, 1, 0)
    else:
        array = from_layer_data(data, affine)
    if not str(path).endswith((".nii", ".nii.gz")):
        path = f"{path}.nii.gz"
    source = metadata.get("source")
    like = Volume(array, np.asarray(affine, float), path=Path(source) if source else None)
    write_volume(Path(path), array, like, dtype=dtype)
    return [str(path)]


def write_image(path: str, data, meta: dict) -> list[str]:
    return write_layer(path, data, meta, np.float32)


def write_labels(path: str, data, meta: dict) -> list[str]:
    return write_layer(path, data, meta, np.int32)
