"""napari sample data: a chronic stroke T1, and MSLUB patient26 T1 or FLAIR with its expert lesion mask."""
from __future__ import annotations

from ._reader import layer_kwargs, read_layers, to_layer_data
from .io import read_volume
from .sample import sample_path


def stroke_t1():
    """T1 image layer of a chronic left-hemisphere stroke (brain-extracted, no expert mask)."""
    layers = read_layers(str(sample_path("stroke T1")))
    layers[0][1]["name"] = "Chronic stroke T1"
    return layers


def mslub_patient26():
    """T1 image layer and the expert lesion mask as a labels layer, on the same world grid."""
    return _mslub("MSLUB T1", "MSLUB patient26 T1")


def mslub_patient26_flair():
    """FLAIR image layer (where MS lesions are bright) and the expert lesion mask, on the same world grid."""
    return _mslub("MSLUB FLAIR", "MSLUB patient26 FLAIR")


def _mslub(kind: str, name: str):
    layers = read_layers(str(sample_path(kind)))
    layers[0][1]["name"] = name
    lesions = read_volume(sample_path("MSLUB lesions"))
    kwargs = layer_kwargs(lesions, name="MSLUB patient26 lesions (expert consensus)")
    kwargs["opacity"] = 0.5
    kwargs["colormap"] = {None: "lime", 0: "transparent"}  # apart from the detection's colours (red-yellow, cyan)
    return layers + [(to_layer_data((lesions.data > 0).astype("uint8"), lesions.affine), kwargs, "labels")]
