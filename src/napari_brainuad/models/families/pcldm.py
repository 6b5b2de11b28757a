"""``pcldm``: pseudo-pathology-conditioned latent diffusion, the method of Lawry Aguila et al.
("Conditional diffusion models for guided anomaly detection in brain images using fluid-driven
anomaly randomization"). An auxiliary encoder with the architecture of the UNet's encoder (MONAI
DiffusionModelEncoder: the same channels, ResnetBlocks per level and attention levels, at a fixed
timestep 0, its dropout removed) maps the pseudo-pathological slice's latent z_p to a vector c_p of
``cond_dim`` numbers, which modulates every ResnetBlock of the MONAI DiffusionModelUNet through
adaptive group normalisation (Preechakul et al. 2022; Dhariwal & Nichol 2021):

    h = GroupNorm(conv1(h) + W_t(t_emb)) * (1 + s_b(c)) + b_b(c),  c = SiLU(Linear(c_p))

where MONAI's additive timestep projection W_t stays as it is and (s_b, b_b) is one learned linear
map per block. MONAI's UNet has no hook for this (its ``num_class_embeds`` only adds a class embedding
to the timestep's), so :class:`ConditionedUNet` wraps it: each ``DiffusionUNetResnetBlock`` is wrapped
in :class:`AdaGNResnetBlock` (same sub-modules, the condition applied after ``norm2``), and the UNet's
forward is repeated with the condition carried alongside the timestep embedding. The per-block maps
start at zero, so an untrained pcldm is exactly an unconditional ``ldm`` and learns to use c_p.

Training and inference as :mod:`.cldm` (condition: ``Batch.input``'s latent; at inference the scan itself).
"""
from __future__ import annotations

import torch
from torch import nn

from .ldm import LatentDiffusionModel, diffusion_unet


class AdaGNResnetBlock(nn.Module):
    """A MONAI ``DiffusionUNetResnetBlock`` (its sub-modules reused) with adaptive group normalisation
    by a condition vector after its second norm. Its embedding input is the timestep embedding and the
    condition's, concatenated (MONAI's blocks hand the embedding to their ResnetBlocks untouched)."""

    def __init__(self, block: nn.Module, cond_channels: int):
        super().__init__()
        self.block = block
        self.cond_proj = nn.Linear(cond_channels, 2 * block.out_channels)
        nn.init.zeros_(self.cond_proj.weight)  # no effect at initialisation
        nn.init.zeros_(self.cond_proj.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        b = self.block
        t_emb, c = emb[:, :b.emb_channels], emb[:, b.emb_channels:]
        h = b.nonlinearity(b.norm1(x))
        if b.upsample is not None:
            x, h = b.upsample(x), b.upsample(h)
        elif b.downsample is not None:
            x, h = b.downsample(x), b.downsample(h)
        h = b.conv1(h)
        h = h + b.time_emb_proj(b.nonlinearity(t_emb))[:, :, None, None]
        scale, shift = self.cond_proj(c)[:, :, None, None].chunk(2, dim=1)
        h = b.norm2(h) * (1 + scale) + shift
        h = b.conv2(b.nonlinearity(h))
        return b.skip_connection(x) + h


class ConditionedUNet(nn.Module):
    """MONAI's DiffusionModelUNet with every ResnetBlock under :class:`AdaGNResnetBlock`, and the
    auxiliary encoder of the condition."""

    def __init__(self, arch: dict, latent_channels: int, latent_hw: tuple[int, int]):
        super().__init__()
        from monai.networks.nets.diffusion_model_unet import DiffusionModelEncoder, DiffusionUNetResnetBlock

        cond_dim = int(arch["cond_dim"])
        self.unet = diffusion_unet(arch, latent_channels, latent_channels)
        emb_channels = self.unet.time_embed[-1].out_features
        self.cond_embed = nn.Sequential(nn.Linear(cond_dim, emb_channels), nn.SiLU())
        for parent in list(self.unet.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, DiffusionUNetResnetBlock):
                    setattr(parent, name, AdaGNResnetBlock(child, emb_channels))
        self.encoder = DiffusionModelEncoder(
            spatial_dims=2, in_channels=latent_channels, out_channels=cond_dim, channels=arch["channels"],
            attention_levels=arch["attention_levels"], num_res_blocks=arch["num_res_blocks"],
            num_head_channels=arch["num_head_channels"], norm_num_groups=arch.get("norm_groups", 32),
            input_shape=list(latent_hw))
        self.encoder.out[2] = nn.Identity()  # MONAI's dropout: fit draws every random number from its generator

    def encode_condition(self, z_p: torch.Tensor) -> torch.Tensor:
        """c_p (B, cond_dim) of the condition's latent z_p (B, C, h, w)."""
        return self.encoder(z_p, timesteps=torch.zeros(len(z_p), dtype=torch.long, device=z_p.device))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, c_p: torch.Tensor) -> torch.Tensor:
        """MONAI DiffusionModelUNet.forward (no cross-attention context, class labels or ControlNet
        residuals), with the condition's embedding carried beside the timestep's to every ResnetBlock."""
        from monai.networks.nets.diffusion_model_unet import get_timestep_embedding

        u = self.unet
        emb = u.time_embed(get_timestep_embedding(timesteps, u.block_out_channels[0]).to(dtype=x.dtype))
        emb = torch.cat([emb, self.cond_embed(c_p)], dim=1)
        h = u.conv_in(x)
        skips = [h]
        for block in u.down_blocks:
            h, res = block(hidden_states=h, temb=emb, context=None)
            skips.extend(res)
        h = u.middle_block(hidden_states=h, temb=emb, context=None)
        for block in u.up_blocks:
            n = len(block.resnets)
            h = block(hidden_states=h, res_hidden_states_list=skips[-n:], temb=emb, context=None)
            skips = skips[:-n]
        return u.out(h)


class PseudoPathologyConditionedModel(LatentDiffusionModel):
    family = "pcldm"
    condition = "adagn"
