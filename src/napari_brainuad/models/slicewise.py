"""What every learned 2D family shares: slice-wise reconstruction over the axial slices (last axis)
of the model grid, in batches, and safetensors loading of the card's network.

A family subclasses :class:`SliceModel` in its own module of :mod:`.families` and gives its
network (:meth:`SliceModel.make_network`), its reconstruction of a batch of slices
(:meth:`SliceModel.reconstruct_batch`) and its training objective (:meth:`SliceModel.objective`).
A card's ``architecture.context`` gives the network that many neighbouring slices on each side as
extra input channels (zeros beyond the grid).
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from typing import Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..progress import Step, Steps, scaled
from .base import AnomalyModel
from .card import MAX_WEIGHTS_BYTES, ModelCard, ModelError, check_regular_file

Objective = Callable[[nn.Module, object, torch.Generator], torch.Tensor]
"""``loss(model, batch, generator)``: a training batch (``training.data.Batch``: ``input``, ``target``,
``mask``, ``lesion``) to a scalar loss; all randomness from ``generator``."""


class TrainStep(ABC):
    """One training step of a family that keeps training-only modules and optimizers of its own.

    fit calls it instead of its default step with the network (as trained: wrapped for data
    parallelism), the batch, the step's generator (all randomness from it), fit's optimizer over the
    network's trainable parameters (its learning rate set by fit) and the step number; it backpropagates
    and steps every optimizer itself and returns the network's loss for the log. Its :meth:`state_dict`
    goes into fit's checkpoints and comes back through :meth:`load_state_dict` on ``--resume``, so a
    resumed run replays the same steps.
    """

    @abstractmethod
    def __call__(self, model: nn.Module, batch, generator: torch.Generator, optimizer: torch.optim.Optimizer,
                 step: int) -> torch.Tensor:
        """Backpropagate and step every optimizer; the network's loss."""

    @abstractmethod
    def state_dict(self) -> dict:
        """What a checkpoint keeps of this step (its modules and optimizers)."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` on ``--resume``."""


class SliceModel(AnomalyModel):
    """A 2D network applied to every axial slice that holds brain, in batches."""

    family = ""
    """The card's ``family`` this class answers to."""
    needs_mask = False
    """True: :meth:`reconstruct_batch` also gets the slices' brain mask (``mask=``, (B, 1, H, W) float)."""
    frozen_prefixes: tuple[str, ...] = ()
    """State-dict key prefixes of a part loaded from another model and frozen in training (a first stage):
    export stores it as it was loaded, whatever the recipe's ``weights_dtype``."""

    def __init__(self, card: ModelCard, device: str = "cpu", network: nn.Module | None = None):
        super().__init__(card, device)
        self.network = (network if network is not None else self.load_network(card)).to(device).eval()
        self.batch_size = int(card.architecture.get("inference_batch", 32))
        self.context = int(card.architecture.get("context", 0))

    @staticmethod
    @abstractmethod
    def make_network(arch: dict, channels_in: int) -> nn.Module:
        """The untrained network of a card's ``architecture`` (``channels_in``: the slice and its context)."""

    @staticmethod
    @abstractmethod
    def objective(recipe: dict, device) -> Objective:
        """The training loss of a recipe (``training/recipes/*.json``)."""

    @classmethod
    def init_training(cls, network: nn.Module, recipe: dict, data=None) -> None:
        """Prepare a fresh network before training (a two-stage family loads and freezes its first stage;
        ``data``, the training slices, when a family derives a constant from them). A resumed run then
        loads its checkpoint over whatever this set."""

    @staticmethod
    def train_step(recipe: dict, device, wrap: Callable[[nn.Module], nn.Module]) -> "TrainStep | None":
        """A family's own optimisation step, for objectives that one optimizer over the network cannot
        drive (an autoencoder with its adversarial discriminator); None: fit's single-optimizer step
        on :meth:`objective`. ``wrap`` is what fit does to a trained module (data parallel under torchrun)."""
        return None

    @classmethod
    def build_network(cls, arch: dict) -> nn.Module:
        """:meth:`make_network`, with a bad architecture raised as one :class:`ModelError`."""
        try:
            return cls.make_network(dict(arch), 2 * int(arch.get("context", 0)) + 1)  # the slice and its neighbours
        except (KeyError, TypeError, ValueError, AssertionError) as exc:
            raise ModelError(f"architecture of family '{cls.family}' is invalid ({exc}).") from None

    @classmethod
    def load_network(cls, card: ModelCard) -> nn.Module:
        """Build the card's network and load its safetensors weights (strict: every tensor must match)."""
        network = cls.build_network(card.architecture)
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

    def slice_batches(self, image: np.ndarray, mask: np.ndarray) -> list[tuple[np.ndarray, torch.Tensor, dict]]:
        """The inference batches over the brain's axial slices: (slice indices, (B, C, H, W) slabs with the
        centre slice at channel ``context``, and the ``mask=`` keyword when :attr:`needs_mask`)."""
        slices = np.flatnonzero(mask.any(axis=(0, 1)))
        padded = np.pad(image, ((0, 0), (0, 0), (self.context, self.context)))
        offsets = np.arange(2 * self.context + 1)
        batches = []
        for i in range(0, len(slices), self.batch_size):
            index = slices[i:i + self.batch_size]
            slabs = padded[:, :, index[:, None] + offsets]  # (X, Y, B, C)
            x = torch.from_numpy(np.ascontiguousarray(slabs.transpose(2, 3, 0, 1), dtype=np.float32)).to(self.device)
            extra = {}
            if self.needs_mask:
                m = mask[:, :, index].transpose(2, 0, 1)[:, None]
                extra["mask"] = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32)).to(self.device)
            batches.append((index, x, extra))
        return batches

    def iter_reconstruct(self, image, mask, t_int=None, seed=0) -> Steps[np.ndarray]:
        out = np.zeros_like(image, dtype=np.float32)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        batches = self.slice_batches(image, mask)
        for n, (index, x, extra) in enumerate(batches):
            y = yield from scaled(self.reconstruct_batch(x, t_int, generator, **extra), n / len(batches),
                                  (n + 1) / len(batches))
            put_slices(out, index, y)
        return np.where(mask, out, 0.0).astype(np.float32)

    def reconstruct_batch(self, x: torch.Tensor, t_int, generator) -> Steps[torch.Tensor]:
        """Reconstruct (B, 1, H, W) slices in [0, 1]; yield progress within the batch."""
        with torch.inference_mode():
            y = self.network(x)
        yield Step(self.card.family, 1.0)
        return y


def put_slices(volume: np.ndarray, index: np.ndarray, y: torch.Tensor) -> None:
    """Write (B, 1, H, W) reconstructed slices, clamped to [0, 1], into ``volume``'s axial slices ``index``."""
    volume[:, :, index] = y[:, 0].clamp(0, 1).cpu().numpy().transpose(1, 2, 0)
