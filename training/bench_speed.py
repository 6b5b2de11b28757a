"""Seconds of one full ``brainuad detect`` per model, as ``evaluate`` times it; writes benchmarks/speed.md.

The scan is MSLUB patient26 T1 (1 mm, 182x218x182, skull-stripped): registration, reconstruction,
scoring and resampling back, with the model loaded and warmed up by one detect first (``evaluate``
times the detect that follows its evaluation). Each model is timed ``--repeats`` times; the table gives
the median and the range, because single timings on a shared machine vary by several seconds.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from napari_brainuad.io import Volume, atomic_write, read_volume
from napari_brainuad.models import load_model, resolve_device
from napari_brainuad.pipeline import detect, write_csv

from .cases import LESION_CASES
from .markdown import table
from .report import machine

SCAN = "MSLUB-26"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--models", nargs="+", required=True, help="bundled model names or model folders")
    p.add_argument("--repeats", type=int, default=3, help="timed detects per model, after one warm-up")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda or cuda:N")
    p.add_argument("--out", type=Path, default=Path("benchmarks"))


def time_detect(volume: Volume, model, repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` detects of ``volume`` after one untimed warm-up."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    detect(volume, model)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        detect(volume, model)  # returns NumPy arrays: a GPU has finished when it returns
        seconds.append(time.perf_counter() - start)
    return seconds


def main(args) -> int:
    torch.set_num_threads(args.threads)
    args.device = resolve_device(args.device)  # the report names the device that ran
    volume = read_volume(args.data / LESION_CASES[SCAN][0])
    rows = []
    for name in args.models:
        model = load_model(name, args.device)
        seconds = time_detect(volume, model, args.repeats)
        rows.append({"model": model.card.name, "median s": f"{np.median(seconds):.1f}",
                     "min s": f"{min(seconds):.1f}", "max s": f"{max(seconds):.1f}", "device": args.device})
        print(rows[-1], flush=True)
    write_report(rows, args)
    return 0


def write_report(rows: list[dict], args) -> None:
    columns = list(rows[0])
    write_csv(args.out / "speed.csv", columns, rows)
    lines = ["# Speed of one full detection", "",
             f"Made by `python -m training bench-speed --models {' '.join(args.models)} --repeats {args.repeats} "
             f"--threads {args.threads} --device {args.device}` on {time.strftime('%Y-%m-%d')}; machine: {machine(args)}. "
             f"One `detect` of {LESION_CASES[SCAN][0]} (1 mm, skull-stripped) with the model loaded, after one "
             f"warm-up detect; median and range of {args.repeats}.", "",
             *table(columns, [[r[c] for c in columns] for r in rows])]
    text = "\n".join(lines) + "\n"
    atomic_write(args.out / "speed.md", lambda tmp: Path(tmp).write_text(text))
