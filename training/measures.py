"""Per-volume measures of the benchmark that are not plain detection metrics (those are in
:mod:`napari_brainuad.metrics`): flagged volume, agreement of a rescan pair's masks, and how much of a
synthetic anomaly a reconstruction keeps."""
from __future__ import annotations

import numpy as np

AGREEMENT = ["rescan Dice", "flagged 1 in 2", "flagged 2 in 1"]
"""The keys of :func:`rescan_agreement`."""


def flagged_ml(flagged: np.ndarray, affine: np.ndarray) -> float:
    """Volume (ml) of the flagged voxels of a grid whose voxel-to-world ``affine`` is in mm."""
    return int(np.count_nonzero(flagged)) * abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0


def rescan_agreement(first: np.ndarray, second: np.ndarray) -> dict[str, float]:
    """Dice of two flagged masks of one brain, and the share of each one's flagged voxels flagged in the other.

    Both empty: full agreement (all 1). Only one empty: none (all 0).
    """
    a, b = np.asarray(first, bool), np.asarray(second, bool)
    na, nb, both = int(a.sum()), int(b.sum()), int(np.logical_and(a, b).sum())
    if na == 0 or nb == 0:
        return dict.fromkeys(AGREEMENT, float(na == nb))
    return dict(zip(AGREEMENT, (2 * both / (na + nb), both / na, both / nb)))


def lesion_kept(reconstruction: np.ndarray, image: np.ndarray, healthy: np.ndarray, lesion: np.ndarray) -> float:
    """How much of a synthetic anomaly the reconstruction keeps, over its lesion voxels: the least-squares
    coefficient of (reconstruction - healthy scan) on (image - healthy scan). 0: the anomaly is removed (or
    the reconstruction errs in ways unrelated to it, as blur does); 1: copied into the "pseudo-healthy" image."""
    anomaly = (image - healthy)[lesion].astype(np.float64)
    power = float(anomaly @ anomaly)
    return float((reconstruction - healthy)[lesion].astype(np.float64) @ anomaly / power) if power > 0 else float("nan")


def anomaly_energy(image: np.ndarray, healthy: np.ndarray, lesion: np.ndarray) -> float:
    """Sum of squares of a synthetic anomaly (image - healthy scan) over its lesion voxels (intensity units²)."""
    anomaly = (image - healthy)[lesion].astype(np.float64)
    return float(anomaly @ anomaly)


def pooled_kept(rows: list[dict]) -> float:
    """:func:`lesion_kept` of several anomalies at once: the least-squares coefficient over all their lesion
    voxels, i.e. each row's coefficient weighted by its ``anomaly energy``. Unlike the mean of the rows'
    coefficients, a faint small anomaly (an ill-conditioned coefficient) cannot dominate it. NaN without any."""
    kept = [(r["lesion kept"], r["anomaly energy"]) for r in rows
            if "lesion kept" in r and np.isfinite(r["lesion kept"]) and r["anomaly energy"] > 0]
    return sum(k * e for k, e in kept) / sum(e for _, e in kept) if kept else float("nan")
