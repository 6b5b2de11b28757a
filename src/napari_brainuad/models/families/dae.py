"""``dae``: denoising autoencoder (MONAI UNet) trained to remove coarse noise from healthy slices
(Kascenas et al. 2022); at inference it sees the scan as it is."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..slicewise import SliceModel


def coarse_noise(shape, size: int, std: float, generator, device) -> torch.Tensor:
    """Gaussian noise drawn on a ``size`` x ``size`` grid and upsampled bilinearly (Kascenas et al. 2022)."""
    noise = torch.randn((shape[0], 1, size, size), generator=generator) * std
    return F.interpolate(noise, size=shape[-2:], mode="bilinear", align_corners=False).to(device)


def unet(arch: dict, channels_in: int):
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=channels_in, out_channels=1, channels=arch["channels"],
                strides=arch["strides"], num_res_units=arch.get("num_res_units", 2), norm="batch")


class DenoisingModel(SliceModel):
    family = "dae"

    @staticmethod
    def make_network(arch, channels_in):
        return unet(arch, channels_in)

    @staticmethod
    def objective(recipe, device):
        cfg = recipe["training"]["noise"]

        def loss(model, batch, generator):
            x = batch.input
            noisy = x + batch.mask * coarse_noise(x.shape, cfg["size"], cfg["std"], generator, x.device)
            return F.mse_loss(model(noisy), batch.target)
        return loss
