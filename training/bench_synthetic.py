"""Speed of the synthetic-anomaly generators on healthy IXI scans; writes benchmarks/synthetic.md.

Times :func:`shape_anomaly` and :func:`fluid_anomaly` (random blobs, advection-diffusion, encoding)
on whole 2 mm volumes (96x112x96) and on single axial slices (96x112), one CPU thread, so the
figures say whether they can make training pairs on the fly.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from napari_brainuad.io import atomic_write
from napari_brainuad.synthetic import SHAPE_KINDS, fluid_anomaly, shape_anomaly

from .cases import healthy_cases


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--cache", type=Path, default=Path("cache/ixi"))
    p.add_argument("--repeats", type=int, default=20, help="anomalies per scan and kind")
    p.add_argument("--out", type=Path, default=Path("benchmarks"))


def _time(make, inputs, repeats: int) -> np.ndarray:
    seconds = []
    for i, (image, mask) in enumerate(inputs):
        for k in range(repeats):
            rng = np.random.default_rng([i, k])
            start = time.perf_counter()
            make(image, mask, rng)
            seconds.append(time.perf_counter() - start)
    return np.array(seconds)


def main(args) -> int:
    torch.set_num_threads(1)
    scans = healthy_cases(args.data, args.cache)
    volumes = [(c.image, c.mask) for c in scans]
    slices = [(c.image[..., 45], c.mask[..., 45]) for c in scans]
    kinds = {"shape (box or ellipsoid)": lambda x, m, rng: shape_anomaly(x, m, rng, SHAPE_KINDS[rng.integers(2)]),
             "fluid-driven (blobs P0)": lambda x, m, rng: fluid_anomaly(x, m, rng)}
    rows = []
    for kind, make in kinds.items():
        for where, inputs in (("volume 96x112x96", volumes), ("slice 96x112", slices)):
            s = _time(make, inputs, args.repeats)
            rows.append((kind, where, len(s), np.median(s) * 1000, np.percentile(s, 95) * 1000))
            print(rows[-1], flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    lines = ["# Synthetic anomaly generators: speed", "",
             f"Made by `python -m training bench-synthetic --data {args.data}` on {time.strftime('%Y-%m-%d')}; "
             f"machine: {cpu}, 1 thread. Inputs: the 4 IXI `test` scans on the 2 mm model grid "
             f"(slices: axial index 45), {args.repeats} anomalies per scan and kind.", "",
             "| generator | input | samples | median ms | 95th percentile ms |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {k} | {w} | {n} | {m:.1f} | {p:.1f} |" for k, w, n, m, p in rows]
    text = "\n".join(lines) + "\n"
    atomic_write(args.out / "synthetic.md", lambda tmp: Path(tmp).write_text(text))
    return 0
