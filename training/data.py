"""Reading the healthy IXI split and preprocessing it once (cached as .npz in template space)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from napari_brainuad.io import atomic_write, read_volume
from napari_brainuad.preprocess import preprocess


def split_files(data_dir: Path, split: str) -> list[Path]:
    """Scans of one split (``train``, ``val`` or ``test``) listed in ``data_dir/splits.csv``."""
    with open(Path(data_dir) / "splits.csv", newline="") as f:
        return [Path(data_dir) / row["file"] for row in csv.DictReader(f) if row["split"] == split]


def load_preprocessed(path: Path, cache_dir: Path | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask) of a scan on the model grid; read from ``cache_dir`` when cached there."""
    cached = Path(cache_dir) / f"{Path(path).name.split('.')[0]}.npz" if cache_dir else None
    if cached is not None and cached.exists():
        with np.load(cached) as z:
            return z["image"], z["mask"]
    p = preprocess(read_volume(path), seed=seed)
    if cached is not None:
        atomic_write(cached, lambda tmp: np.savez_compressed(open(tmp, "wb"), image=p.image, mask=p.mask))
    return p.image, p.mask
