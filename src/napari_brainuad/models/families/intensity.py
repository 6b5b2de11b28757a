"""``intensity``: the intensity-deviation baseline (Meissen et al. 2021): the honest floor, no weights.

Lesions are bright on FLAIR/T2 and dark on T1. The "pseudo-healthy" image clips every voxel
that deviates from the brain's median intensity in the lesion direction back to that median,
so the residual is how far a voxel lies beyond the typical brain intensity, in the direction
the card's ``architecture.polarity`` names (``"bright"`` or ``"dark"``).
"""
from __future__ import annotations

import numpy as np

from ...progress import Step, Steps
from ..base import AnomalyModel


class IntensityBaseline(AnomalyModel):
    """Scores voxels by how far they are brighter (or darker) than the brain median."""

    family = "intensity"

    def iter_reconstruct(self, image, mask, t_int=None, seed=0) -> Steps[np.ndarray]:
        median = float(np.median(image[mask]))
        if self.card.architecture.get("polarity", "bright") == "bright":
            healthy = np.minimum(image, median)
        else:
            healthy = np.maximum(image, median)
        yield Step("intensity baseline", 1.0)
        return np.where(mask, healthy, 0.0).astype(np.float32)
