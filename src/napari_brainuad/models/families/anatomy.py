"""``anatomy``: one model for any contrast, by disentangled anatomy and edge-to-image restoration
(after Yang et al. 2025, "Unsupervised anomaly detection in brain MRI via disentangled anatomy
learning", arXiv 2512.21924).

A slice is split into

* an **anatomy image**: ``K`` tissue classes from a MONAI UNet encoder, made one-hot by straight-through
  Gumbel-softmax while training (:func:`gumbel_one_hot`, the formula of
  ``torch.nn.functional.gumbel_softmax(hard=True)`` with the noise from a seeded generator) and by the
  arg-max at inference. Class ``k`` belongs to tissue ``k % 3`` (CSF, grey, white matter); the training
  objective pulls the tissue sums toward the slice's healthy tissue labels where they are known
  (SynthSeg-style synthetic contrasts of labelled brains) and toward the MNI152 tissue priors where
  those are confident, which keeps the classes the same anatomy in every contrast;
* an **imaging code**: the mean intensity of each class inside the brain (``K`` numbers), what the
  contrast makes of each tissue.

**Edge-to-image restoration**: a second UNet sees only the high-frequency edges of the one-hot anatomy
(Sobel or Laplacian magnitude per class, :func:`class_edges`: zero wherever a class is constant, so the
intensities inside a lesion never reach it) and predicts the pseudo-healthy anatomy ``h`` (soft
classes). The rendering recouples the imaging code: ``sum_k h_k c_k`` refined by a small convolutional
net conditioned on the code by FiLM, which sees ``h`` and that sum, never the input.

The anomaly map compares the input and the rendering with the card's scoring, as for every family.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...progress import Step
from ..slicewise import SliceModel

TISSUE_GROUPS = 3
"""Class ``k`` of the anatomy image belongs to tissue ``k % 3``: 0 CSF, 1 grey, 2 white matter."""
_SOBEL = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]]) / 8.0
_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]) / 4.0


def gumbel_one_hot(logits: torch.Tensor, tau: float = 1.0, generator: torch.Generator | None = None,
                   dim: int = 1) -> torch.Tensor:
    """Straight-through Gumbel-softmax: one-hot in the forward pass, the softmax's gradient backwards.

    The formula of ``F.gumbel_softmax(logits, tau, hard=True, dim=dim)``, with the Gumbel noise drawn
    from ``generator`` (on the CPU, then moved) so that training steps repeat exactly; without a
    generator it is ``F.gumbel_softmax`` itself.
    """
    if generator is None:
        return F.gumbel_softmax(logits, tau=tau, hard=True, dim=dim)
    gumbels = -torch.empty(logits.shape, dtype=logits.dtype).exponential_(generator=generator).log()
    soft = ((logits + gumbels.to(logits.device)) / tau).softmax(dim)
    hard = torch.zeros_like(logits).scatter_(dim, soft.argmax(dim, keepdim=True), 1.0)
    return hard - soft.detach() + soft


def class_edges(anatomy: torch.Tensor, kind: str = "sobel") -> torch.Tensor:
    """(B, K, H, W) edge magnitude of each class channel: ``|d/dx| + |d/dy|`` (Sobel) or ``|Laplacian|``.

    Zero wherever the class is constant over the 3x3 neighbourhood (zero padding outside the slice).
    """
    k = anatomy.shape[1]
    if kind == "sobel":
        kernel = torch.stack([_SOBEL, _SOBEL.T])[:, None].repeat(k, 1, 1, 1).to(anatomy)  # (2K, 1, 3, 3)
        g = F.conv2d(anatomy, kernel, padding=1, groups=k).unflatten(1, (k, 2))
        return g.abs().sum(dim=2)
    if kind == "laplace":
        return F.conv2d(anatomy, _LAPLACE[None, None].repeat(k, 1, 1, 1).to(anatomy), padding=1, groups=k).abs()
    raise ValueError(f"unknown edge operator '{kind}'")


def tissue_probabilities(p: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) CSF, GM, WM probabilities: the sum over the classes of each tissue (class ``k`` -> ``k % 3``)."""
    k = p.shape[1]
    groups = F.one_hot(torch.arange(k, device=p.device) % TISSUE_GROUPS, TISSUE_GROUPS).to(p)  # (K, 3)
    return torch.einsum("bkhw,kt->bthw", p, groups).contiguous()


def class_means(x: torch.Tensor, p: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, K) imaging code: the mean intensity of ``x`` (B, 1, H, W) under each class's probability, in the brain."""
    w = p * mask
    return (w * x).sum(dim=(2, 3)) / w.sum(dim=(2, 3)).clamp_min(1e-3)


class AnatomyNet(nn.Module):
    """Anatomy encoder, edge-to-anatomy restorer and code-conditioned renderer (see the module docstring)."""

    def __init__(self, arch: dict):
        super().__init__()
        from monai.networks.nets import UNet

        self.classes = int(arch["classes"])
        self.edges = arch.get("edges", "sobel")
        if self.classes < TISSUE_GROUPS:
            raise ValueError(f"classes must be at least {TISSUE_GROUPS} (one per tissue), got {self.classes}")
        if int(arch.get("context", 0)) != 0:
            raise ValueError("context must be 0 (the family sees one slice)")
        strides = list(arch["strides"])
        factor = 1
        for s in strides:
            factor *= int(s)
        shape = arch.get("slice_shape")
        if shape is not None and any(n % factor for n in shape):
            raise ValueError(f"slice_shape {shape} must divide by the product of strides ({factor})")
        res = arch.get("num_res_units", 2)
        self.encoder = UNet(spatial_dims=2, in_channels=1, out_channels=self.classes, channels=arch["channels"],
                            strides=strides, num_res_units=res, norm="batch")
        self.restorer = UNet(spatial_dims=2, in_channels=self.classes, out_channels=self.classes,
                             channels=arch.get("restore_channels", arch["channels"]), strides=strides,
                             num_res_units=res, norm="batch")
        width = int(arch.get("refine_channels", 16))
        self.film = nn.Linear(self.classes, 2 * width)
        self.refine_in = nn.Conv2d(self.classes + 1, width, 3, padding=1)
        self.refine_mid = nn.Conv2d(width, width, 3, padding=1)
        self.refine_out = nn.Conv2d(width, 1, 3, padding=1)

    def anatomy(self, x, mask, generator=None, tau: float = 1.0):
        """Encoder logits, class probabilities and the one-hot anatomy (Gumbel while training with a
        generator, arg-max otherwise), zero outside ``mask``."""
        logits = self.encoder(x)
        probs = logits.softmax(1)
        if self.training and generator is not None:
            one_hot = gumbel_one_hot(logits, tau, generator)
        else:
            one_hot = F.one_hot(logits.argmax(1), self.classes).permute(0, 3, 1, 2).to(logits).contiguous()
        return logits, probs, one_hot * mask

    def restore(self, one_hot):
        """The restorer's input (the anatomy's edges, nothing else) and its pseudo-healthy class logits."""
        edges = class_edges(one_hot, self.edges)
        return edges, self.restorer(edges)

    def render(self, healthy, code, mask):
        """The pseudo-healthy anatomy (B, K, H, W probabilities) in the contrast of ``code`` (B, K)."""
        base = (healthy * code[:, :, None, None]).sum(1, keepdim=True)
        gamma, beta = self.film(code).chunk(2, dim=1)
        f = F.silu(self.refine_in(torch.cat([base, healthy], 1)))
        f = f * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]
        f = F.silu(self.refine_mid(f))
        return (base + self.refine_out(f)) * mask

    def forward(self, x, mask=None, generator=None, tau: float = 1.0) -> dict:
        mask = (x > 0).to(x) if mask is None else mask
        logits, probs, one_hot = self.anatomy(x, mask, generator, tau)
        code = class_means(x, probs, mask)
        edges, healthy_logits = self.restore(one_hot)
        healthy = healthy_logits.softmax(1) * mask
        return {"logits": logits, "probs": probs, "anatomy": one_hot, "code": code, "edges": edges,
                "healthy_logits": healthy_logits, "healthy": healthy, "render": self.render(healthy, code, mask)}


def _masked_mean(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    where = where.to(values)
    return (values * where).sum() / where.sum().clamp_min(1.0)


class AnatomyModel(SliceModel):
    family = "anatomy"
    needs_mask = True

    @staticmethod
    def make_network(arch, channels_in):
        return AnatomyNet(arch)

    def reconstruct_batch(self, x, t_int, generator, mask=None):
        with torch.inference_mode():
            y = self.network(x, mask)["render"]
        yield Step(self.card.family, 1.0)
        return y

    @staticmethod
    def objective(recipe, device):
        """Rendering L1 to the healthy slice (lesion voxels weighted up) + tissue cross-entropies.

        ``training.weights``: ``reconstruction`` (L1 of the rendering against the healthy slice, in the
        input's contrast), ``segmentation`` (encoder tissues vs the healthy labels where known, outside the
        lesion), ``restoration`` (restored classes vs the encoder's hard classes outside the lesion, and
        restored tissues vs the healthy labels everywhere they are known, the lesion included), ``prior``
        (encoder tissues vs the MNI152 prior's arg-max where it exceeds ``training.prior_confidence``).
        ``training.tau`` is the Gumbel-softmax temperature; ``training.lesion_weight`` the extra L1 weight
        of lesion voxels. Batches are :class:`training.synth.AnatomyBatch`.
        """
        cfg = recipe["training"]
        w = {"reconstruction": 1.0, "segmentation": 0.5, "restoration": 0.5, "prior": 0.1, **cfg.get("weights", {})}
        tau, confidence = cfg.get("tau", 1.0), cfg.get("prior_confidence", 0.8)
        lesion_weight = cfg.get("lesion_weight", 1.0)

        def loss(model, batch, generator):
            out = model(batch.input, batch.mask, generator, tau)
            inside, lesion = batch.mask[:, 0] > 0.5, batch.lesion[:, 0] > 0.5
            weight = batch.mask * (1.0 + lesion_weight * batch.lesion)
            total = w["reconstruction"] * ((out["render"] - batch.target).abs() * weight).sum() / weight.sum().clamp_min(1)
            tissue = batch.tissue[:, 0]
            known = inside & (tissue > 0)
            if known.any():
                target = (tissue - 1).clamp_min(0)
                enc = F.nll_loss(tissue_probabilities(out["probs"]).clamp_min(1e-6).log(), target, reduction="none")
                rest = F.nll_loss(tissue_probabilities(out["healthy_logits"].softmax(1)).clamp_min(1e-6).log(), target,
                                  reduction="none")
                total = total + w["segmentation"] * _masked_mean(enc, known & ~lesion)
                total = total + w["restoration"] * _masked_mean(rest, known)
            same = F.cross_entropy(out["healthy_logits"], out["logits"].argmax(1).detach(), reduction="none")
            total = total + w["restoration"] * _masked_mean(same, inside & ~lesion)
            if w["prior"] and batch.prior is not None:
                sure = inside & (batch.prior.max(1).values >= confidence)
                if sure.any():
                    prior = F.nll_loss(tissue_probabilities(out["probs"]).clamp_min(1e-6).log(), batch.prior.argmax(1),
                                       reduction="none")
                    total = total + w["prior"] * _masked_mean(prior, sure)
            return total
        return loss
