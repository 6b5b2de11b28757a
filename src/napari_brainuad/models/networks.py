"""MONAI networks for each learned family, built from a card's ``architecture`` entry.

All are 2D (axial slices of the model grid): 3D training is not practical on CPU.
"""
from __future__ import annotations

from torch import nn

from .card import ModelError


def build_network(family: str, arch: dict) -> nn.Module:
    """The untrained network a card describes (its weights come from safetensors)."""
    from monai.networks.nets import AutoEncoder, DiffusionModelUNet, UNet, VarAutoEncoder

    a = dict(arch)
    channels_in = 2 * int(a.get("context", 0)) + 1  # the slice and its neighbours on each side
    try:
        if family == "ae":
            return AutoEncoder(spatial_dims=2, in_channels=channels_in, out_channels=1, channels=a["channels"],
                               strides=a["strides"], num_res_units=a.get("num_res_units", 1), norm="batch")
        if family == "vae":
            return VarAutoEncoder(spatial_dims=2, in_shape=(channels_in, *a["slice_shape"]), out_channels=1,
                                  latent_size=a["latent_size"], channels=a["channels"], strides=a["strides"],
                                  num_res_units=a.get("num_res_units", 1), norm="batch", use_sigmoid=False,
                                  use_mean_at_inference=True)
        if family in ("dae", "restore"):
            return UNet(spatial_dims=2, in_channels=channels_in, out_channels=1, channels=a["channels"], strides=a["strides"],
                        num_res_units=a.get("num_res_units", 2), norm="batch")
        if family == "ddpm":
            return DiffusionModelUNet(spatial_dims=2, in_channels=1, out_channels=1, channels=a["channels"],
                                      attention_levels=a["attention_levels"], num_res_blocks=a["num_res_blocks"],
                                      num_head_channels=a["num_head_channels"], norm_num_groups=a.get("norm_groups", 32))
    except (KeyError, TypeError, ValueError, AssertionError) as exc:
        raise ModelError(f"architecture of family '{family}' is invalid ({exc}).") from None
    raise ModelError(f"unknown learned family '{family}'.")
