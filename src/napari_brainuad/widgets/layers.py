"""Between napari layers and :class:`~napari_brainuad.io.Volume` (file voxel order, RAS affine)."""
from __future__ import annotations

import numpy as np

from .._reader import napari_affine, nifti_affine, to_layer_data
from ..io import Volume, check_volume


def layer_volume(layer) -> Volume:
    """The volume behind an image layer (its RAS affine from the reader's metadata, else from the layer)."""
    data = np.asarray(layer.data, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"layer '{layer.name}': detection needs a 3D image, this one is {data.ndim}D.")
    affine = layer.metadata.get("affine_ras")
    if affine is None:  # a layer from another reader: take its full data-to-world transform
        origin = np.asarray(layer.data_to_world(np.zeros(3)))
        matrix = np.eye(4)
        matrix[:3, :3] = np.stack([np.asarray(layer.data_to_world(e)) - origin for e in np.eye(3)], axis=1)
        matrix[:3, 3] = origin
        affine = nifti_affine(matrix)
    volume = Volume(np.ascontiguousarray(data.transpose(2, 1, 0)), np.asarray(affine, float),
                    layer.metadata.get("header"))
    check_volume(volume.data, volume.affine, f"layer '{layer.name}'")
    return volume


def show(viewer, name: str, array: np.ndarray, volume: Volume, kind: str = "image", **kwargs):
    """Add a layer on ``volume``'s grid, or update the layer of that name in place."""
    data = to_layer_data(array)
    if name in viewer.layers:
        layer = viewer.layers[name]
        layer.data = data
        for key, value in kwargs.items():
            setattr(layer, key, value)
        return layer
    meta = {"affine_ras": volume.affine}
    return getattr(viewer, f"add_{kind}")(data, name=name, affine=napari_affine(volume.affine), metadata=meta,
                                          **kwargs)
