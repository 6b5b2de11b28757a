"""The one call every model family answers: reconstruct a pseudo-healthy image."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..progress import Steps, run
from .card import ModelCard


class AnomalyModel(ABC):
    """A model trained on healthy brains, working on the template grid of its card.

    Subclasses implement :meth:`iter_reconstruct`; ``image`` is (X, Y, Z) float32 in [0, 1]
    on the card's grid, zero outside the bool brain ``mask``.
    """

    def __init__(self, card: ModelCard, device: str = "cpu"):
        self.card = card
        self.device = device

    @property
    def name(self) -> str:
        return self.card.name

    @abstractmethod
    def iter_reconstruct(self, image: np.ndarray, mask: np.ndarray, t_int: int | None = None,
                         seed: int = 0) -> Steps[np.ndarray]:
        """Yield progress steps and return the (X, Y, Z) float32 pseudo-healthy image."""

    def reconstruct(self, image: np.ndarray, mask: np.ndarray, t_int: int | None = None, seed: int = 0) -> np.ndarray:
        return run(self.iter_reconstruct(image, mask, t_int=t_int, seed=seed))
