"""Learned 2D families run slice-wise over the axial slices (last axis) of the model grid.

ae: autoencoder with a spatial bottleneck (Baur et al. 2021); vae: variational autoencoder;
dae: denoising autoencoder trained on coarse noise (Kascenas et al. 2022); restore: a UNet trained
to remove synthetic anomalies (pseudo-pathology restoration, the idea behind UNA, Liu et al. 2025);
ddpm: denoising diffusion, partially noised to ``t_int`` and denoised back with DDIM steps.
A card's ``architecture.context`` gives the network that many neighbouring slices on each side
as extra input channels (zeros beyond the grid).
"""
from __future__ import annotations

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..progress import Step, Steps, scaled
from .base import AnomalyModel
from .card import MAX_WEIGHTS_BYTES, ModelCard, ModelError, check_regular_file
from .networks import build_network


def load_network(card: ModelCard) -> nn.Module:
    """Build the card's network and load its safetensors weights (strict: every tensor must match)."""
    network = build_network(card.family, card.architecture)
    path = card.weights_path
    if path is None:
        raise ModelError(f"{card.folder}: model card names no weights file.")
    check_regular_file(path, MAX_WEIGHTS_BYTES, "weights file")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a valid safetensors weights file ({exc}).") from None
    # Weights may be stored in float16 (smaller files); the network computes in float32.
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "tensor mismatch"
        raise ModelError(f"{path}: weights do not match the '{card.family}' architecture ({first}).") from None
    return network


class SliceModel(AnomalyModel):
    """A 2D network applied to every axial slice that holds brain, in batches."""

    def __init__(self, card: ModelCard, device: str = "cpu", network: nn.Module | None = None):
        super().__init__(card, device)
        self.network = (network if network is not None else load_network(card)).to(device).eval()
        self.batch_size = int(card.architecture.get("inference_batch", 32))
        self.context = int(card.architecture.get("context", 0))

    def iter_reconstruct(self, image, mask, t_int=None, seed=0) -> Steps[np.ndarray]:
        slices = np.flatnonzero(mask.any(axis=(0, 1)))
        out = np.zeros_like(image, dtype=np.float32)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        batches = [slices[i:i + self.batch_size] for i in range(0, len(slices), self.batch_size)]
        padded = np.pad(image, ((0, 0), (0, 0), (self.context, self.context)))
        offsets = np.arange(2 * self.context + 1)
        for n, index in enumerate(batches):
            slabs = padded[:, :, index[:, None] + offsets]  # (X, Y, B, C): centre slice at channel `context`
            x = torch.from_numpy(np.ascontiguousarray(slabs.transpose(2, 3, 0, 1), dtype=np.float32)).to(self.device)
            y = yield from scaled(self.reconstruct_batch(x, t_int, generator), n / len(batches), (n + 1) / len(batches))
            out[:, :, index] = y[:, 0].clamp(0, 1).cpu().numpy().transpose(1, 2, 0)
        return np.where(mask, out, 0.0).astype(np.float32)

    def reconstruct_batch(self, x: torch.Tensor, t_int, generator) -> Steps[torch.Tensor]:
        """Reconstruct (B, 1, H, W) slices in [0, 1]; yield progress within the batch."""
        with torch.inference_mode():
            y = self.network(x)
        yield Step(self.card.family, 1.0)
        return y


class VAEModel(SliceModel):
    def reconstruct_batch(self, x, t_int, generator):
        with torch.inference_mode():
            y = self.network(x)[0]  # decoded posterior mean (use_mean_at_inference)
        yield Step("vae", 1.0)
        return y


class DDPMModel(SliceModel):
    """Partial noising to ``t_int``, then MONAI DDIM steps of ``t_int.steps`` back to 0."""

    CHUNK = 8
    """Slices per network call inside a step: progress (and Cancel) every fraction of a second on a CPU."""

    def __init__(self, card, device="cpu", network=None):
        super().__init__(card, device, network)
        from monai.networks.schedulers import DDIMScheduler

        sched = card.architecture["scheduler"]
        self.scheduler = DDIMScheduler(num_train_timesteps=sched["num_train_timesteps"], schedule=sched["schedule"],
                                       clip_sample=False, **sched.get("schedule_args", {}))
        self.stride = int(card.t_int.get("steps", 25))
        self.scheduler.set_timesteps(sched["num_train_timesteps"] // self.stride)

    def reconstruct_batch(self, x, t_int, generator):
        x = x * 2 - 1  # the network works in [-1, 1]
        start = (t_int // self.stride) * self.stride
        timesteps = [int(t) for t in self.scheduler.timesteps if t <= start]
        noise = torch.randn(x.shape, generator=generator, device=x.device)
        sample = self.scheduler.add_noise(x, noise, torch.full((x.shape[0],), start, device=x.device, dtype=torch.long))
        chunks = range(0, x.shape[0], self.CHUNK)
        for i, t in enumerate(timesteps):
            eps = torch.empty_like(sample)
            for n, j in enumerate(chunks):
                part = sample[j:j + self.CHUNK]
                with torch.inference_mode():
                    eps[j:j + self.CHUNK] = self.network(
                        part, timesteps=torch.full((part.shape[0],), t, device=x.device, dtype=torch.long))
                yield Step(f"denoising from t={start}", (i + (n + 1) / len(chunks)) / len(timesteps))
            with torch.inference_mode():
                sample, _ = self.scheduler.step(eps, t, sample)
        return (sample + 1) / 2
