"""Preprocess the healthy sites once into caches of model-grid volumes, and their pseudo-pathology copies.

For each site of :data:`training.data.SITES` (``--sites``), runs the plugin's own preprocessing
(skull stripping when needed, registration to MNI152 2 mm, normalisation) on every scan of the
chosen splits and writes ``CACHE/<site>/<stem>.npz`` (image, mask; for OASIS also its anatomical
``labels`` and ``tissues`` maps, resampled nearest-neighbour through the same registration) plus ``splits.csv``.
With ``--pseudo-per-scan K``, also writes ``CACHE/<site>/pseudo/<stem>.npz``: K anomalous copies
of each ``train`` scan (:mod:`training.pseudo`), seeded by (``--seed``, site, scan). Cached files are kept.
"""
from __future__ import annotations

import argparse
import csv
import json
import zlib
from pathlib import Path

import numpy as np
from tqdm import tqdm

from napari_brainuad.io import atomic_write
from napari_brainuad.template import mni152

from .data import SITES, load_preprocessed
from .pseudo import BLOB_FRACTION, lesion_masks_on_grid, pseudo_pathology


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder holding the site folders")
    p.add_argument("--cache", type=Path, default=Path("cache"), help="cache root (one folder per site)")
    p.add_argument("--sites", nargs="+", default=list(SITES), choices=list(SITES))
    p.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    p.add_argument("--pseudo-per-scan", type=int, default=0, help="anomalous copies of each train scan")
    p.add_argument("--lesion-masks", type=Path, default=Path("../shared/data/lesion-masks/mslub-mni"),
                   help="real lesion masks that start fluid-driven anomalies")
    p.add_argument("--blob-fraction", type=float, nargs=2, default=list(BLOB_FRACTION), metavar=("LOW", "HIGH"),
                   help="range of the brain's fraction the random-blob anomalies cover (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)


def main(args) -> int:
    lesion_masks = None
    for site_name in args.sites:
        site, cache = SITES[site_name], args.cache / site_name
        cache.mkdir(parents=True, exist_ok=True)
        scans = [s for split in args.splits for s in site.scans(args.data, split)]
        rows = [{"subject": s.subject, "file": s.path.name, "split": s.split} for s in site.scans(args.data)]
        _write_splits(cache / "splits.csv", rows)
        for scan in tqdm(scans, desc=f"prepare {site_name}"):
            load_preprocessed(scan.path, cache, brain_mask=scan.brain_mask, labels=scan.labels)
        print(f"{len(scans)} {site_name} scans cached in {cache}")
        if args.pseudo_per_scan:
            if lesion_masks is None:
                lesion_masks = lesion_masks_on_grid(args.lesion_masks, mni152())
            train = site.scans(args.data, "train")
            for i, scan in enumerate(tqdm(train, desc=f"pseudo-pathology {site_name}")):
                write_pseudo(cache, scan.stem, args.pseudo_per_scan, lesion_masks,
                             [args.seed, zlib.crc32(site_name.encode()), i], tuple(args.blob_fraction))
    return 0


def write_pseudo(cache: Path, stem: str, count: int, lesion_masks: list, seed: list[int],
                 blob_fraction: tuple[float, float] = BLOB_FRACTION) -> Path:
    """``count`` anomalous copies of a cached scan, as ``cache/pseudo/<stem>.npz``. A file already there is
    kept (prepare resumes) if it was made with the same settings; other settings are one clear error."""
    path = cache / "pseudo" / f"{stem}.npz"
    settings = json.dumps({"count": count, "seed": list(seed), "blob_fraction": list(blob_fraction)})
    if path.exists():
        with np.load(path) as z:
            made = str(z["settings"]) if "settings" in z.files else None  # files of earlier versions say nothing
        if made is not None and made != settings:
            raise SystemExit(f"{path}: made with other pseudo-pathology settings ({made}); prepare a cache of its "
                             f"own for {settings}.")
        return path
    with np.load(cache / f"{stem}.npz") as z:
        image, mask = z["image"], z["mask"]
    rng = np.random.default_rng(seed)
    copies = [pseudo_pathology(image, mask, rng, lesion_masks, blob_fraction) for _ in range(count)]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: np.savez_compressed(
        tmp, images=np.stack([c.image for c in copies]).astype(np.float16),
        lesions=np.stack([c.lesion for c in copies]), kinds=np.array([c.kind for c in copies]),
        settings=np.array(settings)))
    return path


def _write_splits(path: Path, rows: list[dict]) -> None:
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["subject", "file", "split"])
            writer.writeheader()
            writer.writerows(rows)
    atomic_write(path, write)
