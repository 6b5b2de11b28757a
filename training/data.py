"""Healthy training sites, preprocessed once into caches of model-grid volumes, and the slices drawn from them.

A *site* is one scanner's healthy scans in ``../shared/data`` with a fixed split (:data:`SITES`).
``prepare`` writes each site's cache as ``CACHE/<site>/<stem>.npz`` (image, mask, and for a site with
label maps, OASIS, its ``labels`` and ``tissues`` resampled nearest-neighbour through the same
registration) plus a ``splits.csv`` (subject, file, split); everything after ``prepare`` (fit,
calibrate, evaluate) reads only caches.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from napari_brainuad.io import atomic_write, read_volume
from napari_brainuad.preprocess import preprocess


@dataclass(frozen=True)
class Site:
    """A scanner's healthy scans: where they are, how their split is listed, how to credit them.

    ``table`` lists one scan a row with a ``split`` column; ``subject``, ``image`` and ``brain_mask``
    are format strings over a row's columns (``brain_mask`` None: the scan's own skull is stripped);
    ``labels`` names label maps on the scan's grid (cache key, format string), cached with it.
    """

    folder: str
    table: str
    description: str
    licence: str
    subject: str = "{subject}"
    image: str = "{file}"
    brain_mask: str | None = None
    labels: tuple[tuple[str, str], ...] = ()

    def scans(self, data_root: Path, split: str | None = None) -> list["Scan"]:
        """Scans of ``split`` (all when None) as listed in the site's table."""
        root = Path(data_root) / self.folder
        with open(root / self.table, newline="") as f:
            rows = [r for r in csv.DictReader(f) if split is None or r["split"] == split]
        return [Scan(self.subject.format(**r), root / self.image.format(**r), r["split"],
                     root / self.brain_mask.format(**r) if self.brain_mask else None,
                     {key: root / name.format(**r) for key, name in self.labels}) for r in rows]


@dataclass(frozen=True)
class Scan:
    subject: str
    path: Path
    split: str
    brain_mask: Path | None = None
    labels: dict | None = None
    """Label maps on the scan's grid by cache key (``labels``: anatomical, ``tissues``: 1 CSF, 2 GM, 3 WM)."""

    @property
    def stem(self) -> str:
        return self.path.name.split(".")[0]


SITES = {
    "ixi": Site("ixi-t1-2mm", "splits.csv",
                "IXI (Hammersmith Hospital, Philips 3T, healthy, age 24-74, whole head)",
                "IXI dataset, CC BY-SA 3.0, brain-development.org/ixi-dataset"),
    "oasis": Site("oasis-malf", "participants.csv",
                  "OASIS-1 (Siemens 1.5T, healthy, age 18-90, skull-stripped)",
                  "OASIS-1 scans, OASIS project; labels Neuromorphometrics, Inc.; CC BY-NC (non-commercial)",
                  subject="{id}", image="{id}_T1_brain.nii.gz", brain_mask="{id}_brainmask.nii.gz",
                  labels=(("labels", "{id}_labels.nii.gz"), ("tissues", "{id}_tissues.nii.gz"))),
}
"""The healthy training sites by cache name."""


def load_preprocessed(path: Path, cache_dir: Path | None = None, seed: int = 0,
                      brain_mask: Path | None = None, labels: dict | None = None,
                      **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask) of a scan on the model grid; read from ``cache_dir`` when cached there.

    ``labels`` (cache key -> label map on the scan's grid) are resampled nearest-neighbour through the
    scan's own registration and stored beside it as int16 (:func:`cached_labels`); a cached file that
    lacks one of them is made again. ``kwargs`` go to :func:`~napari_brainuad.preprocess.preprocess`.
    """
    cached = Path(cache_dir) / f"{Path(path).name.split('.')[0]}.npz" if cache_dir else None
    if cached is not None and cached.exists():
        with np.load(cached) as z:
            if all(key in z.files for key in labels or {}):
                return z["image"], z["mask"]
    mask = read_volume(brain_mask).data > 0 if brain_mask is not None else None
    p = preprocess(read_volume(path), seed=seed, brain_mask=mask, **kwargs)
    maps = {}
    for key, label_path in (labels or {}).items():
        native = read_volume(label_path)
        if native.shape != p.native.shape:
            raise ValueError(f"{label_path}: label map shape {native.shape} differs from the scan's {p.native.shape}")
        maps[key] = np.rint(p.to_template(native.data.astype(np.float32), "nearest")).astype(np.int16) * p.mask
    if cached is not None:
        atomic_write(cached, lambda tmp: np.savez_compressed(tmp, image=p.image, mask=p.mask, **maps))
    return p.image, p.mask


def cached_labels(path: Path) -> dict[str, np.ndarray]:
    """The label maps cached with a scan (``labels``, ``tissues``; empty for a site without them)."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files if k not in ("image", "mask")}


def cached_split(cache_dir: Path, split: str) -> list[Path]:
    """Cached .npz files of one split, per the cache's copy of ``splits.csv``."""
    with open(Path(cache_dir) / "splits.csv", newline="") as f:
        return [Path(cache_dir) / f"{row['file'].split('.')[0]}.npz" for row in csv.DictReader(f)
                if row["split"] == split and (Path(cache_dir) / f"{row['file'].split('.')[0]}.npz").exists()]


def axial_slab(array: np.ndarray, z: int, context: int) -> np.ndarray:
    """(X, Y, 2 * context + 1) axial slices of an (X, Y, Z) array around ``z``, its dtype kept; zeros beyond the grid."""
    lo, hi = z - context, z + context + 1
    out = np.zeros((*array.shape[:2], hi - lo), dtype=array.dtype)
    out[..., max(0, -lo):out.shape[-1] - max(0, hi - array.shape[-1])] = array[..., max(0, lo):hi]
    return out


def cached_volumes(caches: list[Path] | Path, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, mask) of every cached scan of ``split`` in the given site caches."""
    caches = [caches] if isinstance(caches, (str, Path)) else caches
    files = [f for c in caches for f in cached_split(c, split)]
    if not files:
        raise FileNotFoundError(f"{', '.join(map(str, caches))}: no cached '{split}' scans; "
                                "run 'python -m training prepare' first.")
    volumes = []
    for path in files:
        with np.load(path) as z:
            volumes.append((z["image"], z["mask"]))
    return volumes


@dataclass
class Batch:
    """A training batch of axial slabs, each (B, C, H, W) float32.

    input : what the network sees: ``2 * context + 1`` neighbouring slices (augmented; with a
        synthetic anomaly for pseudo-pathology recipes; noise, blur and low resolution when robust).
    target : the healthy centre slice (B, 1, H, W), same appearance as ``input`` but not degraded.
    mask : brain mask of the centre slice (B, 1, H, W).
    lesion : synthetic lesion of the centre slice (B, 1, H, W); zeros for healthy samples.
    """

    input: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor
    lesion: torch.Tensor

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device) for t in (self.input, self.target, self.mask, self.lesion)))


class SliceData:
    """Slabs of healthy volumes (axial slices, last grid axis) and, optionally, pseudo-pathological copies.

    volumes, masks : (N, X, Y, Z) float32 images in [0, 1] and bool brain masks.
    pseudo : per volume, a (K, X, Y, Z) float16 tensor of anomalous copies and their (K, X, Y, Z)
        bool lesion masks (see :mod:`training.pseudo`), or None.
    Only centre slices whose brain area is at least ``min_fraction`` of the volume's largest
    slice are drawn. ``sites`` (N,) numbers each volume's scanner; with ``balance_sites`` every draw
    picks a scanner uniformly first, so a site with fewer training scans is seen as often as the others.
    """

    def __init__(self, volumes: np.ndarray, masks: np.ndarray, pseudo: list | None = None,
                 min_fraction: float = 0.15, sites: np.ndarray | None = None, balance_sites: bool = False):
        self.volumes = torch.from_numpy(np.ascontiguousarray(volumes, dtype=np.float32))
        self.masks = torch.from_numpy(np.ascontiguousarray(masks, dtype=bool))
        area = self.masks.sum(dim=(1, 2)).float()  # (N, Z)
        keep = area >= min_fraction * area.max(dim=1, keepdim=True).values
        self.slices = keep.nonzero()  # (M, 2): volume, z
        self.pseudo = pseudo
        self.sites = torch.zeros(len(self.volumes), dtype=torch.long) if sites is None else torch.as_tensor(sites)
        self.balance_sites = balance_sites
        self.n_volumes: dict[str, int] = {}
        """Training scans per site cache (set by :meth:`from_cache`)."""
        if pseudo is not None:  # (volume, copy, z) where the copy's lesion crosses a kept slice
            rows = []
            for v, (_, lesions) in enumerate(pseudo):
                hit = lesions.any(dim=1).any(dim=1) & keep[v]  # (K, Z)
                rows += [(v, k, z) for k, z in hit.nonzero().tolist()]
            self.lesion_slices = torch.tensor(rows, dtype=torch.long)

    @classmethod
    def from_volumes(cls, volumes: list[tuple[np.ndarray, np.ndarray]], pseudo: list | None = None,
                     **kwargs) -> "SliceData":
        return cls(np.stack([v[0] for v in volumes]), np.stack([v[1] for v in volumes]), pseudo, **kwargs)

    @classmethod
    def from_cache(cls, caches: list[Path] | Path, split: str = "train", pseudo: bool = False,
                   balance_sites: bool = False,
                   blob_fraction: tuple[float, float] | None = None) -> "SliceData":
        """Cached volumes of ``split`` from site caches, with their pseudo-pathology copies if ``pseudo``
        (made with random blobs covering ``blob_fraction`` of the brain, default prepare's, checked against
        what ``prepare`` recorded); each cache is one site (``balance_sites``: draw the sites equally often)."""
        caches = [caches] if isinstance(caches, (str, Path)) else list(caches)
        volumes = cached_volumes(caches, split)
        copies = None
        if pseudo:
            from .pseudo import BLOB_FRACTION  # here, not at the top: evaluation loads this module, not pseudo.py
            blob_fraction = blob_fraction or BLOB_FRACTION
            copies = []
            for path in [f for c in caches for f in cached_split(c, split)]:
                copy = path.parent / "pseudo" / path.name
                if not copy.exists():
                    raise FileNotFoundError(f"{copy}: no pseudo-pathology copies; run 'python -m training prepare "
                                            "--pseudo-per-scan K' first.")
                with np.load(copy) as z:
                    made = json.loads(str(z["settings"]))["blob_fraction"] if "settings" in z.files \
                        else list(BLOB_FRACTION)  # files of earlier versions: the default
                    if made != list(blob_fraction):
                        raise SystemExit(f"{copy}: its random blobs cover {made[0]}-{made[1]} of the brain, not the "
                                         f"{blob_fraction[0]}-{blob_fraction[1]} asked for; use a cache prepared with "
                                         f"--blob-fraction {blob_fraction[0]} {blob_fraction[1]}.")
                    copies.append((torch.from_numpy(z["images"]), torch.from_numpy(z["lesions"])))
        counts = [len(cached_split(c, split)) for c in caches]
        sites = np.repeat(np.arange(len(caches)), counts)
        data = cls.from_volumes(volumes, copies, sites=sites, balance_sites=balance_sites)
        data.n_volumes = {Path(c).name: n for c, n in zip(caches, counts)}
        return data

    def __len__(self) -> int:
        return len(self.slices)

    def _slab(self, array: torch.Tensor, z: int, context: int) -> torch.Tensor:
        """(2 * context + 1, X, Y) float32 slices around ``z`` of an (X, Y, Z) tensor (:func:`axial_slab`)."""
        return torch.from_numpy(axial_slab(array.numpy(), z, context)).permute(2, 0, 1).float()

    def batch(self, size: int, generator: torch.Generator, augment: bool = True, robust: bool = False,
              context: int = 0, pseudo_prob: float = 0.0) -> Batch:
        """``size`` slabs drawn with ``generator``.

        augment : random left-right flips and a small affine jitter (MONAI RandAffine).
        robust : scanner-robust intensity augmentation (:mod:`training.augment`).
        context : neighbouring slices on each side of the centre slice, as extra input channels.
        pseudo_prob : fraction of samples whose input carries a synthetic anomaly (copies must be loaded).
        """
        from . import augment as aug

        n = 2 * context + 1
        inputs, targets, masks, lesions = [], [], [], []
        draws = torch.rand(size, generator=generator)
        seeds = torch.randint(2**31 - 1, (size, 3), generator=generator)
        for draw, seed in zip(draws, seeds):
            if self.pseudo is not None and draw < pseudo_prob:
                v, k, z = self._draw(self.lesion_slices, generator)
                sick = self._slab(self.pseudo[v][0][k], int(z), context)
                lesion = self.pseudo[v][1][k][..., int(z)].float()[None]
            else:
                v, z = self._draw(self.slices, generator)
                sick, lesion = None, torch.zeros((1, *self.volumes.shape[1:3]))
            clean = self._slab(self.volumes[v], int(z), context)
            mask = self.masks[v][..., int(z)].float()[None]
            stack = torch.cat([clean, clean if sick is None else sick, mask, lesion])
            if augment:
                stack = self._spatial(stack, int(seed[0]))
            clean, sick, mask, lesion = stack[:n], stack[n:2 * n], stack[2 * n:2 * n + 1], stack[2 * n + 1:]
            mask, lesion = (mask > 0.5).float(), (lesion > 0.5).float() * (mask > 0.5)
            if robust:
                both = aug.appearance(torch.cat([clean, sick]), mask, int(seed[1]))
                clean, sick = both[:n], aug.acquisition(both[n:], mask, int(seed[2]))
            else:
                clean, sick = clean * mask, sick * mask
            inputs.append(sick)
            targets.append(clean[context:context + 1])
            masks.append(mask)
            lesions.append(lesion)
        return Batch(*(torch.stack(t) for t in (inputs, targets, masks, lesions)))

    def _draw(self, rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One row (volume index first) of ``rows``, uniformly; with ``balance_sites``, of a uniformly drawn site."""
        if self.balance_sites:
            row_sites = self.sites[rows[:, 0]]
            present = row_sites.unique()
            rows = rows[row_sites == present[torch.randint(len(present), (1,), generator=generator)]]
        return rows[torch.randint(len(rows), (1,), generator=generator)][0]

    @staticmethod
    def _spatial(stack: torch.Tensor, seed: int) -> torch.Tensor:
        from monai.transforms import RandAffine

        if seed % 2:
            stack = stack.flip(-2)  # axis X is left-right on the model grid
        affine = RandAffine(prob=1.0, rotate_range=0.08, scale_range=0.05, translate_range=(3, 3),
                            padding_mode="zeros", mode="bilinear")
        affine.set_random_state(seed=seed)
        return torch.as_tensor(affine(stack)).float()
