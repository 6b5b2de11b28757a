"""``mae``: masked autoencoder with a ViT backbone (MONAI MaskedAutoEncoderViT; the seed's Swin-MAE,
Xu et al., uses Swin blocks instead), trained with L1 on the masked patches of single slices
(``masking_ratio`` of them hidden). At inference each slice is reconstructed under ``masks`` masks
that together hide every patch; a patch's reconstruction is the mean of its predictions from the
masks that hid it, so no patch is copied from the input."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...progress import Step
from ..slicewise import SliceModel
from .vqvae import single_slice

MAX_PATCHES = 4096
"""Most patches per slice a card may ask for."""


def _mae_class():
    from monai.networks.nets import MaskedAutoEncoderViT

    class VisibleMAE(MaskedAutoEncoderViT):
        """MONAI's masked autoencoder with the visible patches given (``keep``: (B, K) indices), not drawn
        from the global random state; returns every patch's prediction, (B, N, pixels per patch)."""

        def forward(self, x, keep):
            x = self.patch_embedding(x)
            rows = torch.arange(x.shape[0], device=x.device).unsqueeze(-1)
            n = x.shape[1]
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x[rows, keep]), dim=1)
            x = self.decoder_embed(self.blocks(x))
            tokens = self.mask_tokens.repeat(x.shape[0], n, 1)
            tokens[rows, keep] = x[:, 1:, :]
            x = torch.cat([x[:, :1, :], tokens + self.decoder_pos_embedding], dim=1)
            return self.decoder_pred(self.decoder_blocks(x))[:, 1:, :]

    return VisibleMAE


def patchify(x: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """(B, 1, H, W) -> (B, N, p0 * p1), patches in row-major order (the ViT's token order)."""
    b, _, h, w = x.shape
    x = x.reshape(b, h // patch[0], patch[0], w // patch[1], patch[1])
    return x.permute(0, 1, 3, 2, 4).reshape(b, -1, patch[0] * patch[1])


def unpatchify(p: torch.Tensor, patch: tuple[int, int], shape: tuple[int, int]) -> torch.Tensor:
    b = p.shape[0]
    h, w = shape[0] // patch[0], shape[1] // patch[1]
    return p.reshape(b, h, w, patch[0], patch[1]).permute(0, 1, 3, 2, 4).reshape(b, 1, *shape)


def hidden_count(n: int, ratio: float) -> int:
    return n - int((1 - ratio) * n)  # as MONAI keeps int((1 - ratio) n) patches


def inference_masks(n: int, ratio: float, count: int, generator: torch.Generator) -> torch.Tensor:
    """(count, n) bool, True where a mask hides a patch: windows of a random permutation of the
    patches, starting every n / count patches, each as long as training hid; together they hide every
    patch (ValueError when the windows are too short to meet)."""
    hide = hidden_count(n, ratio)
    if hide < -(-n // count):
        raise ValueError(f"{count} masks hiding {hide} of {n} patches each cannot cover every patch")
    order = torch.randperm(n, generator=generator)
    masks = torch.zeros((count, n), dtype=torch.bool)
    for k in range(count):
        start = (k * n) // count
        masks[k, order[(start + torch.arange(hide)) % n]] = True
    return masks


class MaskedAutoEncoderModel(SliceModel):
    family = "mae"

    @staticmethod
    def make_network(arch, channels_in):
        single_slice(channels_in)
        shape, patch = arch["slice_shape"], arch["patch_size"]
        if any(s % p for s, p in zip(shape, patch)):
            raise ValueError("slice_shape must divide by patch_size")
        n = (shape[0] // patch[0]) * (shape[1] // patch[1])
        if n > MAX_PATCHES:
            raise ValueError(f"{n} patches per slice exceed {MAX_PATCHES}")
        inference_masks(n, arch["masking_ratio"], arch.get("masks", 4), torch.Generator())  # refuse masks that miss patches
        return _mae_class()(
            in_channels=1, img_size=shape, patch_size=patch, spatial_dims=2, masking_ratio=arch["masking_ratio"],
            hidden_size=arch["hidden_size"], mlp_dim=arch["mlp_dim"], num_layers=arch["num_layers"],
            num_heads=arch["num_heads"], decoder_hidden_size=arch["decoder_hidden_size"],
            decoder_mlp_dim=arch["decoder_mlp_dim"], decoder_num_layers=arch["decoder_num_layers"],
            decoder_num_heads=arch["decoder_num_heads"])

    @staticmethod
    def objective(recipe, device):
        arch = recipe["architecture"]
        patch = tuple(arch["patch_size"])

        def loss(model, batch, generator):
            target = patchify(batch.target, patch)
            b, n, _ = target.shape
            order = torch.rand((b, n), generator=generator).argsort(dim=1).to(target.device)
            keep = order[:, :n - hidden_count(n, arch["masking_ratio"])]
            hidden = torch.ones((b, n), dtype=torch.bool, device=target.device)
            hidden[torch.arange(b, device=target.device).unsqueeze(-1), keep] = False
            return F.l1_loss(model(batch.input, keep)[hidden], target[hidden])
        return loss

    def reconstruct_batch(self, x, t_int, generator):
        arch = self.card.architecture
        patch = tuple(arch["patch_size"])
        n = x.shape[-2] // patch[0] * (x.shape[-1] // patch[1])
        masks = inference_masks(n, arch["masking_ratio"], arch.get("masks", 4),
                                torch.Generator().manual_seed(int(torch.randint(2**31 - 1, (1,), generator=generator,
                                                                                device=generator.device))))
        total = torch.zeros((x.shape[0], n, patch[0] * patch[1]), device=x.device)
        for k, hidden in enumerate(masks):
            keep = torch.nonzero(~hidden).flatten().to(x.device).expand(x.shape[0], -1)
            with torch.inference_mode():
                total[:, hidden.to(x.device)] += self.network(x, keep)[:, hidden.to(x.device)]
            yield Step(f"mask {k + 1} of {len(masks)}", (k + 1) / len(masks))
        return unpatchify(total / masks.sum(dim=0).to(x.device)[None, :, None], patch, tuple(x.shape[-2:]))
