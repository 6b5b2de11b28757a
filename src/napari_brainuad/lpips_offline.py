"""LPIPS (AlexNet, v0.1) offline: the whole network from one bundled safetensors file.

``lpips.LPIPS(net="alex")`` normally downloads torchvision's ImageNet AlexNet at run time; here the
trunk is built untrained (``pnet_rand=True``, nothing fetched) and every tensor - AlexNet conv
layers, LPIPS linear layers, input scaling - is loaded strictly from
``weights/lpips/alex.safetensors`` (made by ``training/convert_lpips.py``, which documents the
provenance: LPIPS BSD-2-Clause, Zhang et al. 2018; AlexNet weights from torchvision). Nothing is
unpickled or downloaded.
"""
from __future__ import annotations

import warnings
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch

BATCH = 32
"""Axial slices per forward pass in :func:`lpips_map`."""


def weights_path() -> Path:
    return Path(str(files("napari_brainuad") / "weights" / "lpips" / "alex.safetensors"))


@lru_cache(maxsize=None)
def _load(device: str, spatial: bool):
    import lpips
    from safetensors.torch import load_file

    state = {key: value.float() for key, value in load_file(str(weights_path())).items()}
    state.update({f"lins.{k}.model.1.weight": state[f"lin{k}.model.1.weight"] for k in range(5)})  # aliases
    with warnings.catch_warnings(), torch.device("meta"):  # no random init: every tensor comes from the file
        warnings.simplefilter("ignore")  # torchvision's "pretrained is deprecated"
        model = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, spatial=spatial, verbose=False)
    model = model.to_empty(device=device)
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


def load_lpips(device: str | torch.device = "cpu", spatial: bool = False):
    """The cached ``lpips.LPIPS(net="alex")`` (inputs in [-1, 1], NCHW), in eval mode, no gradients.

    ``spatial=True`` gives the per-pixel map at the input size instead of one distance per image.
    """
    return _load(str(torch.device(device)), bool(spatial))


def lpips_map(image: np.ndarray, reconstruction: np.ndarray, mask: np.ndarray,
              device: str | torch.device = "cpu") -> np.ndarray:
    """LPIPS spatial map of each axial slice (last axis) of two (X, Y, Z) volumes in [0, 1].

    Slices go through the network in batches, as 3 equal channels scaled to [-1, 1]; only slices
    that meet ``mask`` are computed. Returns float32 (X, Y, Z), zero outside ``mask``.
    """
    mask = np.asarray(mask, bool)
    out = np.zeros(mask.shape, np.float32)
    slices = np.flatnonzero(mask.any(axis=(0, 1)))
    if slices.size == 0:
        return out
    model = load_lpips(device, spatial=True)

    def batch(volume: np.ndarray, z: np.ndarray) -> torch.Tensor:  # (X, Y, Z) -> (B, 3, X, Y)
        x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(volume[..., z], -1, 0), np.float32))
        return (x.to(device)[:, None] * 2 - 1).expand(-1, 3, -1, -1)

    with torch.inference_mode():
        for start in range(0, slices.size, BATCH):
            z = slices[start:start + BATCH]
            score = model(batch(image, z), batch(reconstruction, z))[:, 0]  # (B, X, Y), input size
            out[..., z] = np.moveaxis(score.float().cpu().numpy(), 0, -1)
    return np.where(mask, out, 0.0).astype(np.float32)
