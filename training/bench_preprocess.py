"""Benchmark preprocessing (skull stripping, registration, round trip) on the real scans.

For every IXI scan (``ixi-t1-2mm/splits.csv``) and the development lesion cases, times
``preprocess(read_volume(path))`` on a fixed number of CPU threads, and measures:

- ``dice_template``: Dice between the registered brain mask and the MNI152 template brain mask;
- ``roundtrip_mae``: mean absolute difference, inside the native brain mask eroded by one voxel,
  between the native image scaled like the model input (``normalise_intensity`` on the native
  grid) and the model input mapped back with ``Preprocessed.to_native`` ([0, 1] units);
- ``roundtrip_dice``: Dice between the registered brain mask mapped back (nearest) and the
  native brain mask.

Writes ``OUT/preprocess.csv`` (one row per scan) and ``OUT/preprocess.md`` (header with the
command, date, machine and versions; IXI summary; one row per lesion case).
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import platform
import sys
import time
import traceback
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

FIELDS = [
    "set", "case", "path", "split", "shape", "spacing_mm", "brain_mask_given", "looks_skull_stripped",
    "skull_stripped", "native_brain_ml", "time_s", "strip_s", "register_s", "resample_s",
    "dice_template", "roundtrip_mae", "roundtrip_dice", "error",
]

LESION_CASES = [
    # (case name, image path, brain mask path or None), relative to --data
    ("mslub/patient26 T1", "mslub/patient26/T1.nii.gz", None),
    ("brats2013/pat0001 T1c", "brats2013/pat0001/T1c_subtrMeanDivStd.nii.gz", "brats2013/pat0001/brainmask.nii.gz"),
    ("brats2013/pat0001 Flair", "brats2013/pat0001/Flair_subtrMeanDivStd.nii.gz", "brats2013/pat0001/brainmask.nii.gz"),
    ("brats2013/pat0002 T1c", "brats2013/pat0002/T1c_subtrMeanDivStd.nii.gz", "brats2013/pat0002/brainmask.nii.gz"),
    ("brats2013/pat0002 Flair", "brats2013/pat0002/Flair_subtrMeanDivStd.nii.gz", "brats2013/pat0002/brainmask.nii.gz"),
    ("stroke-cstar T1", "unlabelled/stroke-cstar/T1.nii.gz", None),
    ("brats2023-met-00110 T1", "unlabelled/brats2023-met-00110/t1.nii.gz", None),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=Path("../shared/data"),
                        help="the shared real-data folder (default: ../shared/data)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks"),
                        help="where preprocess.csv and preprocess.md go (default: benchmarks)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="only the first N IXI scans (quick runs)")
    parser.add_argument("--threads", type=int, default=2, metavar="N",
                        help="CPU threads for torch and SimpleITK (default: 2)")


def main(args: argparse.Namespace) -> int:
    import SimpleITK as sitk
    import torch
    from tqdm import tqdm

    from napari_brainuad.io import atomic_write
    from napari_brainuad.template import mni152

    data = Path(args.data)
    split_file = data / "ixi-t1-2mm" / "splits.csv"
    if not split_file.is_file():
        print(f"{split_file}: not found; give the shared data folder with --data.", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(args.threads)

    ixi = _ixi_cases(data, args.limit)
    lesion = [("lesion", name, img, None, mask) for name, img, mask in LESION_CASES]
    template = mni152()

    load_start = os.getloadavg()[0]
    # Warm-up: the first call loads deepbet's model (and torch kernels); time it, but separately.
    t0 = time.perf_counter()
    warm = _measure(data, *ixi[0], template)
    warm_s = time.perf_counter() - t0

    rows = []
    cases = ixi + lesion
    bar = tqdm(cases, desc="preprocess", unit="scan")
    for case in bar:
        bar.set_postfix_str(case[1])
        row = _measure(data, *case, template)
        if row["error"]:
            tqdm.write(f"{case[1]}: FAILED: {row['error']}")
        rows.append(row)
    bar.close()

    command = _command(args)
    md = _report(rows, command, args.threads, warm_s, warm, (load_start, os.getloadavg()[0]))
    out = Path(args.out)
    atomic_write(out / "preprocess.csv", lambda tmp: Path(tmp).write_text(_csv(rows), encoding="utf-8"))
    atomic_write(out / "preprocess.md", lambda tmp: Path(tmp).write_text(md, encoding="utf-8"))
    print(md)
    print(f"wrote {out / 'preprocess.csv'} and {out / 'preprocess.md'}")
    return 1 if any(r["error"] for r in rows) else 0


def _ixi_cases(data: Path, limit: int | None) -> list[tuple]:
    with open(data / "ixi-t1-2mm" / "splits.csv", newline="", encoding="utf-8") as f:
        entries = list(csv.DictReader(f))
    if limit is not None:
        entries = entries[: max(limit, 1)]
    return [("ixi", e["subject"], f"ixi-t1-2mm/{e['file']}", e["split"], None) for e in entries]


def _measure(data: Path, kind: str, name: str, rel: str, split: str | None, mask_rel: str | None, template) -> dict:
    """Preprocess one scan and measure it; failures become a row with ``error`` set."""
    from napari_brainuad.io import read_volume
    from napari_brainuad.preprocess import iter_preprocess, looks_skull_stripped
    from napari_brainuad.progress import run

    row = dict.fromkeys(FIELDS, "")
    row.update(set=kind, case=name, path=rel, split=split or "", brain_mask_given=mask_rel is not None)
    try:
        volume = read_volume(data / rel)
        row["shape"] = "x".join(str(s) for s in volume.shape)
        row["spacing_mm"] = "x".join(f"{s:.3g}" for s in volume.spacing)
        row["looks_skull_stripped"] = bool(looks_skull_stripped(volume))
        brain_mask = read_volume(data / mask_rel).data > 0 if mask_rel else None

        marks: list[tuple[str, float]] = []
        start = time.perf_counter()
        p = run(iter_preprocess(volume, template=template, brain_mask=brain_mask),
                lambda step: marks.append((step.stage, time.perf_counter())))
        end = time.perf_counter()
        row["time_s"] = end - start
        row.update(_stage_times(marks, start, end))

        row["skull_stripped"] = bool(p.skull_stripped)
        row["native_brain_ml"] = float(p.native_mask.sum()) * volume.voxel_volume_ml
        row["dice_template"] = dice(p.mask, template.mask)
        row["roundtrip_mae"], row["roundtrip_dice"] = round_trip(p)
    except Exception as exc:  # a benchmark reports failures per scan and goes on
        row["error"] = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
        traceback.print_exc(file=sys.stderr)
    return row


def _stage_times(marks: list[tuple[str, float]], start: float, end: float) -> dict:
    """Seconds spent in each stage, from the times the progress steps were reported."""
    times = {"strip_s": 0.0, "register_s": 0.0, "resample_s": 0.0}
    keys = {"skull": "strip_s", "registration": "register_s", "resampling": "resample_s"}
    bounds = marks + [("end", end)]
    for (stage, t), (_, t_next) in zip(bounds[:-1], bounds[1:]):
        for word, key in keys.items():
            if word in stage:
                times[key] += t_next - t
    return times


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 2.0 * float(np.logical_and(a, b).sum()) / total if total else 1.0


def round_trip(p) -> tuple[float, float]:
    """(MAE inside the eroded native brain, Dice of the mask) for native -> template -> native."""
    from scipy import ndimage

    from napari_brainuad.preprocess import normalise_intensity

    native = normalise_intensity(p.native.data.astype(np.float32), p.native_mask)
    back = p.to_native(p.image, "linear")
    inner = ndimage.binary_erosion(p.native_mask, iterations=1)
    if not inner.any():
        inner = p.native_mask
    mae = float(np.abs(back[inner] - native[inner]).mean())
    mask_back = p.to_native(p.mask.astype(np.float32), "nearest") > 0.5
    return mae, dice(mask_back, p.native_mask)


def _command(args: argparse.Namespace) -> str:
    parts = ["python -m training bench-preprocess", f"--data {args.data}", f"--out {args.out}",
             f"--threads {args.threads}"]
    if args.limit is not None:
        parts.append(f"--limit {args.limit}")
    return " ".join(parts)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def _stats(values: list[float], how: str) -> str:
    if not values:
        return "-"
    fn = {"median": np.median, "max": np.max, "min": np.min}[how]
    return f"{float(fn(values)):.3f}"


def summary(rows: list[dict]) -> dict:
    """n, failures and the summary statistics of a set of rows."""
    ok = [r for r in rows if not r["error"]]

    def col(key):
        return [float(r[key]) for r in ok]

    return {
        "n": len(rows), "failed": len(rows) - len(ok),
        "time_median": _stats(col("time_s"), "median"), "time_max": _stats(col("time_s"), "max"),
        "dice_median": _stats(col("dice_template"), "median"), "dice_min": _stats(col("dice_template"), "min"),
        "mae_median": _stats(col("roundtrip_mae"), "median"), "mae_max": _stats(col("roundtrip_mae"), "max"),
        "rt_dice_median": _stats(col("roundtrip_dice"), "median"),
        "rt_dice_min": _stats(col("roundtrip_dice"), "min"),
    }


def _fmt(v, digits: int = 3) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v) if v != "" else "-"


def _report(rows: list[dict], command: str, threads: int, warm_s: float, warm: dict,
            load: tuple[float, float]) -> str:
    import torch

    ixi = [r for r in rows if r["set"] == "ixi"]
    lesion = [r for r in rows if r["set"] == "lesion"]
    s = summary(ixi)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Preprocessing benchmark",
        "",
        f"Made by `{command}` on {now}.",
        "",
        f"- Machine: {_cpu_model()}, {threads} threads (torch {torch.get_num_threads()}, SimpleITK global default), "
        f"Python {platform.python_version()}, {platform.system()} {platform.machine()}; "
        f"{os.cpu_count()} CPUs, 1-minute load average {load[0]:.2f} at the start and {load[1]:.2f} at the end "
        "(other work on the machine slows the times). The registration itself runs on 1 thread "
        "(`register_affine`, for exact repeatability).",
        f"- Versions: SimpleITK {_version('SimpleITK')}, deepbet {_version('deepbet')}, nilearn {_version('nilearn')}, "
        f"torch {_version('torch')}, numpy {_version('numpy')}, napari-brainuad {_version('napari-brainuad')}.",
        f"- Times are wall time of `preprocess(read_volume(path))` (skull stripping, affine registration, "
        f"resampling, scaling). The first call, on {warm['case']}, also loads deepbet's model: "
        f"{warm_s:.1f} s, not counted below.",
        "- Dice (template): registered brain mask vs the MNI152 2 mm template mask. Round trip: the model "
        "input mapped back to the native grid vs the native image scaled the same way (MAE in [0, 1] units, "
        "inside the native brain mask eroded by 1 voxel), and the registered mask mapped back vs the native mask.",
        "",
        "## IXI healthy T1 (whole head, 2 mm, native space)",
        "",
        "| n | failed | time median (s) | time max (s) | Dice template median | Dice template min "
        "| round-trip MAE median | round-trip MAE max | round-trip mask Dice median | round-trip mask Dice min |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {s['n']} | {s['failed']} | {s['time_median']} | {s['time_max']} | {s['dice_median']} | {s['dice_min']} "
        f"| {s['mae_median']} | {s['mae_max']} | {s['rt_dice_median']} | {s['rt_dice_min']} |",
        "",
    ]
    ok = [r for r in ixi if not r["error"]]
    if ok:
        stage = {k: float(np.median([r[k] for r in ok])) for k in ("strip_s", "register_s", "resample_s")}
        lines += [
            f"Median time per stage: skull stripping {stage['strip_s']:.2f} s, registration "
            f"{stage['register_s']:.2f} s, resampling and scaling {stage['resample_s']:.2f} s.",
            "",
            "Lowest template Dice: " + ", ".join(
                f"{r['case']} {r['dice_template']:.3f}" for r in sorted(ok, key=lambda r: r["dice_template"])[:3]
            ) + ".",
            "",
        ]
    failed = [r for r in rows if r["error"]]
    lines += [
        "## Development lesion cases",
        "",
        "| case | shape | mask given | looks skull-stripped | deepbet ran | brain (ml) | time (s) "
        "| Dice template | round-trip MAE | round-trip mask Dice |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in lesion:
        lines.append(
            f"| {r['case']} | {_fmt(r['shape'])} | {_fmt(r['brain_mask_given'])} | {_fmt(r['looks_skull_stripped'])} "
            f"| {_fmt(r['skull_stripped'])} | {_fmt(r['native_brain_ml'], 0)} | {_fmt(r['time_s'], 2)} "
            f"| {_fmt(r['dice_template'])} | {_fmt(r['roundtrip_mae'])} | {_fmt(r['roundtrip_dice'])} |"
        )
    lines.append("")
    if failed:
        lines += ["## Failures", ""] + [f"- {r['case']}: {r['error']}" for r in failed] + [""]
    return "\n".join(lines)
