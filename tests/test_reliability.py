"""Killed at random moments, a batch loses nothing and a training resumes to the same weights.

Each test kills its subprocess with SIGKILL ``BRAINUAD_KILLS`` times (3 by default, as in CI) at
seeded random moments; the long run documented in the README is
``BRAINUAD_KILLS=25 .venv/bin/python -m pytest tests/test_reliability.py``.
"""
import csv
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from conftest import healthy_cache, phantom_scan
from napari_brainuad.outdir import LOCK_FILE
from test_training import tiny_recipe
from training.fit import CHECKPOINT

ROOT = Path(__file__).resolve().parents[1]
KILLS = int(os.environ.get("BRAINUAD_KILLS", "3"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
CLI = [sys.executable, "-c", "import sys; from napari_brainuad.cli import main; sys.exit(main())"]
KINDS = ("reconstruction.nii.gz", "anomaly.nii.gz", "mask.nii.gz", "findings.csv")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def kill_after(cmd: list[str], seconds: float) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=ROOT)
    try:
        proc.wait(timeout=seconds)  # may finish first; then there is nothing to kill
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def assert_outputs_complete(out: Path) -> None:
    """Every visible output file is whole: NIfTI data decompress (gzip CRC) and CSVs parse."""
    for path in out.iterdir():
        if path.name.startswith("."):
            continue  # an atomic write's temporary (the next run removes it) or the lock file
        if path.name.endswith(".nii.gz"):
            assert np.isfinite(nib.load(path).get_fdata()).all()
        elif path.suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                rows = list(reader)
            assert reader.fieldnames and all(None not in row for row in rows)
        else:
            json.loads(path.read_text())


def test_batch_killed_at_random_moments_loses_nothing(tmp_path):
    inputs = tmp_path / "in scans"  # a space in the path, too
    inputs.mkdir()
    scans = max(4, KILLS // 2 + 2)  # enough work that most kills land mid-batch
    for i in range(scans):
        image = phantom_scan(step=2)
        data = image.get_fdata(dtype=np.float32) * np.float32(1 + 0.1 * i)
        nib.save(nib.Nifti1Image(data, image.affine), inputs / f"sub-{i}.nii.gz")
    (inputs / "broken.nii.gz").write_bytes(b"this is not a NIfTI file")
    before = {p.name: sha256(p) for p in inputs.iterdir()}
    out = tmp_path / "out"
    cmd = [*CLI, "batch", str(inputs), "--model", "intensity-t1", "--out", str(out), "--device", "cpu"]
    rng = random.Random(0)
    for k in range(KILLS):
        kill_after(cmd, rng.uniform(1.0, 9.0))
        if out.exists():
            assert_outputs_complete(out)
            print(f"batch kill {k + 1}: {len(list(out.glob('*_findings.csv')))} of {scans} scans complete, "
                  f"{len(list(out.glob('.*')))} temporaries")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV, cwd=ROOT)
    assert done.returncode == 1, done.stderr[-2000:]  # the broken file
    assert_outputs_complete(out)
    expected = {f"sub-{i}_{kind}" for i in range(scans) for kind in KINDS} | {"summary.csv", "batch.json", LOCK_FILE}
    assert {p.name for p in out.iterdir()} == expected  # no temporaries left, nothing for the broken file
    with open(out / "summary.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["file"]).name for r in rows] == sorted(before)
    assert [r["status"] for r in rows][0] == "error" and {r["status"] for r in rows[1:]} <= {"ok", "skipped"}
    for row in rows[1:]:
        with open(out / f"{Path(row['file']).name.split('.')[0]}_findings.csv", newline="") as f:
            assert int(row["n_findings"]) == len(list(csv.DictReader(f)))
    assert {p.name: sha256(p) for p in inputs.iterdir()} == before


def checkpoint_step(run: Path) -> int:
    path = run / CHECKPOINT
    return int(torch.load(path, weights_only=True)["step"]) if path.exists() else 0


def test_training_killed_and_resumed_reaches_the_same_weights(tmp_path):
    cache = healthy_cache(tmp_path)
    steps = 10 * KILLS + 120  # 15 checkpoints or more, so every kill can land later than the one before
    recipe = tiny_recipe("ae", steps=steps)
    recipe_path = tmp_path / "recipe.json"
    recipe_path.write_text(json.dumps(recipe))

    def fit_cmd(run: Path, resume: bool) -> list[str]:
        return [sys.executable, "-m", "training", "fit", str(recipe_path), "--data", str(cache), "--out", str(run),
                "--device", "cpu", "--threads", "1", "--checkpoint-steps", "10", *(["--resume"] if resume else [])]

    straight = subprocess.run(fit_cmd(tmp_path / "straight", False), capture_output=True, text=True, env=ENV,
                              cwd=ROOT, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]
    rng = random.Random(1)
    run = tmp_path / "killed"
    killed_at = []
    for k, target in enumerate(sorted(rng.sample(range(10, steps - 10), KILLS))):
        target = max(target, checkpoint_step(run) + 1)
        proc = subprocess.Popen(fit_cmd(run, resume=k > 0), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=ENV, cwd=ROOT)
        while proc.poll() is None and checkpoint_step(run) < target:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))  # land anywhere: inside a step or inside a checkpoint write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at.append(checkpoint_step(run))
        torn = len(list(run.glob(".*"))) if run.exists() else 0
        print(f"training kill {k + 1}: last checkpoint at step {killed_at[-1]}, {torn} torn checkpoint writes")
    resumed = subprocess.run(fit_cmd(run, True), capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert any(0 < s < steps for s in killed_at), f"no kill landed mid-training (checkpoints {killed_at})"
    a = torch.load(tmp_path / "straight" / CHECKPOINT, weights_only=True)
    b = torch.load(run / CHECKPOINT, weights_only=True)
    assert a["step"] == b["step"] == steps
    for key in a["network"]:
        assert torch.equal(a["network"][key], b["network"][key]), key
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporaries survive the resume


def test_peak_memory_of_a_large_volume_is_bounded(tmp_path):
    """Detection on a 256^3 scan needs at most 6 float32 copies of it beyond what a tiny scan needs."""
    from scipy import ndimage

    from napari_brainuad.template import mni152
    from training.bench_memory import PROBE

    tpl = mni152()
    factor = 256 / np.array(tpl.shape)
    big = ndimage.zoom(tpl.image.astype(np.float32) * 1000, factor, order=1)[:256, :256, :256]
    affine = tpl.affine.copy()
    affine[:3, :3] /= factor
    nib.save(nib.Nifti1Image(big, affine), tmp_path / "big.nii")
    nib.save(phantom_scan(step=2, lesion=False), tmp_path / "small.nii")
    peak = {}
    for name in ("small", "big"):
        done = subprocess.run([sys.executable, "-c", PROBE, "detect", str(tmp_path / f"{name}.nii"), "--model",
                               "intensity-t1", "--out", str(tmp_path / name), "--device", "cpu"],
                              capture_output=True, text=True, env=ENV, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-2000:]
        peak[name] = int(next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("PEAK_KIB")))
    volume_kib = big.size * 4 / 1024
    extra = (peak["big"] - peak["small"]) / volume_kib
    print(f"peak RSS {peak['small'] / 1024:.0f} MiB (tiny scan), {peak['big'] / 1024:.0f} MiB (256^3): "
          f"{extra:.1f} float32 volumes more")
    assert extra < 6.0
