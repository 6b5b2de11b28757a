"""Training objectives per family: ``LOSSES[family](recipe, device)(model, batch, generator) -> loss``.

``batch`` is (B, 2, H, W): channel 0 the slice in [0, 1], channel 1 its brain mask.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction_loss(recipe, device):
    def loss(model, batch, generator):
        x = batch[:, :1]
        return F.mse_loss(model(x), x)
    return loss


def vae_loss(recipe, device):
    beta = recipe["training"].get("kl_weight", 1e-4)

    def loss(model, batch, generator):
        x = batch[:, :1]
        recon, mu, logvar, _ = model(x)
        kl = -0.5 * torch.mean(torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1))
        return F.mse_loss(recon, x) + beta * kl
    return loss


def coarse_noise(shape, size: int, std: float, generator, device) -> torch.Tensor:
    """Gaussian noise drawn on a ``size`` x ``size`` grid and upsampled bilinearly (Kascenas et al. 2022)."""
    noise = torch.randn((shape[0], 1, size, size), generator=generator) * std
    return F.interpolate(noise, size=shape[-2:], mode="bilinear", align_corners=False).to(device)


def denoising_loss(recipe, device):
    cfg = recipe["training"]["noise"]

    def loss(model, batch, generator):
        x, mask = batch[:, :1], batch[:, 1:]
        noisy = x + mask * coarse_noise(x.shape, cfg["size"], cfg["std"], generator, x.device)
        return F.mse_loss(model(noisy), x)
    return loss


def diffusion_loss(recipe, device):
    from monai.networks.schedulers import DDPMScheduler

    sched = recipe["architecture"]["scheduler"]
    scheduler = DDPMScheduler(num_train_timesteps=sched["num_train_timesteps"], schedule=sched["schedule"],
                              **sched.get("schedule_args", {}))

    t_max = recipe["training"].get("max_timestep", scheduler.num_train_timesteps)  # partial noising stays below

    def loss(model, batch, generator):
        x = batch[:, :1] * 2 - 1
        noise = torch.randn(x.shape, generator=generator).to(x.device)
        t = torch.randint(0, t_max, (x.shape[0],), generator=generator).to(x.device)
        return F.mse_loss(model(scheduler.add_noise(x, noise, t), timesteps=t), noise)
    return loss


LOSSES = {"ae": reconstruction_loss, "vae": vae_loss, "dae": denoising_loss, "ddpm": diffusion_loss}
