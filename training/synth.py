"""Any contrast from a label map (SynthSeg-style), synthetic lesions of any intensity, and the training
slices of the any-contrast recipes (``anatomy-any``, ``restore-any``).

The generator (Billot et al., SynthSeg, 2023) renders a brain from its labels: a random intensity per
label, a little texture, partial-volume blur, a multiplicative bias field, then the acquisition (blur,
a coarser resolution along one axis, noise). Intensities are drawn per tissue (CSF, grey, white matter)
with a small jitter per anatomical label, so every ordering of the three tissues (T1-, T2-, FLAIR-,
PD-like and others) comes out, or, on a share of draws, fully at random per label as in SynthSeg.
Plain numpy and scipy on 2D slices or 3D volumes; every function takes a seeded ``rng``.

:class:`SynthData` draws the training slices of a recipe with ``training.synth_prob`` from site caches:
synthetic contrasts of the labelled scans (OASIS labels cached by ``prepare``) and the real T1 scans of
every site, each with, at random, a synthetic lesion (:mod:`napari_brainuad.synthetic` fluid-driven blobs) whose
intensity is drawn per sample, so the model learns to remove lesions of any contrast. Each sample
carries its healthy tissue labels where known and the MNI152 tissue priors moved with it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from napari_brainuad.synthetic import fluid_pathology, random_blobs, smooth_noise
from napari_brainuad.template import MNI_SHAPE, mni152_tissue_priors

from .data import Batch, axial_slab, cached_split

TISSUES = ("CSF", "GM", "WM")
"""Tissue classes of the ``*_tissues`` maps, labels 1, 2, 3 (0: outside the brain)."""
CONTRASTS = {  # name: (CSF, GM, WM) mean intensity ranges, and the range of a lesion's intensity
    "T1-like": (((0.05, 0.2), (0.45, 0.55), (0.75, 0.9)), (0.1, 0.35)),
    "T2-like": (((0.85, 1.0), (0.5, 0.6), (0.3, 0.4)), (0.7, 0.9)),
    "FLAIR-like": (((0.02, 0.12), (0.5, 0.6), (0.35, 0.45)), (0.8, 1.0)),
}
"""Fixed contrast families for evaluation (:func:`contrast_image` with ``means``): tissue means and the
intensity of a lesion in that contrast (dark on T1, bright on T2 and FLAIR, as MS lesions and oedema)."""


def _rng(rng) -> np.random.Generator:
    return np.random.default_rng(rng)


def _normalise(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Percentiles 0.5-99.5 inside the mask to [0, 1], clipped, zero outside (as :mod:`preprocess` does)."""
    values = image[mask]
    if values.size == 0:
        return np.zeros_like(image, dtype=np.float32)
    lo, hi = np.percentile(values, [0.5, 99.5])
    out = np.clip((image - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return (out * mask).astype(np.float32)


def tissue_means(rng: np.random.Generator, means=None) -> np.ndarray:
    """(3,) CSF, GM, WM mean intensities: uniform in [0, 1] each (any ordering), or in the given ranges."""
    if means is None:
        return rng.uniform(0.0, 1.0, 3)
    return np.array([rng.uniform(*r) for r in means])


def contrast_image(labels: np.ndarray, tissues: np.ndarray, mask: np.ndarray, rng=None, means=None,
                   full_random_prob: float = 0.25, label_jitter: float = 0.08, texture: float = 0.03,
                   blur_sigma: float = 0.8, bias: float = 0.3, lesion: np.ndarray | None = None,
                   lesion_mean: float = 0.0) -> np.ndarray:
    """A healthy brain in a random contrast: the clean image (before the acquisition) of a label map.

    Parameters
    ----------
    labels : int anatomical labels (any values, 0 outside the brain), 2D or 3D.
    tissues : int tissue of each voxel (1 CSF, 2 GM, 3 WM; 0 or other values: background), same shape.
    mask : bool brain mask, same shape.
    means : (CSF, GM, WM) ranges of the tissue means (:data:`CONTRASTS`); random in [0, 1] when None,
        and then, with probability ``full_random_prob``, every label gets its own uniform intensity.
    label_jitter : at most this standard deviation of each label's offset from its tissue mean.
    texture : at most this standard deviation of the voxel noise within a label.
    blur_sigma : at most this Gaussian sigma (voxels) of partial-volume blur.
    bias : at most this amplitude of the log bias field (smooth noise over 16-32 voxels).
    lesion : optional lesion probability in [0, 1] (same shape): the tissue is replaced by ``lesion_mean``
        (on the scale of ``means``) before texture, blur, bias and normalisation, so a lesion keeps its
        place among the tissues (bright on FLAIR, dark on T1) whatever the normalisation does.

    Returns float32 in [0, 1] (percentiles 0.5-99.5 inside the brain), zero outside ``mask``.
    """
    rng = _rng(rng)
    labels = np.asarray(labels).astype(np.int64)
    mask = np.asarray(mask, bool)
    if labels.shape != mask.shape or np.shape(tissues) != mask.shape:
        raise ValueError(f"labels {labels.shape}, tissues {np.shape(tissues)} and mask {mask.shape} differ in shape")
    if labels.min() < 0:
        raise ValueError("labels must be non-negative integers")
    n = int(labels.max()) + 1
    if means is None and rng.random() < full_random_prob:
        lookup = rng.uniform(0.0, 1.0, n)  # SynthSeg: one intensity per label
        image = lookup[labels]
    else:
        mu = tissue_means(rng, means)
        per_tissue = np.concatenate([[0.0], mu])
        tissue = np.clip(np.asarray(tissues).astype(np.int64), 0, 3)
        jitter = rng.normal(0.0, rng.uniform(0.0, label_jitter), n)
        image = per_tissue[tissue] + jitter[labels] * (tissue > 0)
        # voxels of the brain without a tissue (rare label gaps) take the nearest tissue's value
        gap = mask & (tissue == 0)
        if gap.any() and (mask & (tissue > 0)).any():
            idx = ndimage.distance_transform_edt(~(mask & (tissue > 0)), return_distances=False, return_indices=True)
            image[gap] = image[tuple(i[gap] for i in idx)]
    if lesion is not None:
        image = (1.0 - lesion) * image + lesion * lesion_mean
    image = image + rng.normal(0.0, rng.uniform(0.0, texture), image.shape)
    image = np.where(mask, image, 0.0)
    sigma = rng.uniform(0.0, blur_sigma)
    if sigma > 0.05:
        image = ndimage.gaussian_filter(image, sigma)
    scales = [min(32.0, max(mask.shape)), 16.0]
    field = smooth_noise(mask.shape, rng, scales_vox=scales)
    field = field / max(float(np.abs(field).max()), 1e-6)
    image = image * np.exp(rng.uniform(0.0, bias) * field)
    return _normalise(image, mask)


def degrade(image: np.ndarray, mask: np.ndarray, rng=None, blur_prob: float = 0.3, lowres_prob: float = 0.3,
            noise_std: float = 0.05) -> np.ndarray:
    """The acquisition: random blur, a coarser resolution along one axis (1.2-3x) and Gaussian noise."""
    rng = _rng(rng)
    mask = np.asarray(mask, bool)
    out = np.asarray(image, np.float64)
    if rng.random() < blur_prob:
        out = ndimage.gaussian_filter(out, rng.uniform(0.3, 1.2))
    if rng.random() < lowres_prob:
        axis, factor = int(rng.integers(out.ndim)), rng.uniform(1.2, 3.0)
        zoom = [1.0] * out.ndim
        zoom[axis] = 1.0 / factor
        small = ndimage.zoom(out, zoom, order=1)
        out = ndimage.zoom(small, [a / b for a, b in zip(out.shape, small.shape)], order=1)
        out = out[tuple(slice(0, n) for n in image.shape)]
        if out.shape != np.shape(image):  # zoom rounding: pad with edge values
            out = np.pad(out, [(0, a - b) for a, b in zip(np.shape(image), out.shape)], mode="edge")
    out = out + rng.normal(0.0, rng.uniform(0.0, noise_std), out.shape)
    return (np.clip(out, 0.0, 1.0) * mask).astype(np.float32)


def add_lesion(image: np.ndarray, mask: np.ndarray, rng=None, intensity: float | tuple[float, float] = (0.0, 1.0),
               fraction: tuple[float, float] | None = None, context: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One fluid-driven lesion (random blobs advected and diffused, Liu et al. 2025) of one intensity.

    ``image`` and ``mask`` are one slice (X, Y), or a slab (2 * context + 1, X, Y) whose lesion is drawn on
    the centre slice and continued into the neighbours (:func:`lesion_through_slices`).
    The lesion replaces the tissue where its probability ``P`` is high: ``(1 - P) x + P v`` with ``v``
    drawn from ``intensity`` (a range; a number fixes it), plus a little texture. Returns the image
    (float32, [0, 1]) and the lesion mask ``P > 0.5`` (may be empty on a slice where the blob dissolved).
    """
    rng = _rng(rng)
    mask = np.asarray(mask, bool)
    v = float(rng.uniform(*intensity)) if isinstance(intensity, tuple) else float(intensity)
    centre = mask[context] if mask.ndim == 3 else mask
    P = fluid_pathology(random_blobs(centre, rng, fraction), centre, rng)
    if mask.ndim == 3:
        P = lesion_through_slices(P, context, rng) * mask
    return paint_lesion(image, P, mask, v, rng), (P > 0.5) & mask


def paint_lesion(image: np.ndarray, P: np.ndarray, mask: np.ndarray, intensity: float, rng=None,
                 texture: float = 0.02) -> np.ndarray:
    """``(1 - P) x + P v``: the lesion probability ``P`` replaces the tissue by intensity ``v`` (plus texture)."""
    rng = _rng(rng)
    lesion = np.clip(intensity + rng.normal(0.0, texture, np.shape(image)), 0.0, 1.0)
    out = (1.0 - P) * np.asarray(image) + P * lesion
    return (out * np.asarray(mask, bool)).astype(np.float32)


def lesion_through_slices(P: np.ndarray, context: int, rng=None, half_depth: tuple[float, float] = (0.5, 3.0),
                          ) -> np.ndarray:
    """A 2D lesion ``P`` (X, Y) continued into ``context`` neighbouring slices on each side, as an ellipsoid.

    The lesion's half-depth ``h`` (slices) is drawn from ``half_depth`` and its equator's offset from the
    centre slice uniformly within ``h / 2``; a slice at ``d`` slices from the centre shows the cross-section
    scaled by ``sqrt(1 - ((d - offset) / h)^2)`` relative to the centre's, made by grey-level erosion (smaller)
    or dilation (larger) of ``P`` with a disk, so its texture follows. Returns (2 * context + 1, X, Y)
    float32 with ``P`` itself at index ``context``; no random draw when ``context`` is 0.
    """
    P = np.asarray(P, np.float32)
    if context == 0:
        return P[None]
    rng = _rng(rng)
    h = rng.uniform(*half_depth)
    offset = rng.uniform(-h / 2, h / 2)
    inside = P > 0.5
    radius = float(ndimage.distance_transform_edt(inside).max()) if inside.any() else 0.0

    def scale(d: float) -> float:
        return float(np.sqrt(max(0.0, 1.0 - ((d - offset) / h) ** 2)))

    out = np.zeros((2 * context + 1, *P.shape), np.float32)
    for i, d in enumerate(range(-context, context + 1)):
        if d == 0:
            out[i] = P
            continue
        r = scale(d) / max(scale(0), 1e-6)
        if r == 0.0:
            continue
        step = int(round(radius * abs(1.0 - r)))
        if step == 0:
            out[i] = P
            continue
        yy, xx = np.mgrid[-step:step + 1, -step:step + 1]
        disk = xx ** 2 + yy ** 2 <= step ** 2
        out[i] = (ndimage.grey_erosion if r < 1 else ndimage.grey_dilation)(P, footprint=disk)
    return out


@dataclass
class AnatomyBatch(Batch):
    """A :class:`~training.data.Batch` with what the ``anatomy`` family's objective also needs.

    tissue : (B, 1, H, W) long healthy tissue labels: 0 background, 1 CSF, 2 GM, 3 WM, -1 unknown.
    prior : (B, 3, H, W) MNI152 CSF, GM, WM probabilities moved with the sample (zeros when unknown).
    """

    tissue: torch.Tensor = None
    prior: torch.Tensor = None

    def to(self, device) -> "AnatomyBatch":
        return AnatomyBatch(*(t.to(device) for t in (self.input, self.target, self.mask, self.lesion, self.tissue,
                                                      self.prior)))


class SynthData:
    """Training slices of any contrast from cached volumes, labelled (OASIS) or not (IXI).

    volumes : list of dicts with ``image`` (X, Y, Z) float32 in [0, 1], ``mask`` bool, and optionally
        ``labels`` and ``tissues`` (int, same grid).
    synth_prob : share of samples rendered in a random contrast from labels (when any volume has them).
    prior : (3, X, Y, Z) tissue priors on the volumes' grid, or None.
    lesion_fraction : (low, high) range of the fraction of the slice's brain a synthetic lesion covers,
        or None for :func:`~napari_brainuad.synthetic.random_blobs`' 2D default (0.005, 0.04).
    """

    def __init__(self, volumes: list[dict], synth_prob: float = 0.7, prior: np.ndarray | None = None,
                 min_fraction: float = 0.15, lesion_fraction: tuple[float, float] | None = None):
        self.volumes = volumes
        self.synth_prob = synth_prob
        self.prior = prior
        self.lesion_fraction = None if lesion_fraction is None else tuple(lesion_fraction)
        self.slices, self.labelled = [], []
        for v, vol in enumerate(volumes):
            area = vol["mask"].sum(axis=(0, 1))
            for z in np.flatnonzero(area >= min_fraction * area.max()):
                self.slices.append((v, int(z)))
                if "labels" in vol and "tissues" in vol:
                    self.labelled.append((v, int(z)))
        if not self.slices:
            raise ValueError("no brain slices in the training volumes")
        self.n_volumes: dict[str, int] = {}

    @classmethod
    def from_cache(cls, caches: list[Path] | Path, split: str = "train", synth_prob: float = 0.7,
                   lesion_fraction: tuple[float, float] | None = None) -> "SynthData":
        """Every cached scan of ``split``, with its labels when ``prepare`` cached them (``--labels``)."""
        caches = [caches] if isinstance(caches, (str, Path)) else list(caches)
        volumes, counts = [], {}
        for cache in caches:
            files = cached_split(cache, split)
            counts[Path(cache).name] = len(files)
            for path in files:
                with np.load(path) as z:
                    volumes.append({k: z[k] for k in ("image", "mask", "labels", "tissues") if k in z.files})
        if not volumes:
            raise FileNotFoundError(f"{', '.join(map(str, caches))}: no cached '{split}' scans; "
                                    "run 'python -m training prepare' first.")
        prior = mni152_tissue_priors() if volumes[0]["image"].shape == MNI_SHAPE else None
        data = cls(volumes, synth_prob, prior, lesion_fraction=lesion_fraction)
        data.n_volumes = counts
        return data

    def __len__(self) -> int:
        return len(self.slices)

    def sample(self, seed: int, augment: bool = True, robust: bool = False, lesion_prob: float = 0.5,
               context: int = 0) -> tuple:
        """One training sample (input, target, mask, lesion, tissue, prior) as tensors, all from ``seed``.

        The input has ``2 * context + 1`` channels: the centre slice and its neighbours, rendered in one
        contrast (a slab of the label map), each masked by its own brain mask as at inference; a lesion
        drawn on the centre slice continues into the neighbours (:func:`lesion_through_slices`).
        """
        from . import augment as aug
        from .data import SliceData

        rng = np.random.default_rng(seed)
        synth = bool(self.labelled) and rng.random() < self.synth_prob
        pool = self.labelled if synth else self.slices
        v, z = pool[int(rng.integers(len(pool)))]
        vol = self.volumes[v]
        n = 2 * context + 1
        masks = axial_slab(vol["mask"], z, context)
        mask = masks[..., context]
        flat = (lambda a: a[..., 0]) if n == 1 else (lambda a: a)  # one slice: rendered and degraded in 2D
        if synth:
            clean = contrast_image(flat(axial_slab(vol["labels"], z, context)),
                                   flat(axial_slab(vol["tissues"], z, context)), flat(masks), rng)
            clean = clean.reshape(masks.shape)
        else:
            clean = axial_slab(vol["image"], z, context).astype(np.float32)
        clean = clean.transpose(2, 0, 1)  # (n, X, Y)
        labelled = "tissues" in vol
        tissue = np.clip(vol["tissues"][..., z].astype(np.int64), 0, 3) * mask if labelled else np.zeros(mask.shape, int)
        prior = self.prior[:, :, :, z] if self.prior is not None else np.zeros((3, *mask.shape), np.float32)
        stack = torch.from_numpy(np.concatenate([clean, masks.transpose(2, 0, 1).astype(np.float32),
                                                 np.eye(4, dtype=np.float32)[tissue].transpose(2, 0, 1), prior]))
        if augment:
            stack = SliceData._spatial(stack, int(rng.integers(2**31 - 1)))
        clean, masks_t = stack[:n], (stack[n:2 * n] > 0.5).float()
        mask_t = masks_t[context:context + 1]
        tissue_t = stack[2 * n:2 * n + 4].argmax(dim=0, keepdim=True) * mask_t.long() if labelled else \
            torch.full((1, *mask.shape), -1, dtype=torch.long)
        prior_t = stack[2 * n + 4:2 * n + 7] * mask_t
        clean = clean.clamp(0, 1) * masks_t
        m = masks_t.numpy() > 0  # (n, X, Y)
        if not synth and robust:
            clean = aug.appearance(clean, masks_t, int(rng.integers(2**31 - 1)))
        sick, lesion = clean.numpy(), np.zeros(m.shape, bool)
        if m[context].sum() > 50 and rng.random() < lesion_prob:
            sick, lesion = add_lesion(sick, m, rng, fraction=self.lesion_fraction, context=context)
        if synth:
            sick = degrade(flat(sick.transpose(1, 2, 0)), flat(m.transpose(1, 2, 0)), rng)
            sick = sick.reshape(m.shape[1:] + (n,)).transpose(2, 0, 1)
        elif robust:
            sick = aug.acquisition(torch.from_numpy(sick), masks_t, int(rng.integers(2**31 - 1))).numpy()
        return (torch.from_numpy(np.ascontiguousarray(sick, np.float32)), clean[context:context + 1], mask_t,
                torch.from_numpy(lesion[context:context + 1]).float(), tissue_t, prior_t)

    def batch(self, size: int, generator: torch.Generator, augment: bool = True, robust: bool = False,
              context: int = 0, pseudo_prob: float = 0.5) -> AnatomyBatch:
        """``size`` samples drawn with ``generator`` (``pseudo_prob``: share with a synthetic lesion;
        ``context``: neighbouring slices on each side of the centre slice, as extra input channels)."""
        seeds = torch.randint(2**31 - 1, (size,), generator=generator).tolist()
        samples = [self.sample(s, augment, robust, pseudo_prob, context) for s in seeds]
        return AnatomyBatch(*(torch.stack(t) for t in zip(*samples)))
