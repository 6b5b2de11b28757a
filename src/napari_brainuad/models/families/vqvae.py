"""``vqvae``: vector-quantised autoencoder (MONAI VQVAE) of single axial slices, trained with L1 plus
the quantiser's commitment loss; the reconstruction decodes the nearest codes. Each level halves
the slice (stride 2, kernel 4), so ``slice_shape`` must divide by 2 ** len(channels)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...progress import Step
from ..slicewise import SliceModel


def single_slice(channels_in: int) -> None:
    if channels_in != 1:
        raise ValueError("this family sees a single slice: context must be 0")


def latent_shape(arch: dict) -> tuple[int, int]:
    """The code grid of a slice: ``slice_shape`` over 2 ** levels (ValueError unless it divides)."""
    factor = 2 ** len(arch["channels"])
    if any(s % factor for s in arch["slice_shape"]):
        raise ValueError(f"slice_shape must divide by 2 ** len(channels) = {factor}")
    return arch["slice_shape"][0] // factor, arch["slice_shape"][1] // factor


def vqvae(arch: dict):
    from monai.networks.nets import VQVAE

    latent_shape(arch)
    levels = len(arch["channels"])
    return VQVAE(spatial_dims=2, in_channels=1, out_channels=1, channels=arch["channels"],
                 num_res_layers=arch.get("num_res_layers", 1), num_res_channels=arch.get("num_res_channels", arch["channels"]),
                 downsample_parameters=[(2, 4, 1, 1)] * levels, upsample_parameters=[(2, 4, 1, 1, 0)] * levels,
                 num_embeddings=arch["num_embeddings"], embedding_dim=arch["embedding_dim"])


class VQVAEModel(SliceModel):
    family = "vqvae"

    @staticmethod
    def make_network(arch, channels_in):
        single_slice(channels_in)
        return vqvae(arch)

    @staticmethod
    def objective(recipe, device):
        def loss(model, batch, generator):
            recon, quantisation = model(batch.input)
            return F.l1_loss(recon, batch.target) + quantisation
        return loss

    def reconstruct_batch(self, x, t_int, generator):
        with torch.inference_mode():
            y = self.network(x)[0]
        yield Step("vqvae", 1.0)
        return y
