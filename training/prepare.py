"""Preprocess a folder of healthy scans once into a cache of model-grid volumes (.npz).

Reads ``DATA/splits.csv`` (columns subject, file, split), runs the plugin's own preprocessing
(skull stripping, registration to MNI152 2 mm, normalisation) on each file and writes
``CACHE/<subject>.npz`` (image, mask) plus a copy of ``splits.csv``. Cached files are kept.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from tqdm import tqdm

from .data import load_preprocessed, split_files


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=Path("../shared/data/ixi-t1-2mm"), help="folder with splits.csv")
    p.add_argument("--cache", type=Path, default=Path("cache/ixi"))
    p.add_argument("--splits", nargs="+", default=["train", "val", "test"])


def main(args) -> int:
    args.cache.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.data / "splits.csv", args.cache / "splits.csv")
    files = [f for split in args.splits for f in split_files(args.data, split)]
    for path in tqdm(files, desc="prepare"):
        load_preprocessed(path, args.cache)
    print(f"{len(files)} scans cached in {args.cache}")
    return 0
