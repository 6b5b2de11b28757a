"""Scanner-robust augmentation of 2D training slabs (MONAI transforms, seeded per sample).

Two stages, as a scan is made:

* :func:`appearance`: how a scanner renders tissue (bias field, gamma / contrast, histogram
  shift). Applied to a stack of channels at once (e.g. a healthy slab and its pseudo-pathological
  copy), so every channel gets the *same* intensity mapping.
* :func:`acquisition`: what the acquisition adds (Gaussian noise, blur, low resolution). Applied
  to the network's input only; the target stays clean.

Slabs are (C, H, W) tensors in [0, 1]; the brain ``mask`` (1, H, W) keeps the background at 0.
"""
from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def _transforms():
    from monai.transforms import (Compose, RandAdjustContrast, RandBiasField, RandGaussianNoise, RandGaussianSmooth,
                                  RandHistogramShift, RandSimulateLowResolution)

    appearance = Compose([
        RandBiasField(prob=0.5, coeff_range=(0.0, 0.3), degree=3),
        RandAdjustContrast(prob=0.5, gamma=(0.6, 1.6)),
        RandHistogramShift(prob=0.3, num_control_points=(5, 10)),
    ])
    acquisition = Compose([
        RandGaussianSmooth(prob=0.2, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0)),
        RandSimulateLowResolution(prob=0.2, zoom_range=(0.5, 0.9), upsample_mode="bilinear"),
        RandGaussianNoise(prob=0.3, mean=0.0, std=0.04),
    ])
    return appearance, acquisition


def _apply(transform, x: torch.Tensor, mask: torch.Tensor, seed: int) -> torch.Tensor:
    transform.set_random_state(seed=seed)
    out = torch.as_tensor(transform(x.clone())).float()
    return (out.clamp(0.0, 1.0) * mask).contiguous()


def appearance(x: torch.Tensor, mask: torch.Tensor, seed: int) -> torch.Tensor:
    """Random bias field, gamma and histogram shift, one mapping for all channels of ``x`` (C, H, W)."""
    return _apply(_transforms()[0], x, mask, seed)


def acquisition(x: torch.Tensor, mask: torch.Tensor, seed: int) -> torch.Tensor:
    """Random blur, low-resolution simulation and noise on ``x`` (C, H, W), inside the brain."""
    return _apply(_transforms()[1], x, mask, seed)
