"""``vqvae-tr``: a frozen VQ-VAE (family ``vqvae``) and an autoregressive MONAI DecoderOnlyTransformer
over its code indices in raster order (Pinaya et al. 2021, "Unsupervised brain anomaly detection and
segmentation with transformers"). The pseudo-healthy slice: the codes whose likelihood under the
transformer (``VQVAETransformerInferer.get_likelihood``) is below ``resample_p`` are redrawn from the
transformer given the healed codes before them, then decoded.

Two-stage training: the recipe's ``training.vqvae`` names a trained ``vqvae`` model folder whose
weights are loaded and frozen; only the transformer learns (cross-entropy of the next code).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...progress import Step
from ..card import ModelError, read_card
from ..slicewise import SliceModel
from .vqvae import VQVAEModel, latent_shape, single_slice, vqvae

MAX_CODES = 4096
"""Longest code sequence (codes per slice) a card may ask the transformer to model."""


class VQVAETransformer(nn.Module):
    """The two stages in one module, so one weights file holds both; the VQ-VAE stays in eval mode."""

    def __init__(self, arch: dict):
        super().__init__()
        from monai.networks.nets import DecoderOnlyTransformer
        from monai.utils.ordering import Ordering

        h, w = latent_shape(arch)
        if h * w > MAX_CODES:
            raise ValueError(f"{h * w} codes per slice exceed {MAX_CODES}")
        self.vqvae = vqvae(arch)
        self.bos = arch["num_embeddings"]  # the begin-of-sequence token
        self.transformer = DecoderOnlyTransformer(
            num_tokens=arch["num_embeddings"] + 1, max_seq_len=h * w, attn_layers_dim=arch["attn_layers_dim"],
            attn_layers_depth=arch["attn_layers_depth"], attn_layers_heads=arch["attn_layers_heads"])
        self.ordering = Ordering(ordering_type="raster_scan", spatial_dims=2, dimensions=(1, h, w))

    def train(self, mode: bool = True):
        super().train(mode)
        self.vqvae.eval()  # frozen first stage: no quantiser (EMA) updates
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-code logits (B, L, codes + 1) and the codes they predict (B, L)."""
        from monai.inferers import VQVAETransformerInferer

        logits, target, _ = VQVAETransformerInferer()(x, self.vqvae, self.transformer, self.ordering, return_latent=True)
        return logits, target


def resample_unlikely(codes: torch.Tensor, log_likelihood: torch.Tensor, network: VQVAETransformer,
                      threshold: float, generator: torch.Generator) -> torch.Tensor:
    """Codes (B, h, w) with those whose log-likelihood (B, h, w) lies below log(``threshold``) redrawn,
    in the transformer's order, from its distribution given the (already healed) codes before them."""
    order = torch.as_tensor(network.ordering.get_sequence_ordering(), device=codes.device)
    seq = codes.reshape(len(codes), -1)[:, order].clone()
    unlikely = log_likelihood.reshape(len(codes), -1)[:, order] < math.log(threshold)
    for i in torch.nonzero(unlikely.any(dim=0)).flatten().tolist():
        rows = torch.nonzero(unlikely[:, i]).flatten()
        prefix = F.pad(seq[rows, :i], (1, 0), value=network.bos).long()
        logits = network.transformer(prefix)[:, -1, :network.bos]  # the BOS token is never drawn
        seq[rows, i] = torch.multinomial(F.softmax(logits.float(), dim=-1), 1, generator=generator)[:, 0].to(seq.dtype)
    revert = torch.as_tensor(network.ordering.get_revert_sequence_ordering(), device=codes.device)
    return seq[:, revert].reshape(codes.shape)


class VQVAETransformerModel(SliceModel):
    family = "vqvae-tr"

    @staticmethod
    def make_network(arch, channels_in):
        single_slice(channels_in)
        if "resample_p" not in arch:
            raise KeyError("resample_p")
        return VQVAETransformer(arch)

    @classmethod
    def init_training(cls, network, recipe, data=None):
        """Load the trained ``vqvae`` model folder the recipe names (``training.vqvae``) and freeze it."""
        folder = Path(recipe["training"]["vqvae"])
        card = read_card(folder)
        if card.family != "vqvae":
            raise ModelError(f"{folder}: the first stage must be a 'vqvae' model, not '{card.family}'.")
        try:
            network.vqvae.load_state_dict(VQVAEModel.load_network(card).state_dict())
        except RuntimeError:
            raise ModelError(f"{folder}: its VQ-VAE does not match the recipe's architecture numbers.") from None
        network.vqvae.requires_grad_(False)

    @staticmethod
    def objective(recipe, device):
        def loss(model, batch, generator):
            logits, target = model(batch.input)
            return F.cross_entropy(logits.transpose(1, 2), target.long())
        return loss

    def reconstruct_batch(self, x, t_int, generator):
        from monai.inferers import VQVAETransformerInferer

        net = self.network
        with torch.inference_mode():
            codes = net.vqvae.index_quantize(x)
            log_likelihood = VQVAETransformerInferer().get_likelihood(x, net.vqvae, net.transformer, net.ordering)
        yield Step("code likelihoods", 0.2)
        with torch.inference_mode():
            healed = resample_unlikely(codes, log_likelihood, net, self.card.architecture["resample_p"], generator)
            y = net.vqvae.decode_samples(healed)
        yield Step("resampling unlikely codes", 1.0)
        return y
