"""``cldm``: conditional latent diffusion (the conditional LDM of Lawry Aguila et al.): an ``ldm`` whose
UNet also sees the latent z_p of the pseudo-pathological slice, concatenated to the noisy healthy
latent z_t as extra input channels. Trained on healthy slices of which ``training.pseudo_prob`` carry
a fluid-driven pseudo-pathology (the cached copies: the condition is ``Batch.input``'s latent, the
diffusion target ``Batch.target``'s); at inference the scan is both z_0 and z_p. Everything else
(first stage, training, partial noising to ``t_int``, DDIM, decoding) is :mod:`.ldm`'s."""
from __future__ import annotations

from .ldm import LatentDiffusionModel


class ConditionalLatentDiffusionModel(LatentDiffusionModel):
    family = "cldm"
    condition = "concat"
