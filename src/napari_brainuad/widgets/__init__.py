"""napari widgets: thin front ends over :mod:`napari_brainuad.pipeline`."""
from .batch import BatchWidget
from .detect import DetectWidget

__all__ = ["BatchWidget", "DetectWidget"]
