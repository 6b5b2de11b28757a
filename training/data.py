"""Reading the healthy IXI split and preprocessing it once (cached as .npz in template space)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

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
        atomic_write(cached, lambda tmp: np.savez_compressed(tmp, image=p.image, mask=p.mask))
    return p.image, p.mask


class SliceData:
    """Axial slices (last grid axis) of cached healthy volumes that hold a substantial part of the brain.

    images, masks : (N, H, W) float32 slices in [0, 1] and their bool brain masks.
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray):
        self.images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        self.masks = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32))

    @classmethod
    def from_volumes(cls, volumes: list[tuple[np.ndarray, np.ndarray]], min_fraction: float = 0.15) -> "SliceData":
        """Keep slices whose brain area is at least ``min_fraction`` of the volume's largest slice."""
        images, masks = [], []
        for image, mask in volumes:
            area = mask.sum(axis=(0, 1))
            keep = area >= min_fraction * area.max()
            images.append(image[:, :, keep].transpose(2, 0, 1))
            masks.append(mask[:, :, keep].transpose(2, 0, 1))
        return cls(np.concatenate(images), np.concatenate(masks))

    @classmethod
    def from_cache(cls, cache_dir: Path, split: str) -> "SliceData":
        files = cached_split(cache_dir, split)
        if not files:
            raise FileNotFoundError(f"{cache_dir}: no cached '{split}' scans; run 'python -m training prepare' first.")
        volumes = []
        for path in files:
            with np.load(path) as z:
                volumes.append((z["image"], z["mask"]))
        return cls.from_volumes(volumes)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, size: int, generator: torch.Generator, augment: bool = True) -> torch.Tensor:
        """(size, 2, H, W): slices and masks drawn with ``generator``; random left-right flips and
        small affine jitter (MONAI RandAffine) when ``augment``."""
        index = torch.randint(len(self), (size,), generator=generator)
        batch = torch.stack([self.images[index], self.masks[index]], dim=1)
        if not augment:
            return batch
        from monai.transforms import RandAffine

        flip = torch.rand(size, generator=generator) < 0.5
        batch[flip] = batch[flip].flip(-2)  # axis H is left-right on the model grid
        affine = RandAffine(prob=1.0, rotate_range=0.08, scale_range=0.05, translate_range=(3, 3),
                            padding_mode="zeros", mode="bilinear")
        seeds = torch.randint(2**31 - 1, (size,), generator=generator)
        out = []
        for sample, seed in zip(batch, seeds):
            affine.set_random_state(seed=int(seed))
            out.append(torch.as_tensor(affine(sample)))
        batch = torch.stack(out)
        batch[:, 1] = (batch[:, 1] > 0.5).float()
        batch[:, 0] *= batch[:, 1]
        return batch


def cached_split(cache_dir: Path, split: str) -> list[Path]:
    """Cached .npz files of one split, per the cache's copy of ``splits.csv``."""
    with open(Path(cache_dir) / "splits.csv", newline="") as f:
        return [Path(cache_dir) / f"{row['file'].split('.')[0]}.npz" for row in csv.DictReader(f)
                if row["split"] == split and (Path(cache_dir) / f"{row['file'].split('.')[0]}.npz").exists()]
