"""Peak memory and time of one ``brainuad detect`` on very large scans; writes benchmarks/memory.md.

The scans are made from a real IXI T1 (whole head, 2 mm) upsampled to 0.5 mm, as int16 like scanner
output: ``head-0.5mm`` (480x480x360) and ``cube-512`` (the same head centred in a 512^3 grid).
Each runs in a fresh process; peak memory is that process's maximum resident set size.
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from napari_brainuad.io import atomic_write
from napari_brainuad.pipeline import write_csv

from .data import SITES
from .markdown import table


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--models", nargs="+", default=["intensity-t1", "dae-t1"])
    p.add_argument("--out", type=Path, default=Path("benchmarks"))
    p.add_argument("--work", type=Path, help="folder for the large scans (default: a temporary folder)")


def large_scans(source: Path, folder: Path) -> dict[str, Path]:
    """Write the two large test scans made from ``source``; returns name -> path."""
    img = nib.load(source)
    head = ndimage.zoom(np.asarray(img.dataobj, dtype=np.float32), 4, order=1)
    head = np.clip(np.round(head * (3000.0 / max(float(head.max()), 1.0))), 0, 32767).astype(np.int16)
    affine = img.affine.copy()
    affine[:3, :3] /= 4
    affine[:3, 3] += img.affine[:3, :3] @ np.full(3, -1.5 / 4)  # voxel centres of the finer grid
    cube = np.zeros((512, 512, 512), np.int16)
    offset = [(512 - n) // 2 for n in head.shape]
    cube[tuple(slice(o, o + n) for o, n in zip(offset, head.shape))] = head
    cube_affine = affine.copy()
    cube_affine[:3, 3] -= affine[:3, :3] @ np.array(offset, float)
    paths = {}
    for name, data, aff in (("head-0.5mm", head, affine), ("cube-512", cube, cube_affine)):
        paths[name] = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, aff), paths[name])
    return paths


PROBE = ("import resource, sys; from napari_brainuad.cli import main; code = main(sys.argv[1:]); "
         "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")
"""Runs ``brainuad`` in a fresh interpreter and prints that process's peak resident set size."""


def measure(path: Path, model: str, out: Path) -> dict:
    """Peak RSS (MiB) and wall time of ``brainuad detect`` in a fresh process."""
    cmd = [sys.executable, "-c", PROBE, "detect", str(path), "--model", model, "--out", str(out), "--device", "cpu"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{path.name} with {model} failed: {(done.stderr.strip() or 'no message').splitlines()[-1]}")
    peak_kib = int(next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("PEAK_KIB")))
    return {"peak_mib": peak_kib / 1024, "seconds": seconds}


def main(args) -> int:
    source = SITES["ixi"].scans(args.data, "test")[0].path
    rows = []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        for name, path in large_scans(source, Path(tmp)).items():
            shape = nib.load(path).shape
            for model in args.models:
                result = measure(path, model, Path(tmp) / "out")
                rows.append({"scan": name, "shape": "x".join(map(str, shape)),
                             "float32 volume MiB": f"{np.prod(shape) * 4 / 2**20:.0f}", "model": model,
                             "peak RSS MiB": f"{result['peak_mib']:.0f}", "seconds": f"{result['seconds']:.1f}"})
                print(rows[-1], flush=True)
    write_report(rows, args, source)
    return 0


def write_report(rows: list[dict], args, source: Path) -> None:
    columns = list(rows[0])
    write_csv(args.out / "memory.csv", columns, rows)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    lines = ["# Memory on very large scans", "",
             f"Made by `python -m training bench-memory --data {args.data}` on {time.strftime('%Y-%m-%d')}; "
             f"machine: {cpu}, 2 cores, CPU. Source scan: {source.name} (IXI, whole head), upsampled to 0.5 mm.", "",
             *table(columns, [[r[c] for c in columns] for r in rows])]
    text = "\n".join(lines) + "\n"
    atomic_write(args.out / "memory.md", lambda tmp: Path(tmp).write_text(text))
