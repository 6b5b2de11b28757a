"""``rae``: reversed autoencoder (Bercea et al., "Generalizing unsupervised anomaly detection: towards
unbiased pathology screening", MIDL 2023). A variational autoencoder (MONAI VarAutoEncoder) trained
with MSE + KL (``training.kl_weight``) + an embedding loss (``training.embedding_weight``): the
encoder's features at every level for the reconstruction must match those for the input (MSE and
cosine distance), so the reconstruction is pushed towards what the encoder sees as the input's
healthy anatomy. The paper's soft-introspective adversarial terms are not part of this objective.
The reconstruction decodes the posterior mean."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...progress import Step
from ..slicewise import SliceModel
from .vae import kl_divergence, var_autoencoder


class ReversedAutoEncoder(nn.Module):
    """A VarAutoEncoder that, in training, also returns the encoder features of input and reconstruction."""

    def __init__(self, arch: dict, channels_in: int):
        super().__init__()
        self.vae = var_autoencoder(arch, channels_in)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for layer in self.vae.encode:
            x = layer(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor):
        if not self.training:
            return self.vae(x)[0]  # decoded posterior mean
        features = self.features(x)
        h = self.vae.intermediate(features[-1]).reshape(len(x), -1)
        mu, logvar = self.vae.mu(h), self.vae.logvar(h)
        recon = self.vae.decode_forward(self.vae.reparameterize(mu, logvar), False)
        return recon, mu, logvar, features, self.features(recon.detach())


def embedding_loss(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """Sum over levels of half the MSE plus the mean cosine distance of the flattened features."""
    return sum(0.5 * F.mse_loss(x, y) + (1 - F.cosine_similarity(x.flatten(1), y.flatten(1))).mean()
               for x, y in zip(a, b))


class ReversedAutoEncoderModel(SliceModel):
    family = "rae"

    @staticmethod
    def make_network(arch, channels_in):
        return ReversedAutoEncoder(arch, channels_in)

    @staticmethod
    def objective(recipe, device):
        cfg = recipe["training"]
        beta, gamma = cfg.get("kl_weight", 1e-4), cfg.get("embedding_weight", 0.01)

        def loss(model, batch, generator):
            recon, mu, logvar, features, rec_features = model(batch.input)
            return (F.mse_loss(recon, batch.target) + beta * kl_divergence(mu, logvar)
                    + gamma * embedding_loss(features, rec_features))
        return loss

    def reconstruct_batch(self, x, t_int, generator):
        with torch.inference_mode():
            y = self.network(x)
        yield Step("rae", 1.0)
        return y
