"""Training objectives per family: ``LOSSES[family](recipe, device)(model, batch, generator) -> loss``.

``batch`` is a :class:`training.data.Batch`: ``input`` (what the network sees), ``target`` (the
healthy centre slice), ``mask`` and ``lesion`` (synthetic anomaly, for restoration).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction_loss(recipe, device):
    def loss(model, batch, generator):
        return F.mse_loss(model(batch.input), batch.target)
    return loss


def vae_loss(recipe, device):
    beta = recipe["training"].get("kl_weight", 1e-4)

    def loss(model, batch, generator):
        recon, mu, logvar, _ = model(batch.input)
        kl = -0.5 * torch.mean(torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1))
        return F.mse_loss(recon, batch.target) + beta * kl
    return loss


def coarse_noise(shape, size: int, std: float, generator, device) -> torch.Tensor:
    """Gaussian noise drawn on a ``size`` x ``size`` grid and upsampled bilinearly (Kascenas et al. 2022)."""
    noise = torch.randn((shape[0], 1, size, size), generator=generator) * std
    return F.interpolate(noise, size=shape[-2:], mode="bilinear", align_corners=False).to(device)


def denoising_loss(recipe, device):
    cfg = recipe["training"]["noise"]

    def loss(model, batch, generator):
        x = batch.input
        noisy = x + batch.mask * coarse_noise(x.shape, cfg["size"], cfg["std"], generator, x.device)
        return F.mse_loss(model(noisy), batch.target)
    return loss


def restoration_loss(recipe, device):
    """L1 between the restored slice and the healthy one, inside the brain; lesion voxels weighted up.

    ``training.lesion_weight`` (default 1) adds that much weight to the synthetic lesion's voxels, so
    small anomalies are not drowned by the healthy tissue around them. With ``training.noise`` the
    input also gets coarse noise inside the brain (as the denoising autoencoder), so copying the
    input is never a good answer and the network must restore everywhere.
    """
    cfg = recipe["training"]
    weight = cfg.get("lesion_weight", 1.0)
    noise = cfg.get("noise")

    def loss(model, batch, generator):
        x = batch.input
        if noise:
            x = x + batch.mask * coarse_noise(x.shape, noise["size"], noise["std"], generator, x.device)
        error = (model(x) - batch.target).abs()
        w = batch.mask * (1.0 + weight * batch.lesion)
        return (error * w).sum() / w.sum().clamp_min(1.0)
    return loss


def diffusion_loss(recipe, device):
    from monai.networks.schedulers import DDPMScheduler

    sched = recipe["architecture"]["scheduler"]
    scheduler = DDPMScheduler(num_train_timesteps=sched["num_train_timesteps"], schedule=sched["schedule"],
                              **sched.get("schedule_args", {}))

    t_max = recipe["training"].get("max_timestep", scheduler.num_train_timesteps)  # partial noising stays below

    def loss(model, batch, generator):
        x = batch.target * 2 - 1
        noise = torch.randn(x.shape, generator=generator).to(x.device)
        t = torch.randint(0, t_max, (x.shape[0],), generator=generator).to(x.device)
        return F.mse_loss(model(scheduler.add_noise(x, noise, t), timesteps=t), noise)
    return loss


LOSSES = {"ae": reconstruction_loss, "vae": vae_loss, "dae": denoising_loss, "restore": restoration_loss,
          "ddpm": diffusion_loss}
