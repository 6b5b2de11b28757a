"""The evaluation datasets: healthy test scans of each site, the same with synthetic anomalies, real lesion cases.

Healthy scans come from the site caches written by ``python -m training prepare`` (``CACHE/ixi``,
``CACHE/oasis``); OASIS rescan pairs from ``oasis-malf/participants.csv``. Every case lives on the
2 mm model grid: ``image`` (X, Y, Z) float32 in [0, 1], ``mask`` the bool brain, ``lesion`` the
bool ground truth inside the brain (None for healthy scans). Synthetic cases are seeded by
``seed`` and their position in the dataset, so the same seed gives the same datasets.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from napari_brainuad.io import read_volume
from napari_brainuad.preprocess import preprocess
from napari_brainuad.synthetic import fluid_anomaly, random_blobs, shape_anomaly

from .data import SITES, cached_labels, load_preprocessed

LESION_CASES = {  # name: (image, lesion mask, brain mask or None, contrast)
    "MSLUB-26": ("mslub/patient26/T1.nii.gz", "mslub/patient26/consensus_gt.nii.gz", None, "T1"),
    "BraTS-01": ("brats2013/pat0001/T1c_subtrMeanDivStd.nii.gz", "brats2013/pat0001/OTMultiClass.nii.gz",
                 "brats2013/pat0001/brainmask.nii.gz", "T1"),
    "BraTS-02": ("brats2013/pat0002/T1c_subtrMeanDivStd.nii.gz", "brats2013/pat0002/OTMultiClass.nii.gz",
                 "brats2013/pat0002/brainmask.nii.gz", "T1"),
}
"""Real development cases in ``../shared/data``: MS lesions on T1 and gliomas (whole tumour) on T1c."""

CONTRAST_LESION_CASES = {  # name: (image, lesion mask, brain mask or None, contrast), contrasts other than T1
    "MSLUB-26 FLAIR": ("mslub/patient26/FLAIR.nii.gz", "mslub/patient26/consensus_gt.nii.gz", None, "FLAIR"),
    "MSLUB-26 T2": ("mslub/patient26/T2.nii.gz", "mslub/patient26/consensus_gt.nii.gz", None, "T2"),
    "BraTS-01 FLAIR": ("brats2013/pat0001/Flair_subtrMeanDivStd.nii.gz", "brats2013/pat0001/OTMultiClass.nii.gz",
                       "brats2013/pat0001/brainmask.nii.gz", "FLAIR"),
    "BraTS-02 FLAIR": ("brats2013/pat0002/Flair_subtrMeanDivStd.nii.gz", "brats2013/pat0002/OTMultiClass.nii.gz",
                       "brats2013/pat0002/brainmask.nii.gz", "FLAIR"),
}
"""The same patients on FLAIR and T2, where MS lesions and tumour oedema are bright (issue 14's cases)."""


@dataclass
class Case:
    name: str
    image: np.ndarray
    mask: np.ndarray
    lesion: np.ndarray | None = None
    kind: str = "healthy"
    """``healthy``, ``real``, ``rectangle``, ``ellipse``, or ``fluid:`` and the source of P0."""
    source: Path | None = None
    """The original file, for timing a full ``detect`` (real cases only)."""
    contrast: str = "T1"
    """The scan's contrast, as a user would state it (it settles an ``"auto"`` scoring polarity)."""
    healthy: np.ndarray | None = None
    """The same scan without its synthetic anomaly (synthetic cases drawn on a real healthy scan)."""


@dataclass
class Dataset:
    name: str
    description: str
    cases: list[Case] = field(default_factory=list)
    pairs: list[tuple[str, str]] = field(default_factory=list)
    """Names of cases that are two scans of one brain (first, second): rescans to compare."""
    paired: int = 0
    """The first ``paired`` cases draw the same anomalies, copy for copy, as another site's dataset
    (:func:`fluid_cases`): their pooled AP compares the two scanners on the same mix of anomalies."""

    @property
    def healthy(self) -> bool:
        return all(c.lesion is None for c in self.cases)


def healthy_cases(data: Path, cache: Path) -> list[Case]:
    """The IXI ``test`` split (never used for training or thresholds) under the data root, preprocessed (and cached)."""
    return [Case(scan.subject, *load_preprocessed(scan.path, cache)) for scan in SITES["ixi"].scans(data, "test")]


def cached_cases(cache: Path, split: str = "test") -> list[Case]:
    """Every scan of ``split`` in a site cache, named by the file's first ``_`` field (IXI subject, OASIS id)."""
    table = Path(cache) / "splits.csv"
    if not table.exists():
        raise FileNotFoundError(f"{cache}: no site cache here (splits.csv); make it with 'python -m training prepare "
                                f"--cache {Path(cache).parent}' (--cache is the root holding ixi/ and oasis/).")
    with open(table, newline="") as f:
        files = [Path(cache) / f"{r['file'].split('.')[0]}.npz" for r in csv.DictReader(f) if r["split"] == split]
    missing = [f.name for f in files if not f.exists()]
    if not files or missing:
        raise FileNotFoundError(f"{cache}: '{split}' scans not cached ({', '.join(missing) or 'none listed'}); "
                                "run 'python -m training prepare' first.")
    cases = []
    for path in files:
        with np.load(path) as z:
            cases.append(Case(path.name.split("_")[0], z["image"], z["mask"]))
    return cases


def rescan_pairs(participants: Path, names: list[str]) -> list[tuple[str, str]]:
    """(first, second) OASIS ids of each subject scanned twice, when both scans are among ``names``."""
    with open(participants, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["scan"].endswith("of a rescan pair") and r["id"] in names]
    first = {r["oasis_subject"]: r["id"] for r in rows if r["scan"].startswith("first")}
    second = {r["oasis_subject"]: r["id"] for r in rows if r["scan"].startswith("second")}
    return sorted((first[s], second[s]) for s in first.keys() & second.keys())


def lesion_cases(data: Path, table: dict[str, tuple] = LESION_CASES) -> list[Case]:
    """The real lesion cases of ``table``, preprocessed; lesion masks resampled to the grid (nearest neighbour)."""
    cases = []
    for name, (image, truth, brain, contrast) in tqdm(table.items(), desc="preprocess lesion cases"):
        volume = read_volume(data / image)
        pre = preprocess(volume, brain_mask=read_volume(data / brain).data > 0 if brain else None)
        lesion = pre.to_template((read_volume(data / truth).data > 0).astype(np.float32), "nearest") > 0.5
        cases.append(Case(name, pre.image, pre.mask, lesion & pre.mask, "real", data / image, contrast))
    return cases


def shape_cases(healthy: list[Case], per_scan: int, seed: int) -> list[Case]:
    """``per_scan`` copies of each healthy scan with one box or ellipsoid (alternating) of 20-30 mm."""
    cases = []
    for i, case in enumerate(healthy):
        for k in range(per_scan):
            kind = ("rectangle", "ellipse")[k % 2]
            image, lesion = shape_anomaly(case.image, case.mask, np.random.default_rng([seed, i, k]), kind)
            cases.append(Case(f"{case.name} {kind} {k}", image.astype(np.float32), case.mask, lesion, kind,
                              healthy=case.image))
    return cases


def fluid_cases(healthy: list[Case], p0_masks: dict[str, np.ndarray], per_scan: int, seed: int) -> list[Case]:
    """``per_scan`` copies of each healthy scan with one fluid-driven anomaly.

    Copy ``j`` of the dataset (``j = scan index * per_scan + copy index``) draws everything from
    ``(seed, j)``: its initial pathology ``P0`` (cycling over random blobs and the given real lesion
    masks, on the model grid, mirrored left-right at random, restricted to this brain), its lesion
    contrast (the seed's ``delta ~ N(-mu_w / 2, (mu_w / 2)^2)``, sign flipped 20 % of the time) and
    the fluid evolution. Two sites' datasets therefore share the sequence of sources and contrasts,
    so their APs compare scanners, not draws. The ground truth is the evolved ``P > 0.5``; a copy
    whose ground truth comes out empty is redrawn with the next attempt's seed.
    """
    sources = ["blobs", *p0_masks]
    cases = []
    for i, case in enumerate(healthy):
        for k in range(per_scan):
            j = i * per_scan + k
            source = sources[j % len(sources)]
            for attempt in range(10):
                rng = np.random.default_rng([seed, j, attempt])
                contrast = rng.normal(-0.5, 0.5) * (-1 if rng.random() < 0.2 else 1)
                if source == "blobs":
                    p0 = random_blobs(case.mask, rng)
                else:
                    p0 = p0_masks[source][::-1] if rng.random() < 0.5 else p0_masks[source]
                    p0 = (p0 & case.mask).astype(np.float32)
                image, _, lesion = fluid_anomaly(case.image, case.mask, rng, p0=p0, delta_mean=contrast,
                                                 delta_std=0.0, flip_prob=0.0)
                if lesion.any():
                    break
            cases.append(Case(f"{case.name} fluid:{source} {k}", image.astype(np.float32), case.mask,
                              lesion & case.mask, f"fluid:{source}", healthy=case.image))
    return cases


def build_datasets(data: Path, cache: Path, per_scan: int = 4, seed: int = 0,
                   oasis_per_scan: int = 1) -> dict[str, Dataset]:
    """All evaluation datasets by name, in report order; ``cache`` is the root of the site caches."""
    ixi, oasis = cached_cases(Path(cache) / "ixi"), cached_cases(Path(cache) / "oasis")
    pairs = rescan_pairs(Path(data) / SITES["oasis"].folder / "participants.csv", [c.name for c in oasis])
    real = lesion_cases(data)
    p0_masks = {c.name: c.lesion for c in real}
    fluid = ("one fluid-driven anomaly (Liu et al. 2025), {} per scan; P0 from random blobs or the real lesion masks; "
             "copy j of either site draws the same source, lesion contrast and evolution seed (a paired comparison).")
    return {d.name: d for d in [
        Dataset("IXI healthy", f"IXI `test` split, {len(ixi)} healthy T1 scans, Philips 3T, whole head "
                "(false positives, reconstruction quality).", ixi),
        Dataset("OASIS healthy", f"OASIS-1 `test` split, {len(oasis)} healthy T1 scans of a second scanner, Siemens "
                f"1.5T, skull-stripped; {len(pairs)} subjects scanned twice (false positives off IXI).", oasis, pairs),
        Dataset("IXI + shapes", f"IXI `test` with one box or ellipsoid of 20-30 mm and uniform random intensity "
                f"(Malé et al.), {per_scan} per scan, half of each kind.", shape_cases(ixi, per_scan, seed)),
        Dataset("IXI + fluid", f"IXI `test` with {fluid.format(per_scan)}", fluid_cases(ixi, p0_masks, per_scan, seed),
                paired=min(len(ixi) * per_scan, len(oasis) * oasis_per_scan)),
        Dataset("OASIS + fluid", f"OASIS-1 `test` with {fluid.format(oasis_per_scan)}",
                fluid_cases(oasis, p0_masks, oasis_per_scan, seed)),
        Dataset("MSLUB-26 T1", "MSLUB patient26: multiple sclerosis, T1, consensus lesion mask.", real[:1]),
        Dataset("BraTS T1c", "BraTS 2013 pat0001-0002: glioma on contrast-enhanced T1 (not the T1 the models were "
                "trained on), whole tumour.", real[1:]),
    ]}


def contrast_cases(cache: Path, per_scan: int = 1, seed: int = 0, contrasts: tuple[str, ...] | None = None,
                   split: str = "test") -> list[Dataset]:
    """One dataset per contrast family of :data:`training.synth.CONTRASTS` (T1-, T2-, FLAIR-like): each
    labelled scan of ``split`` in the site cache (OASIS, labels cached by ``prepare``) rendered from its
    labels in that contrast, with ``per_scan`` fluid-driven anomalies of the contrast's lesion intensity.

    For the "AP per contrast and spread between contrasts" table: copy ``k`` of scan ``i`` carries the same
    lesion (drawn from ``(seed, i, k)``) in every contrast, so the datasets differ in contrast only; the
    rendering (tissue means in the contrast's ranges, label jitter, bias field, texture, light noise) draws
    from ``(seed, i, k, contrast index)``.
    """
    from napari_brainuad.synthetic import fluid_pathology

    from .synth import CONTRASTS, contrast_image, degrade

    contrasts = tuple(contrasts or CONTRASTS)
    unknown = [c for c in contrasts if c not in CONTRASTS]
    if unknown:
        raise ValueError(f"unknown contrast {', '.join(unknown)} (known: {', '.join(CONTRASTS)})")
    scans = [(case, _labels_by_name(Path(cache), case.name)) for case in cached_cases(cache, split)]
    if not scans or any("labels" not in m or "tissues" not in m for _, m in scans):
        raise FileNotFoundError(f"{cache}: '{split}' scans cached without their label maps; run 'python -m training "
                                "prepare --sites oasis' (it caches the labels beside each scan).")
    out = {c: [] for c in contrasts}
    for i, (case, maps) in enumerate(scans):
        for k in range(per_scan):
            for attempt in range(10):
                rng = np.random.default_rng([seed, i, k, attempt])
                P = fluid_pathology(random_blobs(case.mask, rng), case.mask, rng)
                lesion = (P > 0.5) & case.mask
                if lesion.any():
                    break
            for c_index, name in enumerate(contrasts):
                rng = np.random.default_rng([seed, i, k, 1000 + c_index])
                means, lesion_range = CONTRASTS[name]
                sick = contrast_image(maps["labels"], maps["tissues"], case.mask, rng, means=means,
                                      lesion=P * case.mask, lesion_mean=float(rng.uniform(*lesion_range)))
                sick = degrade(sick, case.mask, rng, blur_prob=0.0, lowres_prob=0.0, noise_std=0.02)
                out[name].append(Case(f"{case.name} {name} fluid {k}", sick, case.mask, lesion, f"fluid:{name}",
                                      contrast=name.removesuffix("-like")))
    return [Dataset(f"OASIS {name} + fluid", f"OASIS-1 `{split}` brains rendered from their label maps in a "
                    f"{name} contrast (synthetic, training/synth.py), {per_scan} fluid-driven anomal"
                    f"{'y' if per_scan == 1 else 'ies'} per scan of that contrast's lesion intensity; the same "
                    "lesions in every contrast.", cases) for name, cases in out.items()]


def build_contrast_datasets(data: Path, cache: Path, per_scan: int = 1, seed: int = 0) -> dict[str, Dataset]:
    """Datasets in contrasts other than T1, by name: OASIS ``test`` rendered from its labels in each contrast
    family with fluid-driven anomalies (:func:`contrast_cases`), and the real FLAIR and T2 cases."""
    real = lesion_cases(data, CONTRAST_LESION_CASES)
    by_name = {c.name: c for c in real}
    return {d.name: d for d in [
        *contrast_cases(Path(cache) / "oasis", per_scan, seed),
        Dataset("MSLUB-26 FLAIR", "MSLUB patient26 FLAIR: multiple sclerosis lesions (bright), consensus mask.",
                [by_name["MSLUB-26 FLAIR"]]),
        Dataset("MSLUB-26 T2", "MSLUB patient26 T2: the same lesions on T2 (bright).", [by_name["MSLUB-26 T2"]]),
        Dataset("BraTS FLAIR", "BraTS 2013 pat0001-0002 FLAIR: glioma, whole tumour (oedema bright).",
                [by_name["BraTS-01 FLAIR"], by_name["BraTS-02 FLAIR"]]),
    ]}


def _labels_by_name(cache: Path, name: str) -> dict:
    """The label maps cached with the scan whose file starts with ``name`` (the first ``_`` field)."""
    for path in sorted(cache.glob(f"{name}_*.npz")):
        return cached_labels(path)
    return {}
