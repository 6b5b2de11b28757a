"""``restore``: pseudo-pathology restoration (the idea behind UNA, Liu et al. 2025): a MONAI UNet
trained on (slab with a synthetic anomaly, and optionally coarse noise) -> the healthy centre slice,
so it learns to remove anomalies instead of copying them. A recipe with ``training.synth_prob`` trains it on
SynthSeg-style random contrasts (``training/synth.py``) beside real T1 slices, for any contrast (``restore-any``)."""
from __future__ import annotations

from ..slicewise import SliceModel
from .dae import coarse_noise, unet


class RestorationModel(SliceModel):
    family = "restore"

    @staticmethod
    def make_network(arch, channels_in):
        return unet(arch, channels_in)

    @staticmethod
    def objective(recipe, device):
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
