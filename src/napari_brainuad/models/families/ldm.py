"""``ldm`` and ``ldm-tavg``: latent diffusion (Lawry Aguila et al., "Conditional diffusion models for
guided anomaly detection in brain images using fluid-driven anomaly randomization"; after Rombach et
al. and Pinaya et al.). A frozen ``ldm-ae`` autoencoder maps an axial slice to a latent (e.g. 3x24x28
for a 96x112 slice), scaled to unit variance; a MONAI DiffusionModelUNet is trained to predict the
noise added to healthy latents (MSE, timesteps below ``training.max_timestep``, MONAI DDPMScheduler).
The pseudo-healthy slice: the scan's latent noised to ``t_int``, denoised with MONAI DDIM steps of
``t_int.steps``, decoded.

``ldm-tavg`` is the same trained network (export an ``ldm`` run with the ``ldm-tavg`` recipe, no
training of its own) that reconstructs at ``t_avg`` noise levels evenly spaced up to ``t_int`` and
averages the residual maps over them (Graham et al.), before the card's remaining scoring.

Two-stage training: the recipe's ``training.autoencoder`` names an exported ``ldm-ae`` model folder
whose weights are loaded and frozen (its architecture keys must match the recipe's); the latent
scale (1 / std of healthy latents) is measured on training slices before the first step and stored
with the weights. MONAI's LatentDiffusionInferer is not used: it samples the posterior with torch's
global generator (fit derives all randomness from (seed, step)) and only samples from pure noise,
while partial noising starts at ``t_int``; the same MONAI schedulers and UNet are called directly.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...progress import Step, scaled
from ...scoring import residual_map
from ..card import ModelError, read_card
from ..slicewise import SliceModel, put_slices
from .ddpm import ddim_scheduler
from .ldm_ae import AE_KEYS, LatentAutoencoderModel, autoencoder_kl, latent_shape
from .vqvae import single_slice

SCALE_SLICES = 32
"""Training slices whose latents set the latent scale."""


def diffusion_unet(arch: dict, channels_in: int, channels_out: int):
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet(spatial_dims=2, in_channels=channels_in, out_channels=channels_out,
                              channels=arch["channels"], attention_levels=arch["attention_levels"],
                              num_res_blocks=arch["num_res_blocks"], num_head_channels=arch["num_head_channels"],
                              norm_num_groups=arch.get("norm_groups", 32))


class LatentDiffusion(nn.Module):
    """The frozen first stage, the diffusion UNet on its scaled latents, and the latent scale.

    ``condition``: None (``ldm``), ``"concat"`` (``cldm``: the condition's latent as extra UNet input
    channels) or ``"adagn"`` (``pcldm``: the condition's latent encoded to a vector that modulates
    every UNet ResnetBlock; :class:`.pcldm.ConditionedUNet`).
    """

    def __init__(self, arch: dict, condition: str | None = None):
        super().__init__()
        c, h, w = latent_shape(arch)
        factor = 2 ** (len(arch["channels"]) - 1)
        if h % factor or w % factor:
            raise ValueError(f"the {h}x{w} latent must divide by 2 ** (len(channels) - 1) = {factor}")
        self.condition = condition
        self.autoencoder = autoencoder_kl(arch)
        if condition == "adagn":
            from .pcldm import ConditionedUNet

            self.unet = ConditionedUNet(arch, c, (h, w))
        else:
            self.unet = diffusion_unet(arch, 2 * c if condition == "concat" else c, c)
        self.register_buffer("scale_factor", torch.ones(()))

    def train(self, mode: bool = True):
        super().train(mode)
        self.autoencoder.eval()  # frozen first stage
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled latent (posterior mean) of (B, 1, H, W) slices."""
        return self.autoencoder.encode(x)[0] * self.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(z / self.scale_factor)

    def prepare(self, z_p: torch.Tensor) -> torch.Tensor | None:
        """What the UNet is conditioned on, from the condition's scaled latent: nothing, the latent
        itself (concatenated) or its vector c_p (computed once per batch, reused at every timestep)."""
        if self.condition == "adagn":
            return self.unet.encode_condition(z_p)
        return z_p if self.condition == "concat" else None

    def forward(self, z_t: torch.Tensor, timesteps: torch.Tensor, z_p: torch.Tensor | None = None,
                prepared: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted noise of ``z_t`` at ``timesteps``; the condition as ``z_p`` or already ``prepared``."""
        cond = prepared if prepared is not None or self.condition is None else self.prepare(z_p)
        if self.condition == "concat":
            return self.unet(torch.cat([z_t, cond], dim=1), timesteps=timesteps)
        if self.condition == "adagn":
            return self.unet(z_t, timesteps, cond)
        return self.unet(z_t, timesteps=timesteps)


class LatentDiffusionModel(SliceModel):
    """``ldm``; ``cldm`` and ``pcldm`` differ only in :attr:`condition`."""

    family = "ldm"
    condition: str | None = None
    frozen_prefixes = ("autoencoder.",)

    def __init__(self, card, device="cpu", network=None):
        super().__init__(card, device, network)
        self.scheduler, self.stride = ddim_scheduler(card)

    @classmethod
    def make_network(cls, arch, channels_in):
        single_slice(channels_in)
        if "scheduler" not in arch:
            raise KeyError("scheduler")
        return LatentDiffusion(arch, cls.condition)

    @classmethod
    def init_training(cls, network, recipe, data=None):
        """Load and freeze the ``ldm-ae`` folder the recipe names (``training.autoencoder``); measure the
        latent scale on :data:`SCALE_SLICES` healthy training slices (drawn with the recipe's seed)."""
        folder = Path(recipe["training"]["autoencoder"])
        card = read_card(folder)
        if card.family != LatentAutoencoderModel.family:
            raise ModelError(f"{folder}: the first stage must be an 'ldm-ae' model, not '{card.family}'.")
        arch = recipe["architecture"]
        differ = [k for k in AE_KEYS if card.architecture.get(k) != arch.get(k)]
        if differ:
            raise ModelError(f"{folder}: its autoencoder differs from the recipe's in {', '.join(differ)}.")
        network.autoencoder.load_state_dict(LatentAutoencoderModel.load_network(card).state_dict())
        network.autoencoder.requires_grad_(False)
        if data is not None:
            generator = torch.Generator().manual_seed(recipe["training"]["seed"])
            batch = data.batch(SCALE_SLICES, generator, augment=False)
            with torch.no_grad():
                z = network.autoencoder.encode(batch.target)[0]
            network.scale_factor.fill_(1.0 / float(z.std()))

    @staticmethod
    def objective(recipe, device):
        """Noise-prediction MSE on the healthy target's latent; conditional families see the input's
        latent (pseudo-pathological for ``pseudo_prob`` of the samples) as their condition."""
        from monai.networks.schedulers import DDPMScheduler

        sched = recipe["architecture"]["scheduler"]
        scheduler = DDPMScheduler(num_train_timesteps=sched["num_train_timesteps"], schedule=sched["schedule"],
                                  **sched.get("schedule_args", {}))
        t_max = recipe["training"].get("max_timestep", scheduler.num_train_timesteps)

        def loss(model, batch, generator):
            net = getattr(model, "module", model)  # the frozen encoder, outside data parallelism
            with torch.no_grad():
                z0 = net.encode(batch.target)
                z_p = net.encode(batch.input) if net.condition else None
            noise = torch.randn(z0.shape, generator=generator).to(z0.device)
            t = torch.randint(0, t_max, (z0.shape[0],), generator=generator).to(z0.device)
            return F.mse_loss(model(scheduler.add_noise(z0, noise, t), t, z_p), noise)
        return loss

    def reconstruct_batch(self, x, t_int, generator):
        with torch.inference_mode():
            z0 = self.network.encode(x)
            cond = self.network.prepare(z0)  # at inference the scan is its own condition
        return (yield from self.denoise(z0, cond, t_int, generator))

    def denoise(self, z0, cond, t_int, generator):
        """Noise the scaled latents ``z0`` to ``t_int``, denoise them with DDIM steps under the prepared
        condition ``cond`` and decode: (B, 1, H, W) slices; yield progress."""
        net = self.network
        start = (t_int // self.stride) * self.stride
        timesteps = [int(t) for t in self.scheduler.timesteps if t <= start]
        noise = torch.randn(z0.shape, generator=generator, device=z0.device)
        z = self.scheduler.add_noise(z0, noise, torch.full((z0.shape[0],), start, device=z0.device, dtype=torch.long))
        for i, t in enumerate(timesteps):
            with torch.inference_mode():
                eps = net(z, torch.full((z0.shape[0],), t, device=z0.device, dtype=torch.long), prepared=cond)
                z, _ = self.scheduler.step(eps, t, z)
            yield Step(f"denoising latents from t={start}", (i + 1) / (len(timesteps) + 1))
        with torch.inference_mode():
            y = net.decode(z)
        yield Step("decoding", 1.0)
        return y


class Reconstructions(np.ndarray):
    """The mean of several reconstructions of one volume (what is shown and written) that keeps each
    one in ``each`` for scoring. Arrays derived from it (slices, arithmetic) do not keep them."""

    each: tuple = ()

    @classmethod
    def of(cls, each: list[np.ndarray]) -> "Reconstructions":
        out = np.mean(each, axis=0).astype(np.float32).view(cls)
        out.each = tuple(each)
        return out


class LatentDiffusionTAvgModel(LatentDiffusionModel):
    """``ldm-tavg``: an ``ldm`` network whose anomaly map averages over ``t_avg`` noise levels up to ``t_int``."""

    family = "ldm-tavg"

    def levels(self, t_int: int) -> list[int]:
        """``t_avg`` noise levels evenly spaced up to ``t_int`` (its k / t_avg fractions, on the DDIM grid;
        levels that fall below one DDIM step are dropped, ``t_int`` itself always kept)."""
        count = int(self.card.architecture.get("t_avg", 3))
        levels = [(t_int * k // count) // self.stride * self.stride for k in range(1, count)]
        return sorted({t for t in levels if t > 0} | {int(t_int)})

    def iter_reconstruct(self, image, mask, t_int=None, seed=0):
        """One reconstruction per level, each exactly what ``ldm`` makes at that ``t_int`` with this ``seed``
        (its own generator, drawn batch after batch); a batch is encoded once for all levels."""
        t_int = self.card.t_int["default"] if t_int is None else t_int
        levels = self.levels(t_int)
        generators = [torch.Generator(device=self.device).manual_seed(seed) for _ in levels]
        each = [np.zeros_like(image, dtype=np.float32) for _ in levels]
        batches = self.slice_batches(image, mask)
        steps = len(batches) * len(levels)
        for n, (index, x, _) in enumerate(batches):
            with torch.inference_mode():
                z0 = self.network.encode(x)
                cond = self.network.prepare(z0)
            for k, level in enumerate(levels):
                done = n * len(levels) + k
                y = yield from scaled(self.denoise(z0, cond, level, generators[k]), done / steps, (done + 1) / steps)
                put_slices(each[k], index, y)
        return Reconstructions.of([np.where(mask, r, 0.0).astype(np.float32) for r in each])

    def residual_map(self, image, reconstruction, mask, config):
        """The residual maps of every level's reconstruction, averaged (one reconstruction without its
        levels is scored alone)."""
        each = getattr(reconstruction, "each", ()) or (np.asarray(reconstruction),)
        maps = [residual_map(image, np.asarray(r), mask, config, device=self.device) for r in each]
        return np.mean(maps, axis=0).astype(np.float32)
