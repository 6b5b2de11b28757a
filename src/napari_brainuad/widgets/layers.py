"""Between napari layers and :class:`~napari_brainuad.io.Volume` (file voxel order, RAS affine), and how
detection results look as layers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.utils.colormaps import Colormap, DirectLabelColormap

from .._reader import from_layer_data, layer_affine, nifti_affine, to_layer_data
from ..io import Volume, check_volume

ANOMALY_COLORMAP = Colormap([[0.9, 0.1, 0.0, 0.0], [1.0, 0.3, 0.0, 0.55], [1.0, 0.95, 0.2, 0.95]],
                            controls=[0.0, 0.35, 1.0], name="anomaly (translucent)")
"""Transparent at the lower contrast limit, through red to opaque yellow: the scan stays readable."""
MASK_COLOR = (0.0, 0.9, 1.0, 1.0)
SELECTED_COLOR = (1.0, 0.0, 1.0, 1.0)


def layer_volume(layer) -> Volume:
    """The volume behind an image layer, in its file's voxel order when this plugin's reader opened it."""
    data = np.asarray(layer.data, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"layer '{layer.name}': detection needs a 3D image, this one is {data.ndim}D.")
    affine = layer.metadata.get("affine_ras")
    if affine is None:  # a layer from another reader: take its full data-to-world transform
        origin = np.asarray(layer.data_to_world(np.zeros(3)))
        matrix = np.eye(4)
        matrix[:3, :3] = np.stack([np.asarray(layer.data_to_world(e)) - origin for e in np.eye(3)], axis=1)
        matrix[:3, 3] = origin
        affine, array = nifti_affine(matrix), data.transpose(2, 1, 0)
    else:
        array = from_layer_data(data, affine)
    source = layer.metadata.get("source")
    volume = Volume(np.ascontiguousarray(array), np.asarray(affine, float), layer.metadata.get("header"),
                    Path(source) if source else None)
    check_volume(volume.data, volume.affine, f"layer '{layer.name}'")
    return volume


def show(viewer, name: str, array: np.ndarray, volume: Volume, kind: str = "image", **kwargs):
    """Add a layer on ``volume``'s grid, or update the layer of that name in place."""
    data = to_layer_data(array, volume.affine)
    if name in viewer.layers:
        layer = viewer.layers[name]
        layer.data = data
        for key, value in kwargs.items():
            setattr(layer, key, value)
        return layer
    meta = {"affine_ras": volume.affine}
    return getattr(viewer, f"add_{kind}")(data, name=name, affine=layer_affine(volume.affine, volume.shape),
                                          metadata=meta, **kwargs)


def result_names(scan: str, model: str) -> dict[str, str]:
    """Layer names of one model's results on one scan: another model's results get their own layers."""
    return {kind: f"{scan} {kind} [{model}]" for kind in ("reconstruction", "anomaly map", "mask")}


def show_result(viewer, scan: str, model: str, volume: Volume, reconstruction, anomaly_map, mask,
                threshold: float, units: str, brain=None) -> dict:
    """Show a detection's three arrays (on ``volume``'s grid) as layers named by :func:`result_names`."""
    names = result_names(scan, model)
    scores = anomaly_map[brain] if brain is not None and brain.any() else anomaly_map[anomaly_map > 0]
    top = max(float(np.percentile(scores, 99.9)) if scores.size else 0.0, 1.5 * threshold, 1e-6)
    layers = {"reconstruction": show(viewer, names["reconstruction"], reconstruction, volume, colormap="gray",
                                     visible=False)}
    layers["anomaly map"] = show(viewer, names["anomaly map"], anomaly_map, volume, colormap=ANOMALY_COLORMAP,
                                 blending="translucent", contrast_limits=[0.5 * threshold, top])
    layers["anomaly map"].metadata["units"] = units
    layers["anomaly map"].colorbar.visible = True
    layers["mask"] = show(viewer, names["mask"], mask.astype(np.int32), volume, kind="labels", opacity=0.9,
                          colormap=mask_colormap())
    layers["mask"].contour = 1
    return layers


def mask_colormap(selected: int | None = None) -> DirectLabelColormap:
    """Every finding in one colour, the ``selected`` label in another."""
    colors = {None: MASK_COLOR, 0: (0.0, 0.0, 0.0, 0.0)}
    if selected:
        colors[selected] = SELECTED_COLOR
    return DirectLabelColormap(color_dict=colors)
