"""Benchmark cohort throughput on Dask distributed: ``brainuad batch --scheduler local`` with 1 and 2 workers.

Runs the same batch (the first ``--scans`` skull-stripped OASIS T1 scans of ``--data``, with
``--model``) into a fresh output folder once per worker count, each worker single-threaded, and
reports scans per minute, the wall time with and without starting the local cluster, the
speed-up over one worker and the mean seconds a worker spent per scan. Writes ``OUT/cohort.md``.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from napari_brainuad.cohort import dask_client
from napari_brainuad.models import load_model
from napari_brainuad.pipeline import batch

from .data import SITES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="the shared data root (reads oasis-malf/)")
    p.add_argument("--model", default="restore-t1")
    p.add_argument("--scans", type=int, default=16)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", type=Path, default=Path("benchmarks"))


def main(args) -> int:
    scans = [scan.path for scan in SITES["oasis"].scans(args.data)][: args.scans]
    if not scans:
        print(f"error: no OASIS scans listed under {args.data}", file=sys.stderr)
        return 2
    model = load_model(args.model, "cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cohort = Path(tmp) / "cohort"
        cohort.mkdir()
        for scan in scans:
            os.symlink(scan.resolve(), cohort / scan.name)
        for workers in args.workers:
            start = time.perf_counter()
            with dask_client("local", workers):
                pass
            startup = time.perf_counter() - start
            out = Path(tmp) / f"out-{workers}"
            start = time.perf_counter()
            items = batch(cohort, out, model, pattern="*.nii.gz", scheduler="local", workers=workers,
                          worker_device="cpu")
            wall = time.perf_counter() - start
            bad = [it for it in items if it.status != "ok"]
            if bad:
                print(f"error: {bad[0].file}: {bad[0].message}", file=sys.stderr)
                return 1
            per_scan = sum(it.seconds for it in items) / len(items)
            rows.append((workers, wall, wall - startup, len(items) / (wall - startup) * 60, per_scan))
            shutil.rmtree(out)
            print(f"{workers} worker(s): {wall:.1f} s wall, {wall - startup:.1f} s after cluster start-up, "
                  f"{rows[-1][3]:.1f} scans/min, {per_scan:.2f} s per scan on a worker")
    base = rows[0][3]
    lines = [
        "# Cohort throughput on Dask distributed", "",
        f"`python -m training bench-cohort --data DATA --model {args.model} --scans {args.scans} "
        f"--workers {' '.join(map(str, args.workers))}`, run {datetime.now(timezone.utc):%Y-%m-%d} on "
        f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores), CPU only: "
        f"{len(scans)} skull-stripped OASIS T1 scans (176x208x176, 1 mm), `brainuad batch --scheduler local` "
        "with single-threaded workers, preprocessing included.", "",
        "| workers | wall s | wall s after cluster start | scans/min | speed-up | s per scan on a worker |",
        "| --- | --- | --- | --- | --- | --- |",
        *[f"| {w} | {wall:.1f} | {steady:.1f} | {rate:.1f} | {rate / base:.2f}x | {scan:.2f} |"
          for w, wall, steady, rate, scan in rows],
        "",
        "Seconds per scan on a worker: detection with preprocessing, as `summary.csv` records it; the wall "
        "time adds each worker's start (imports, one model load) and the driver's bookkeeping.",
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cohort.md").write_text("\n".join(lines), encoding="utf-8")
    return 0
