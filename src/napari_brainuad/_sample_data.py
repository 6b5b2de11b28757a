"""napari sample data: the bundled MSLUB patient26 T1 scan with its consensus lesion mask."""
from __future__ import annotations

from ._reader import layer_kwargs, read_layers, to_layer_data
from .io import read_volume
from .sample import sample_path


def mslub_patient26():
    """T1 image layer and the expert lesion mask as a labels layer, on the same world grid."""
    layers = read_layers(str(sample_path("T1")))
    layers[0][1]["name"] = "MSLUB patient26 T1"
    lesions = read_volume(sample_path("lesions"))
    kwargs = layer_kwargs(lesions, name="MSLUB patient26 lesions (expert consensus)")
    kwargs["opacity"] = 0.5
    return layers + [(to_layer_data(lesions.data > 0).astype("uint8"), kwargs, "labels")]
