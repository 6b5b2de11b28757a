"""Pseudo-pathology: healthy training volumes with synthetic anomalies, precomputed once per scan.

Each pseudo-pathological copy of a healthy volume carries one anomaly drawn from
:mod:`napari_brainuad.synthetic`, in the proportions of :data:`SOURCES`: fluid-driven anomaly
randomization (Liu et al. 2025) started from a real expert MS lesion mask (mirrored left-right at
random) or from random blobs, or a box / ellipsoid shape (Malé et al.). Intensity change as in the
seed: ``delta ~ N(-mu_w / 2, (mu_w / 2)^2)`` per lesion, sign flipped 20 % of the time.
The real lesion masks come from ``../shared/data/lesion-masks/mslub-mni`` (1 mm MNI152), resampled
to the model grid by world coordinates (both are MNI space).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_brainuad.io import read_volume
from napari_brainuad.synthetic import fluid_anomaly, random_blobs, shape_anomaly
from napari_brainuad.template import Template

SOURCES = {"lesion mask": 0.4, "blobs": 0.4, "shape": 0.2}
"""Kind of anomaly -> probability."""
BLOB_FRACTION = (0.002, 0.04)
"""Random blobs cover this fraction of the brain: small lesions up to large tumours (about 3-60 ml)."""


@dataclass
class PseudoPathology:
    """One anomalous copy: image on the model grid and the bool lesion mask; ``kind`` names the source."""

    image: np.ndarray
    lesion: np.ndarray
    kind: str


def lesion_masks_on_grid(folder: Path, template: Template, min_voxels: int = 5) -> list[np.ndarray]:
    """Every ``*_lesions.nii.gz`` in ``folder`` resampled onto ``template``'s grid (bool), by world mm.

    Both are MNI152 spaces, so the voxel-to-world affines align them; masks left with fewer than
    ``min_voxels`` voxels on the 2 mm grid are dropped.
    """
    masks = []
    for path in sorted(Path(folder).glob("*_lesions.nii*")):
        vol = read_volume(path)
        # template voxel -> world -> source voxel
        to_source = np.linalg.inv(vol.affine) @ template.affine
        frac = ndimage.affine_transform((vol.data > 0).astype(np.float32), to_source[:3, :3], to_source[:3, 3],
                                        output_shape=template.shape, order=1)
        mask = frac > 0.3
        if mask.sum() >= min_voxels:
            masks.append(mask)
    return masks


def pseudo_pathology(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                     lesion_masks: list[np.ndarray],
                     blob_fraction: tuple[float, float] = BLOB_FRACTION) -> PseudoPathology:
    """One anomalous copy of a healthy ``(X, Y, Z)`` volume; redrawn until the lesion is non-empty.
    ``blob_fraction``: the range of the brain's fraction random blobs cover."""
    kinds = [k for k in SOURCES if lesion_masks or k != "lesion mask"]
    p = np.array([SOURCES[k] for k in kinds])
    for _ in range(20):
        kind = kinds[rng.choice(len(kinds), p=p / p.sum())]
        if kind == "shape":
            out, lesion = shape_anomaly(image, mask, rng, ("rectangle", "ellipse")[rng.integers(2)])
        else:
            if kind == "blobs":
                p0 = random_blobs(mask, rng, blob_fraction)
            else:
                p0 = lesion_masks[rng.integers(len(lesion_masks))]
                p0 = (p0[::-1] if rng.random() < 0.5 else p0) & mask
            out, _, lesion = fluid_anomaly(image, mask, rng, p0=p0.astype(np.float32))
        lesion &= mask
        if lesion.sum() >= 5:
            return PseudoPathology(out.astype(np.float32), lesion, kind)
    raise RuntimeError("could not place a synthetic anomaly in this brain")
