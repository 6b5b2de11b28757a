"""From a reconstruction to an anomaly map, a mask and findings.

The anomaly map follows the seed pipeline, each step a switch (see :class:`ScoringConfig`):
shift-tolerant residual, optionally weighted by the LPIPS map (the conditional-diffusion seed),
optionally divided by the scan's own median residual (a scanner-level correction), optionally
replaced by its normative score (how unusual the residual is for that location of the template
grid, against :class:`NormativeStats` of healthy scans), optional min-max normalisation, median
filter and/or Gaussian smoothing, eroded brain mask.
Sizes are in voxels of the grid the arrays live on (the 2 mm model grid for bundled models:
the seed's median size 5 and 6 erosions at 1 mm become 3 and 3).
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file
from scipy import ndimage


POLARITY_WORDS = {"both": "brighter or darker", "bright": "brighter only", "dark": "darker only",
                  "auto": "brighter only unless T1"}
"""What each :attr:`ScoringConfig.polarity` counts as anomalous, in words (the image against its reconstruction)."""
POLARITIES = tuple(POLARITY_WORDS)


@dataclass(frozen=True)
class ScoringConfig:
    """Switches of the anomaly-map pipeline.

    shift : residual at each voxel is the smallest over shifts of the reconstruction by up to
        this many voxels along each axis (0 = plain absolute residual).
    minmax : rescale the map to [0, 1] inside the brain (per volume).
    median_size : side of the cubic median filter (0 or 1 = off).
    gaussian_sigma : standard deviation (voxels) of a Gaussian that smooths the map after the median
        filter (0 = off). Unlike the median, it keeps a graded score on small or thin anomalies
        that a median of mostly unremarkable neighbours would set to exactly zero.
    erode : binary erosions of the brain mask before masking the map (0 = off).
    lpips : multiply the residual by the LPIPS (AlexNet) map of each axial slice
        (:func:`napari_brainuad.lpips_offline.lpips_map`; bundled weights, offline).
    normative : replace the residual by its normative score (:func:`normative_score`) against
        healthy statistics of the residual at each voxel (:class:`NormativeStats`).
    scan_scale : divide the residual by its median inside the eroded brain (:func:`scan_level`), so it is
        measured in multiples of the scan's own typical residual: a scanner whose images every model
        reconstructs less closely (residual higher everywhere) is not flagged everywhere for it. The
        median ignores focal lesions of up to half the brain.
    polarity : which side of the reconstruction counts: ``"both"`` (|image - reconstruction|),
        ``"bright"`` (only where the image is brighter: hyperintense lesions), ``"dark"`` (only darker),
        or ``"auto"``: ``"both"`` on a T1 and ``"bright"`` on any other contrast (T2, FLAIR, PD, DWI, where
        oedema, demyelination, gliosis and acute infarcts are hyperintense), from the scan's contrast as
        :func:`napari_brainuad.quality.guess_contrast` reads it (:meth:`for_contrast`).
    """

    shift: int = 1
    minmax: bool = False
    median_size: int = 3
    gaussian_sigma: float = 0.0
    erode: int = 3
    lpips: bool = False
    normative: bool = False
    scan_scale: bool = False
    polarity: str = "both"

    def __post_init__(self):
        if self.polarity not in POLARITIES:
            raise ValueError(f"polarity must be one of {', '.join(POLARITIES)}, got '{self.polarity}'")

    @classmethod
    def from_card(cls, scoring: dict) -> "ScoringConfig":
        return cls(**scoring)

    def for_contrast(self, contrast: str) -> "ScoringConfig":
        """This config with an ``"auto"`` polarity settled for a scan of ``contrast`` (``"T1"``, ``"T2"``,
        ``"FLAIR"``...): ``"both"`` on T1, ``"bright"`` otherwise; other polarities are returned unchanged."""
        if self.polarity != "auto":
            return self
        return replace(self, polarity="both" if contrast == "T1" else "bright")

    def as_dict(self) -> dict:
        return asdict(self)


def _difference(image: np.ndarray, reconstruction: np.ndarray, polarity: str) -> np.ndarray:
    d = np.subtract(image, reconstruction)
    if polarity == "both":
        return np.abs(d)
    if polarity == "bright":
        return np.maximum(d, 0.0)
    if polarity == "dark":
        return np.maximum(-d, 0.0)
    raise ValueError(f"polarity '{polarity}' must be settled to both, bright or dark first "
                     "(ScoringConfig.for_contrast)")


def shift_tolerant_residual(image: np.ndarray, reconstruction: np.ndarray, shift: int = 1,
                            polarity: str = "both") -> np.ndarray:
    """Voxel-wise minimum of the residual against the reconstruction shifted by d, over all d in
    [-shift, shift]^ndim. The residual is |image - reconstruction| (``polarity="both"``), or only its
    positive (``"bright"``: image brighter) or negative (``"dark"``) part, in image intensity units."""
    residual = _difference(image, reconstruction, polarity)
    if shift <= 0:
        return residual.astype(np.float32)
    padded = np.pad(reconstruction, shift, mode="edge")
    size = image.shape
    for offset in itertools.product(range(2 * shift + 1), repeat=image.ndim):
        window = padded[tuple(slice(o, o + n) for o, n in zip(offset, size))]
        np.minimum(residual, _difference(image, window, polarity), out=residual)
    return residual.astype(np.float32)


def scan_level(residual: np.ndarray, mask: np.ndarray, erode: int = 0) -> float:
    """The scan's typical residual: the median of ``residual`` over ``mask`` eroded ``erode`` times
    (0 for an empty mask)."""
    brain = ndimage.binary_erosion(mask, iterations=erode) if erode > 0 else np.asarray(mask, bool)
    return float(np.median(residual[brain])) if brain.any() else 0.0


def residual_map(image: np.ndarray, reconstruction: np.ndarray, mask: np.ndarray,
                 config: ScoringConfig = ScoringConfig(), *, device="cpu") -> np.ndarray:
    """The residual step of :func:`anomaly_map`: shift-tolerant residual, LPIPS-weighted when
    ``config.lpips`` is on (run on ``device``; images in [0, 1]). (X, Y, Z) float32, not masked.

    With ``config.scan_scale`` it is divided by :func:`scan_level` of the two-sided residual (also for a
    one-sided polarity, whose median is mostly 0), so it reads in multiples of the scan's typical residual;
    a scan reconstructed perfectly (level 0) keeps its residual as is."""
    residual = shift_tolerant_residual(image, reconstruction, config.shift, config.polarity)
    weight = None
    if config.lpips:
        from .lpips_offline import lpips_map  # torch, only when asked for

        weight = lpips_map(image, reconstruction, mask, device)
        residual = residual * weight
    if config.scan_scale:
        both = residual if config.polarity == "both" else (
            shift_tolerant_residual(image, reconstruction, config.shift) * (1.0 if weight is None else weight))
        level = scan_level(both, mask, config.erode)
        if level > 0:
            residual = residual / level
    return residual.astype(np.float32, copy=False)


def anomaly_map(image: np.ndarray, reconstruction: np.ndarray, mask: np.ndarray,
                config: ScoringConfig = ScoringConfig(), *, normative: NormativeStats | None = None,
                device="cpu") -> np.ndarray:
    """Anomaly score per voxel (float32, same shape), zero outside the eroded brain mask.

    ``device`` runs the LPIPS network when ``config.lpips`` is on (images in [0, 1]).
    ``normative`` holds the healthy residual statistics that ``config.normative`` needs (same
    grid as the images); without it that switch raises ``ValueError``.
    """
    return score_residual(residual_map(image, reconstruction, mask, config, device=device), mask, config,
                          normative=normative)


def score_residual(score: np.ndarray, mask: np.ndarray, config: ScoringConfig = ScoringConfig(), *,
                   normative: NormativeStats | None = None) -> np.ndarray:
    """The steps of :func:`anomaly_map` after the residual (:func:`residual_map`): normative score,
    eroded brain mask, min-max, median filter, Gaussian smoothing."""
    if config.normative:
        if normative is None:
            raise ValueError("normative scoring is switched on but no normative statistics were given "
                             "(fit them with fit_normative, or calibrate the model).")
        score = normative_score(score, normative)
    brain = ndimage.binary_erosion(mask, iterations=config.erode) if config.erode > 0 else mask
    score = np.where(brain, score, 0.0)
    if config.minmax and brain.any():
        lo, hi = score[brain].min(), score[brain].max()
        score = np.where(brain, (score - lo) / max(hi - lo, 1e-8), 0.0)
    if config.median_size > 1:
        score = ndimage.median_filter(score, size=config.median_size)
    if config.gaussian_sigma > 0:
        score = ndimage.gaussian_filter(score, sigma=config.gaussian_sigma)
    return np.where(brain, score, 0.0).astype(np.float32)


NORMATIVE_SIGMA = 2.0
"""Gaussian (voxels) over which :func:`fit_normative` pools neighbouring voxels' residuals: 4 mm on
the 2 mm grid (FWHM 9.4 mm). Each voxel then weighs about (2 sqrt(pi) sigma)^3 = 356 voxels' worth
of samples per scan, which steadies a std fitted on a handful of scans, while the kernel stays
narrow enough that cortex and ventricle edges keep statistics apart from deep white matter a
centimetre away."""

NORMATIVE_FLOOR = 0.25
"""Smallest std :func:`fit_normative` allows, as a fraction of the median std over the brain: no
location is judged more than 4 times as strictly as a typical one, and locations that no healthy
scan covered (mean 0, no spread) score by this floor instead of dividing by zero."""


@dataclass(frozen=True, eq=False)
class NormativeStats:
    """Voxel-wise statistics of the residual of healthy scans on the model grid.

    mean, std : (X, Y, Z) float32 residual mean and standard deviation (same units as the
        residual of :func:`residual_map`); std is positive everywhere.
    n_scans : healthy scans they were fitted on (before mirroring).

    Raises ``ValueError`` when the arrays do not fit that description.
    """

    mean: np.ndarray
    std: np.ndarray
    n_scans: int

    def __post_init__(self):
        for name in ("mean", "std"):
            a = getattr(self, name)
            if not isinstance(a, np.ndarray) or a.ndim != 3 or a.dtype != np.float32:
                raise ValueError(f"normative {name} must be a 3-D float32 array.")
            if not np.isfinite(a).all():
                raise ValueError(f"normative {name} holds non-finite values.")
        if self.mean.shape != self.std.shape:
            raise ValueError(f"normative mean {self.mean.shape} and std {self.std.shape} differ in shape.")
        if not (self.std > 0).all():
            raise ValueError("normative std must be positive everywhere.")
        if int(self.n_scans) < 1:
            raise ValueError("normative statistics must come from at least one scan.")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.mean.shape)


def midline_index(affine: np.ndarray) -> float:
    """Axis-0 voxel coordinate of the mid-sagittal plane (world x = 0) of a grid whose axis 0 runs
    along world x, as on the RAS template grid (47.0 on the MNI152 2 mm model grid)."""
    affine = np.asarray(affine, float)
    if affine[0, 0] == 0 or np.any(affine[1:3, 0]) or np.any(affine[0, 1:3]):
        raise ValueError("the grid's axis 0 does not run along world x (left-right).")
    return float(-affine[0, 3] / affine[0, 0])


def mirror_left_right(volume: np.ndarray, midline: float) -> np.ndarray:
    """``volume`` reflected along axis 0 about the voxel coordinate ``midline`` (an integer or
    half-integer; see :func:`midline_index`): ``out[i] = volume[2 * midline - i]``, and zero (False)
    where that voxel lies off the grid."""
    k = round(2 * midline)
    if abs(2 * midline - k) > 1e-6:
        raise ValueError(f"midline {midline} is not an integer or half-integer voxel coordinate.")
    flipped = volume[::-1]
    shift = len(volume) - 1 - k  # out[i] = flipped[i + shift]
    out = np.zeros_like(volume)
    if shift >= 0:
        out[:len(volume) - shift] = flipped[shift:]
    else:
        out[-shift:] = flipped[:len(volume) + shift]
    return out


def fit_normative(residuals: list[np.ndarray], masks: list[np.ndarray], *, midline: float | None = None,
                  sigma: float = NORMATIVE_SIGMA, floor: float = NORMATIVE_FLOOR) -> NormativeStats:
    """Voxel-wise mean and std of healthy residual maps on one grid.

    Parameters
    ----------
    residuals : (X, Y, Z) residual maps of healthy scans (:func:`residual_map`).
    masks : their (X, Y, Z) bool brain masks; only brain voxels are samples.
    midline : when given, each map is also pooled mirrored left-right about this axis-0 voxel
        coordinate (:func:`mirror_left_right`; the MNI152 2009c Sym template is symmetric), which
        doubles the sample.
    sigma : every voxel pools the samples of its neighbours with Gaussian weights of this many
        voxels (normalised convolution of the counts and of the first and second moments).
    floor : the std is raised to at least ``floor`` times its median over the pooled brain voxels;
        voxels no sample reaches get mean 0 and that std.
    """
    if not residuals or len(residuals) != len(masks):
        raise ValueError("fit_normative needs one brain mask per residual map, and at least one map.")
    shape = residuals[0].shape
    if any(r.shape != shape or m.shape != shape for r, m in zip(residuals, masks)):
        raise ValueError("fit_normative needs residual maps and masks of one shape.")
    count, first, second = (np.zeros(shape) for _ in range(3))
    for residual, mask in zip(residuals, masks):
        views = [(residual, mask)]
        if midline is not None:
            views.append((mirror_left_right(residual, midline), mirror_left_right(mask, midline)))
        for r, m in views:
            r = np.where(m, r, 0.0)
            count += m
            first += r
            second += r * r
    brain = count > 0
    count, first, second = (ndimage.gaussian_filter(a, sigma) for a in (count, first, second))
    seen = count > 0
    safe = np.where(seen, count, 1.0)
    mean = np.where(seen, first / safe, 0.0)
    std = np.sqrt(np.clip(np.where(seen, second / safe - mean**2, 0.0), 0.0, None))
    typical = float(np.median(std[brain]))
    if not typical > 0:
        raise ValueError("the healthy residual maps have no spread inside the brain; normative statistics need some.")
    return NormativeStats(mean.astype(np.float32), np.maximum(std, floor * typical).astype(np.float32), len(residuals))


def normative_score(residual: np.ndarray, stats: NormativeStats) -> np.ndarray:
    """How unusual ``residual`` is for each voxel: ``(residual - mean) / std`` of healthy scans,
    clipped at 0 from below (a residual smaller than usual is not an anomaly). (X, Y, Z) float32."""
    if residual.shape != stats.shape:
        raise ValueError(f"residual of shape {residual.shape} does not match the normative statistics' grid "
                         f"{stats.shape}.")
    return np.maximum((residual - stats.mean) / stats.std, 0.0).astype(np.float32)


def save_normative(stats: NormativeStats, path: Path) -> None:
    """Write ``stats`` as safetensors (``mean``, ``std``, ``n_scans``); no pickle."""
    save_file({"mean": stats.mean, "std": stats.std, "n_scans": np.array(stats.n_scans, np.int64)}, str(path))


def load_normative(path: Path, shape: tuple[int, int, int] | None = None) -> NormativeStats:
    """Read statistics written by :func:`save_normative`, checking them (and their grid against
    ``shape`` when given); a missing, unreadable or invalid file raises
    :class:`napari_brainuad.models.ModelError` naming it."""
    from .models.card import MAX_WEIGHTS_BYTES, ModelError, check_regular_file  # models imports this module

    if not Path(path).exists():
        raise ModelError(f"{path}: normative statistics file is missing (run 'python -m training calibrate').")
    check_regular_file(path, MAX_WEIGHTS_BYTES, "normative statistics file")
    try:
        arrays = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise ModelError(f"{path}: not a valid safetensors normative statistics file ({exc}).") from None
    n_scans = arrays.get("n_scans")
    if set(arrays) != {"mean", "std", "n_scans"} or n_scans.shape != () or n_scans.dtype.kind != "i":
        raise ModelError(f"{path}: normative statistics file must hold mean, std and an integer scalar n_scans "
                         f"(it holds {', '.join(sorted(arrays)) or 'nothing'}).")
    try:
        stats = NormativeStats(arrays["mean"], arrays["std"], int(n_scans))
    except ValueError as exc:
        raise ModelError(f"{path}: invalid normative statistics ({str(exc).rstrip('.')}).") from None
    if shape is not None and stats.shape != tuple(shape):
        raise ModelError(f"{path}: normative statistics are on a {stats.shape} grid, not the model's {tuple(shape)}.")
    return stats


def calibrate_threshold(maps: list[np.ndarray], masks: list[np.ndarray], max_flagged: float = 0.005,
                        max_voxels: float | None = None) -> float:
    """The lowest score that flags at most ``max_flagged`` of the pooled healthy voxels inside ``masks`` and,
    when ``max_voxels`` is given, at most that many voxels per scan on average (a volume bound: 5 ml is 625
    voxels of the 2 mm model grid, about 0.25 % of a brain).

    The ``1 - q`` quantile of the pooled scores (numpy's "higher" method), ``q`` the smaller of the two shares:
    at it ``q`` of the pooled voxels are flagged, plus at most one voxel and any voxels tied with it; at the
    next lower score more would be.
    """
    scores = np.concatenate([m[k] for m, k in zip(maps, masks)])
    share = max_flagged
    if max_voxels is not None:
        share = min(share, max_voxels * len(maps) / max(scores.size, 1))
    return float(np.quantile(scores, 1.0 - share, method="higher"))


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
