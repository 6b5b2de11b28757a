"""Model families, one home each: a family's network, its reconstruction at inference and its
training objective live together in one module here (see README.md). The card's ``family`` names it."""
from __future__ import annotations

from ..base import AnomalyModel
from ..card import ModelError
from ..slicewise import SliceModel
from .ae import AutoEncoderModel
from .anatomy import AnatomyModel
from .cldm import ConditionalLatentDiffusionModel
from .dae import DenoisingModel
from .ddpm import DDPMModel
from .intensity import IntensityBaseline
from .ldm import LatentDiffusionModel, LatentDiffusionTAvgModel
from .ldm_ae import LatentAutoencoderModel
from .mae import MaskedAutoEncoderModel
from .pcldm import PseudoPathologyConditionedModel
from .rae import ReversedAutoEncoderModel
from .restore import RestorationModel
from .vae import VAEModel
from .vqvae import VQVAEModel
from .vqvae_tr import VQVAETransformerModel

FAMILIES: dict[str, type[AnomalyModel]] = {cls.family: cls for cls in (
    IntensityBaseline, AutoEncoderModel, VAEModel, DenoisingModel, RestorationModel, DDPMModel, VQVAEModel,
    VQVAETransformerModel, ReversedAutoEncoderModel, MaskedAutoEncoderModel, AnatomyModel, LatentAutoencoderModel,
    LatentDiffusionModel, LatentDiffusionTAvgModel, ConditionalLatentDiffusionModel, PseudoPathologyConditionedModel)}
"""Family name (the card's ``family``) -> model class."""


def family_class(family: str) -> type[AnomalyModel]:
    """The class of a family; :class:`ModelError` for an unknown one."""
    if family not in FAMILIES:
        raise ModelError(f"unknown model family '{family}' (known: {', '.join(FAMILIES)}).")
    return FAMILIES[family]


def learned_family(family: str) -> type[SliceModel]:
    """The class of a family with a network and a training objective (every family but ``intensity``)."""
    cls = family_class(family)
    if not issubclass(cls, SliceModel):
        raise ModelError(f"family '{family}' has no network to build or train.")
    return cls


def build_network(family: str, arch: dict):
    """The untrained network of a learned family's card ``architecture`` (weights come from safetensors)."""
    return learned_family(family).build_network(arch)
