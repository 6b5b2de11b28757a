"""napari widgets: thin front ends over :mod:`napari_brainuad.pipeline`."""
import sys

# MONAI's networks import torchvision, which imports torch._dynamo, which imports triton when it is
# installed (CUDA builds of torch). Loading triton's bundled LLVM after napari has created an OpenGL
# context on Mesa (llvmpipe, radeonsi) crashes the process. Inference never needs triton (it only
# serves torch.compile), so inside napari it is marked unavailable unless something loaded it already.
sys.modules.setdefault("triton", None)

from .batch import BatchWidget  # noqa: E402
from .detect import DetectWidget  # noqa: E402

__all__ = ["BatchWidget", "DetectWidget"]
