"""``ldm-ae``: the first stage of the latent diffusion families (``ldm``, ``ldm-tavg``, ``cldm``,
``pcldm``; Lawry Aguila et al., after Rombach et al. and Pinaya et al.): a KL-regularised MONAI
AutoencoderKL of single axial slices, trained with L1 + KL + perceptual (the project's offline LPIPS)
+ patch-adversarial loss (MONAI PatchDiscriminator, least squares, from ``training.adv_start`` on).
As a model of its own it reconstructs a slice from its posterior mean (so it can be exported,
calibrated and looked at like any autoencoder); the diffusion families load it frozen.

Architecture keys: ``ae_channels`` (one level each; every level after the first halves the slice),
``latent_channels``, ``ae_num_res_blocks``, ``ae_norm_groups`` and ``ae_attention`` (MONAI's non-local
attention blocks around the latent). Training keys: ``kl_weight``, ``perceptual_weight``,
``adv_weight``, ``adv_start`` (steps before the discriminator joins), ``disc_channels``, ``disc_layers``
and ``disc_lr``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...progress import Step
from ..slicewise import SliceModel, TrainStep
from .vqvae import single_slice

AE_KEYS = ("slice_shape", "ae_channels", "latent_channels", "ae_num_res_blocks", "ae_norm_groups", "ae_attention")
"""The architecture keys of the first stage: a diffusion recipe repeats them, and they must match its autoencoder."""
MAX_LATENT = 64 * 64
"""Most latent positions per slice a card may ask for (the diffusion UNet runs at this size)."""


def latent_shape(arch: dict) -> tuple[int, int, int]:
    """(channels, height, width) of a slice's latent; ValueError unless ``slice_shape`` divides."""
    factor = 2 ** (len(arch["ae_channels"]) - 1)
    if any(s % factor for s in arch["slice_shape"]):
        raise ValueError(f"slice_shape must divide by 2 ** (len(ae_channels) - 1) = {factor}")
    h, w = arch["slice_shape"][0] // factor, arch["slice_shape"][1] // factor
    if h * w > MAX_LATENT:
        raise ValueError(f"{h * w} latent positions per slice exceed {MAX_LATENT}")
    return int(arch["latent_channels"]), h, w


def _autoencoder_class():
    from monai.networks.nets import AutoencoderKL

    class SeededAutoencoderKL(AutoencoderKL):
        """MONAI's AutoencoderKL whose forward takes its sampling noise (from fit's generator) instead of
        drawing it from torch's global generator, so training is repeatable and resumable; without
        noise it decodes the posterior mean."""

        def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None):
            z_mu, z_sigma = self.encode(x)
            z = z_mu if eps is None else z_mu + eps * z_sigma
            return self.decode(z), z_mu, z_sigma

    return SeededAutoencoderKL


def autoencoder_kl(arch: dict):
    """The first stage of a card's ``architecture`` (ValueError for numbers that cannot work)."""
    latent_shape(arch)
    levels = len(arch["ae_channels"])
    attention = bool(arch.get("ae_attention", False))
    return _autoencoder_class()(
        spatial_dims=2, in_channels=1, out_channels=1, channels=arch["ae_channels"],
        latent_channels=arch["latent_channels"], num_res_blocks=arch.get("ae_num_res_blocks", 1),
        attention_levels=[False] * levels, norm_num_groups=arch.get("ae_norm_groups", 32),
        with_encoder_nonlocal_attn=attention, with_decoder_nonlocal_attn=attention)


def kl_loss(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL divergence of the posterior from N(0, 1), summed over the latent, averaged over the batch."""
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2)) - 1)
    return kl.flatten(1).sum(1).mean()


def perceptual_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean LPIPS (AlexNet, the bundled weights: nothing is downloaded) of (B, 1, H, W) slices in [0, 1]."""
    from ...lpips_offline import load_lpips

    net = load_lpips(a.device)
    return net(a.expand(-1, 3, -1, -1) * 2 - 1, b.expand(-1, 3, -1, -1) * 2 - 1).mean()


def autoencoder_losses(recipe: dict):
    """``losses(model, batch, generator) -> (reconstruction, loss)``: L1 to the healthy target + KL + LPIPS."""
    cfg = recipe["training"]
    beta, perceptual = cfg.get("kl_weight", 1e-6), cfg.get("perceptual_weight", 0.001)

    def losses(model, batch, generator):
        x = batch.input
        c, h, w = latent_shape(recipe["architecture"])
        eps = torch.randn((x.shape[0], c, h, w), generator=generator).to(x.device)
        recon, z_mu, z_sigma = model(x, eps)
        loss = F.l1_loss(recon, batch.target) + beta * kl_loss(z_mu, z_sigma)
        if perceptual:
            loss = loss + perceptual * perceptual_loss(recon.float(), batch.target)
        return recon, loss
    return losses


class AdversarialStep(TrainStep):
    """One step of the autoencoder and its patch discriminator (least-squares patch GAN, as MONAI's
    latent diffusion tutorials): the autoencoder on its losses plus ``adv_weight`` times fooling the
    discriminator, then the discriminator on telling the healthy target from the reconstruction.
    Before ``adv_start`` steps the discriminator neither judges nor learns."""

    def __init__(self, recipe: dict, device, wrap):
        from monai.losses import PatchAdversarialLoss
        from monai.networks.nets import PatchDiscriminator

        cfg = recipe["training"]
        self.cfg = cfg
        self.losses = autoencoder_losses(recipe)
        self.weight, self.start = cfg.get("adv_weight", 0.01), cfg.get("adv_start", 0)
        self.discriminator = PatchDiscriminator(spatial_dims=2, num_layers_d=cfg.get("disc_layers", 3),
                                                channels=cfg.get("disc_channels", 32), in_channels=1,
                                                out_channels=1, norm="INSTANCE").to(device)
        self.judge = wrap(self.discriminator)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.get("disc_lr", cfg["lr"]))
        self.adversarial = PatchAdversarialLoss(criterion="least_squares")

    def __call__(self, model, batch, generator, optimizer, step):
        recon, loss = self.losses(model, batch, generator)
        judged = step >= self.start and self.weight > 0
        if judged:
            fooled = self.adversarial(self.judge(recon.float())[-1], target_is_real=True, for_discriminator=False)
            loss = loss + self.weight * fooled
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.get("grad_clip"):
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], self.cfg["grad_clip"])
        optimizer.step()
        if judged:
            self.optimizer.zero_grad(set_to_none=True)
            fake = self.adversarial(self.judge(recon.detach().float())[-1], target_is_real=False, for_discriminator=True)
            real = self.adversarial(self.judge(batch.target)[-1], target_is_real=True, for_discriminator=True)
            (self.weight * 0.5 * (fake + real)).backward()
            self.optimizer.step()
        return loss.detach()

    def state_dict(self) -> dict:
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])


class LatentAutoencoderModel(SliceModel):
    family = "ldm-ae"

    @staticmethod
    def make_network(arch, channels_in):
        single_slice(channels_in)
        return autoencoder_kl(arch)

    @staticmethod
    def objective(recipe, device):
        losses = autoencoder_losses(recipe)

        def loss(model, batch, generator):
            return losses(model, batch, generator)[1]
        return loss

    @staticmethod
    def train_step(recipe, device, wrap):
        return AdversarialStep(recipe, device, wrap)

    def reconstruct_batch(self, x, t_int, generator):
        with torch.inference_mode():
            y = self.network(x)[0]  # decoded posterior mean
        yield Step("autoencoder", 1.0)
        return y
