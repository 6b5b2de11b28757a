"""``vae``: variational autoencoder with a dense latent; MSE + KL (``training.kl_weight``), and the
reconstruction decodes the posterior mean."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...progress import Step
from ..slicewise import SliceModel


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL of N(mu, exp(logvar)) from N(0, 1), summed over the latent, averaged over the batch."""
    return -0.5 * torch.mean(torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1))


def var_autoencoder(arch: dict, channels_in: int):
    from monai.networks.nets import VarAutoEncoder

    return VarAutoEncoder(spatial_dims=2, in_shape=(channels_in, *arch["slice_shape"]), out_channels=1,
                          latent_size=arch["latent_size"], channels=arch["channels"], strides=arch["strides"],
                          num_res_units=arch.get("num_res_units", 1), norm="batch", use_sigmoid=False,
                          use_mean_at_inference=True)


class VAEModel(SliceModel):
    family = "vae"

    @staticmethod
    def make_network(arch, channels_in):
        return var_autoencoder(arch, channels_in)

    @staticmethod
    def objective(recipe, device):
        beta = recipe["training"].get("kl_weight", 1e-4)

        def loss(model, batch, generator):
            recon, mu, logvar, _ = model(batch.input)
            return F.mse_loss(recon, batch.target) + beta * kl_divergence(mu, logvar)
        return loss

    def reconstruct_batch(self, x, t_int, generator):
        with torch.inference_mode():
            y = self.network(x)[0]  # decoded posterior mean (use_mean_at_inference)
        yield Step("vae", 1.0)
        return y
