"""From a reconstruction to an anomaly map, a mask and findings.

The anomaly map follows the seed pipeline, each step a switch (see :class:`ScoringConfig`):
shift-tolerant residual, optionally weighted by the LPIPS map (the conditional-diffusion seed),
optional min-max normalisation, median filter, eroded brain mask.
Sizes are in voxels of the grid the arrays live on (the 2 mm model grid for bundled models:
the seed's median size 5 and 6 erosions at 1 mm become 3 and 3).
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class ScoringConfig:
    """Switches of the anomaly-map pipeline.

    shift : residual at each voxel is the smallest over shifts of the reconstruction by up to
        this many voxels along each axis (0 = plain absolute residual).
    minmax : rescale the map to [0, 1] inside the brain (per volume).
    median_size : side of the cubic median filter (0 or 1 = off).
    erode : binary erosions of the brain mask before masking the map (0 = off).
    lpips : multiply the residual by the LPIPS (AlexNet) map of each axial slice
        (:func:`napari_brainuad.lpips_offline.lpips_map`; bundled weights, offline).
    """

    shift: int = 1
    minmax: bool = False
    median_size: int = 3
    erode: int = 3
    lpips: bool = False

    @classmethod
    def from_card(cls, scoring: dict) -> "ScoringConfig":
        return cls(**scoring)

    def as_dict(self) -> dict:
        return asdict(self)


def shift_tolerant_residual(image: np.ndarray, reconstruction: np.ndarray, shift: int = 1) -> np.ndarray:
    """Voxel-wise minimum of |image - reconstruction shifted by d| over all d in [-shift, shift]^ndim."""
    residual = np.abs(image - reconstruction)
    if shift <= 0:
        return residual.astype(np.float32)
    padded = np.pad(reconstruction, shift, mode="edge")
    size = image.shape
    for offset in itertools.product(range(2 * shift + 1), repeat=image.ndim):
        window = padded[tuple(slice(o, o + n) for o, n in zip(offset, size))]
        np.minimum(residual, np.abs(image - window), out=residual)
    return residual.astype(np.float32)


def anomaly_map(image: np.ndarray, reconstruction: np.ndarray, mask: np.ndarray,
                config: ScoringConfig = ScoringConfig(), *, device="cpu") -> np.ndarray:
    """Anomaly score per voxel (float32, same shape), zero outside the eroded brain mask.

    ``device`` runs the LPIPS network when ``config.lpips`` is on (images in [0, 1]).
    """
    score = shift_tolerant_residual(image, reconstruction, config.shift)
    if config.lpips:
        from .lpips_offline import lpips_map  # torch, only when asked for

        score = score * lpips_map(image, reconstruction, mask, device)
    brain = ndimage.binary_erosion(mask, iterations=config.erode) if config.erode > 0 else mask
    score = np.where(brain, score, 0.0)
    if config.minmax and brain.any():
        lo, hi = score[brain].min(), score[brain].max()
        score = np.where(brain, (score - lo) / max(hi - lo, 1e-8), 0.0)
    if config.median_size > 1:
        score = ndimage.median_filter(score, size=config.median_size)
    return np.where(brain, score, 0.0).astype(np.float32)


def calibrate_threshold(maps: list[np.ndarray], masks: list[np.ndarray], max_flagged: float = 0.005) -> float:
    """Smallest threshold that flags at most ``max_flagged`` of the pooled healthy brain voxels."""
    scores = np.concatenate([m[k] for m, k in zip(maps, masks)])
    return float(np.quantile(scores, 1.0 - max_flagged, method="higher"))


@dataclass(frozen=True)
class Finding:
    """One connected component of the thresholded map."""

    label: int
    n_voxels: int
    volume_ml: float
    peak_score: float
    mean_score: float
    centroid_mm: tuple[float, float, float]


def findings(score: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, list[Finding]]:
    """Label the connected components (26-neighbourhood) of ``mask``; largest first.

    Returns the (X, Y, Z) int32 label image (1 = largest) and one :class:`Finding` per label,
    with volumes in ml and centroids in world millimetres from ``affine``. Statistics are
    gathered over the masked voxels only, so the cost follows the mask, not the volume.
    """
    # Work in the arrays' memory order (nibabel and SimpleITK give Fortran order): flat views, no
    # full-size copies of large volumes.
    order = "F" if mask.flags.f_contiguous and not mask.flags.c_contiguous else "C"
    labels = np.zeros(mask.shape, np.int32, order=order)
    n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool), output=labels)
    if n == 0:
        return labels, []
    flat_labels = labels.ravel(order)
    flat = np.flatnonzero(flat_labels)
    lab = flat_labels[flat]
    sizes = np.bincount(lab, minlength=n + 1)[1:]
    order_by_size = np.argsort(-sizes, kind="stable")
    relabel = np.zeros(n + 1, np.int32)
    relabel[order_by_size + 1] = np.arange(1, n + 1)
    lab = relabel[lab]
    flat_labels[flat] = lab
    sizes = sizes[order_by_size]
    values = np.asarray(score).ravel(order)[flat]
    means = np.bincount(lab, weights=values, minlength=n + 1)[1:] / sizes
    peaks = np.full(n + 1, -np.inf)
    np.maximum.at(peaks, lab, values)
    coords = np.stack(np.unravel_index(flat, mask.shape, order=order), axis=1).astype(np.float64)
    centres = np.stack([np.bincount(lab, weights=coords[:, d], minlength=n + 1)[1:] for d in range(3)], 1)
    centres /= sizes[:, None]
    world = centres @ affine[:3, :3].T + affine[:3, 3]
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    return labels, [
        Finding(i + 1, int(s), float(s * voxel_ml), float(p), float(m), tuple(float(c) for c in w))
        for i, (s, p, m, w) in enumerate(zip(sizes, peaks[1:], means, world))
    ]
