"""The one call every model family answers: reconstruct a pseudo-healthy image."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..progress import Steps, run
from ..scoring import NormativeStats, ScoringConfig, load_normative, residual_map, score_residual
from .card import ModelCard, ModelError


class AnomalyModel(ABC):
    """A model trained on healthy brains, working on the template grid of its card.

    Subclasses implement :meth:`iter_reconstruct`; ``image`` is (X, Y, Z) float32 in [0, 1]
    on the card's grid, zero outside the bool brain ``mask``.
    """

    def __init__(self, card: ModelCard, device: str = "cpu"):
        self.card = card
        self.device = device
        self._normative: NormativeStats | None = None

    @property
    def name(self) -> str:
        return self.card.name

    @abstractmethod
    def iter_reconstruct(self, image: np.ndarray, mask: np.ndarray, t_int: int | None = None,
                         seed: int = 0) -> Steps[np.ndarray]:
        """Yield progress steps and return the (X, Y, Z) float32 pseudo-healthy image."""

    def reconstruct(self, image: np.ndarray, mask: np.ndarray, t_int: int | None = None, seed: int = 0) -> np.ndarray:
        return run(self.iter_reconstruct(image, mask, t_int=t_int, seed=seed))

    @property
    def normative(self) -> NormativeStats | None:
        """Healthy residual statistics for normative scoring: set directly, or read once from the
        file the card names (:class:`ModelError` naming it when missing or invalid); None when neither."""
        if self._normative is None and self.card.normative_path is not None:
            self._normative = load_normative(self.card.normative_path, tuple(self.card.grid_shape))
        return self._normative

    @normative.setter
    def normative(self, stats: NormativeStats | None) -> None:
        self._normative = stats

    def scoring_for(self, image: np.ndarray, mask: np.ndarray, config: ScoringConfig | None = None,
                    contrast: str | None = None) -> ScoringConfig:
        """``config`` (the card's scoring when None) with an ``"auto"`` polarity settled for this scan: by
        ``contrast`` when given, else by the contrast :func:`~napari_brainuad.quality.guess_contrast` reads
        from ``image`` (X, Y, Z on the card's grid, brain ``mask``)."""
        config = config or ScoringConfig.from_card(self.card.scoring)
        if config.polarity == "auto" and contrast is None:
            from ..quality import scan_contrast

            contrast = scan_contrast(image, mask, self.card.template_grid())
        return config.for_contrast(contrast) if contrast is not None else config

    def anomaly_map(self, image: np.ndarray, reconstruction: np.ndarray, mask: np.ndarray,
                    config: ScoringConfig | None = None, contrast: str | None = None) -> np.ndarray:
        """The anomaly map of ``image`` against its ``reconstruction`` with this model's scoring.

        ``config`` overrides the card's scoring switches; arrays are (X, Y, Z) on the card's grid. An
        ``"auto"`` polarity is settled by :meth:`scoring_for` (``contrast``, else the scan's own).
        """
        config = self.scoring_for(image, mask, config, contrast)
        normative = self.normative if config.normative else None
        if config.normative and normative is None:
            raise ModelError(f"model {self.name}: normative scoring needs the healthy statistics file its card names "
                             "in 'normative'; run 'python -m training calibrate' on it.")
        return score_residual(self.residual_map(image, reconstruction, mask, config), mask, config,
                              normative=normative)

    def residual_map(self, image: np.ndarray, reconstruction: np.ndarray, mask: np.ndarray,
                     config: ScoringConfig) -> np.ndarray:
        """The residual step of the anomaly map (shift-tolerant, LPIPS-weighted as ``config`` says), before
        normative scoring, min-max and filtering; normative statistics are fitted on this."""
        return residual_map(image, reconstruction, mask, config, device=self.device)
