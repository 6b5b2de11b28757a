"""``ae``: convolutional autoencoder with a spatial bottleneck (Baur et al. 2021), MSE on healthy slices."""
from __future__ import annotations

import torch.nn.functional as F

from ..slicewise import SliceModel


class AutoEncoderModel(SliceModel):
    family = "ae"

    @staticmethod
    def make_network(arch, channels_in):
        from monai.networks.nets import AutoEncoder

        return AutoEncoder(spatial_dims=2, in_channels=channels_in, out_channels=1, channels=arch["channels"],
                           strides=arch["strides"], num_res_units=arch.get("num_res_units", 1), norm="batch")

    @staticmethod
    def objective(recipe, device):
        def loss(model, batch, generator):
            return F.mse_loss(model(batch.input), batch.target)
        return loss
