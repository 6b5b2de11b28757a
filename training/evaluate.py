"""Evaluate models on healthy, synthetic and real lesion scans; write benchmarks/RESULTS.md, CSVs and figures.

Datasets (see ``training.cases``): IXI ``test`` healthy (false positives, reconstruction SSIM and
MAE), the same scans with synthetic shapes and with fluid-driven anomalies (``--per-scan`` seeded
copies each), MSLUB patient26 T1 and BraTS 2013 pat0001-0002 T1c. Metrics are voxel-level on the
2 mm model grid inside the brain mask: AP, AUROC and best Dice pooled over the dataset's voxels;
per-volume best Dice, Dice and false-positive rate at the card's threshold averaged over volumes.
Seconds: reconstruction plus anomaly map per volume on the model grid, and one full ``detect``
(preprocessing included) on MSLUB T1. Everything is deterministic given ``--seed``.
"""
from __future__ import annotations

import argparse
import platform
import re
import time
from pathlib import Path

import numpy as np
import torch
from monai.metrics import SSIMMetric

from napari_brainuad.io import atomic_write, read_volume
from napari_brainuad.metrics import (auroc, average_precision, best_dice, dice, false_positive_rate,
                                     precision_recall)
from napari_brainuad.models import find_card, load_model, model_names, write_card
from napari_brainuad.pipeline import detect, write_csv
from napari_brainuad.scoring import ScoringConfig, anomaly_map

from . import figures
from .cases import LESION_CASES, Dataset, build_datasets

VOLUME_COLUMNS = ["dataset", "case", "model", "lesion voxels", "AP", "AUROC", "best Dice", "Dice@thr", "FPR@thr",
                  "SSIM", "MAE", "seconds"]
SUMMARY_COLUMNS = ["dataset", "model", "volumes", "AP", "AUROC", "best Dice", "mean best Dice", "Dice@thr", "FPR@thr",
                   "SSIM", "MAE", "seconds"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", help="model names or folders (default: all bundled)")
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--cache", type=Path, default=Path("cache/ixi"), help="preprocessed IXI cache")
    p.add_argument("--out", type=Path, default=Path("benchmarks"))
    p.add_argument("--per-scan", type=int, default=4, help="synthetic anomalies per healthy test scan")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-card-update", action="store_true", help="do not write the figures into the cards")


def evaluate_dataset(model, dataset: Dataset) -> tuple[dict, list[dict], dict]:
    """Summary row, per-volume rows, and plotting material (first case's volumes, pooled PR curve)."""
    card = model.card
    config = ScoringConfig.from_card(card.scoring)
    t_int = card.t_int["default"] if card.is_diffusion else None
    ssim = SSIMMetric(spatial_dims=3, data_range=1.0)
    rows, scores, truths, panel = [], [], [], None
    for case in dataset.cases:
        start = time.perf_counter()
        recon = model.reconstruct(case.image, case.mask, t_int=t_int)
        score = anomaly_map(case.image, recon, case.mask, config, device=model.device)
        seconds = time.perf_counter() - start
        s = score[case.mask]
        t = np.zeros(s.shape, bool) if case.lesion is None else case.lesion[case.mask]
        flagged = s >= card.threshold
        row = {"dataset": dataset.name, "case": case.name, "model": card.name, "lesion voxels": int(t.sum()),
               "FPR@thr": false_positive_rate(flagged, t), "seconds": seconds}
        if dataset.healthy:
            row["SSIM"] = float(ssim(torch.from_numpy(recon)[None, None], torch.from_numpy(case.image)[None, None]))
            row["MAE"] = float(np.abs(recon - case.image)[case.mask].mean())
        else:
            row.update({"AP": average_precision(s, t), "AUROC": auroc(s, t), "best Dice": best_dice(s, t)[0],
                        "Dice@thr": dice(flagged, t)})
        rows.append(row)
        scores.append(s)
        truths.append(t)
        if panel is None:
            panel = (recon, score, card.threshold)
    s, t = np.concatenate(scores), np.concatenate(truths)
    summary = {"dataset": dataset.name, "model": card.name, "volumes": len(rows)}
    for key in ("SSIM", "MAE", "FPR@thr", "Dice@thr", "seconds"):
        if key in rows[0]:
            summary[key] = float(np.mean([r[key] for r in rows]))
    curve = (np.empty(0), np.empty(0), float("nan"))
    if not dataset.healthy:
        summary.update({"AP": average_precision(s, t), "AUROC": auroc(s, t), "best Dice": best_dice(s, t)[0],
                        "mean best Dice": float(np.mean([r["best Dice"] for r in rows]))})
        precision, recall, _ = precision_recall(s, t)
        curve = (*figures.thin_curve(precision, recall), summary["AP"])
    return summary, rows, {"panel": panel, "curve": curve}


def main(args) -> int:
    torch.set_num_threads(args.threads)
    names = args.models or model_names()
    datasets = build_datasets(args.data, args.cache, args.per_scan, args.seed)
    figures.synthetic_examples(args.out / "figures" / "synthetic-examples.png", _examples(datasets))
    summaries, volumes, plots, speed = [], [], {d: {} for d in datasets}, {}
    for name in names:
        model = load_model(name, args.device)
        model_summaries = []
        for dataset in datasets.values():
            summary, rows, plot = evaluate_dataset(model, dataset)
            model_summaries.append(summary)
            volumes += rows
            plots[dataset.name][model.card.name] = plot
            print(_rounded(summary), flush=True)
        start = time.perf_counter()
        detect(read_volume(args.data / LESION_CASES["MSLUB-26"][0]), model)
        speed[model.card.name] = time.perf_counter() - start
        summaries += model_summaries
        if not args.no_card_update:
            _update_card(name, model_summaries, speed[model.card.name], args)
    for dataset in datasets.values():
        figures.dataset_figure(args.out / "figures" / f"{_slug(dataset.name)}.png", dataset.name, dataset.cases[0],
                               {m: p["panel"] for m, p in plots[dataset.name].items()},
                               {m: p["curve"] for m, p in plots[dataset.name].items()})
    write_report(datasets, summaries, volumes, speed, args)
    return 0


def _examples(datasets: dict[str, Dataset]) -> list[tuple[str, object]]:
    """One synthetic case of each kind: rectangle, ellipse, fluid from blobs, fluid from each real mask."""
    picked = {}
    for dataset in ("IXI + shapes", "IXI + fluid"):
        for case in datasets[dataset].cases:
            picked.setdefault(case.kind, case)
    labels = {"rectangle": "shape: box", "ellipse": "shape: ellipsoid", "fluid:blobs": "fluid: random blobs"}
    return [(labels.get(kind, f"fluid: {kind[6:]} mask"), case) for kind, case in picked.items()]


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _rounded(row: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}


def _update_card(name: str, summaries: list[dict], detect_seconds: float, args) -> None:
    card = find_card(name)
    data = dict(card.data)
    metrics = dict(data.get("metrics", {}))
    by_name = {s["dataset"]: {k: v for k, v in s.items() if k not in ("dataset", "model")} for s in summaries}
    metrics["evaluation"] = {"command": f"python -m training evaluate --data {args.data} --seed {args.seed}",
                             "machine": _machine(args), "datasets": by_name,
                             "seconds per detect (MSLUB T1, preprocessing included)": detect_seconds}
    metrics["summary"] = {"healthy test voxels flagged": by_name["IXI healthy"]["FPR@thr"],
                          "healthy SSIM": by_name["IXI healthy"]["SSIM"],
                          "synthetic fluid AP": by_name["IXI + fluid"]["AP"],
                          "BraTS T1c AP": by_name["BraTS T1c"]["AP"],
                          "seconds/volume (CPU)": detect_seconds}
    data["metrics"] = metrics
    write_card(card.folder, data)


def _machine(args) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return f"{cpu}, {args.threads} threads, {args.device}, torch {torch.__version__}"


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def write_report(datasets: dict[str, Dataset], summaries: list[dict], volumes: list[dict], speed: dict, args) -> None:
    out = args.out
    write_csv(out / "results.csv", SUMMARY_COLUMNS, [{k: _fmt(v) for k, v in r.items()} for r in summaries])
    write_csv(out / "results-per-volume.csv", VOLUME_COLUMNS, [{k: _fmt(v) for k, v in r.items()} for r in volumes])
    command = (f"python -m training evaluate --data {args.data} --per-scan {args.per_scan} --seed {args.seed} "
               f"--threads {args.threads}")
    lines = ["# Benchmark results", "",
             f"Made by `{command}` on {time.strftime('%Y-%m-%d')}; machine: {_machine(args)}. "
             "Per-volume rows: `results-per-volume.csv`; these tables: `results.csv`.", "",
             "Voxel-level metrics on the 2 mm model grid inside the brain mask. **AP**, **AUROC** and **best Dice** "
             "pool all voxels of the dataset (best Dice: the best single threshold for the whole dataset); "
             "**mean best Dice** is the best threshold per volume, averaged. **Dice@thr** and **FPR@thr** "
             "(fraction of non-lesion brain voxels flagged) use each model's calibrated threshold "
             "(0.5% of healthy IXI `val` voxels), averaged over volumes. **s** is reconstruction plus anomaly map "
             "per volume, preprocessing excluded.", "",
             "![synthetic examples](figures/synthetic-examples.png)", ""]
    for dataset in datasets.values():
        rows = [r for r in summaries if r["dataset"] == dataset.name]
        keys = ["SSIM", "MAE", "FPR@thr", "seconds"] if dataset.healthy else \
            ["AP", "AUROC", "best Dice", "mean best Dice", "Dice@thr", "FPR@thr", "seconds"]
        lines += [f"## {dataset.name}", "", dataset.description, "", f"{rows[0]['volumes']} volumes.", "",
                  "| model | " + " | ".join("s" if k == "seconds" else k for k in keys) + " |",
                  "| --- |" + " --- |" * len(keys)]
        lines += [f"| {r['model']} | " + " | ".join(_fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
        lines += ["", f"![{dataset.name}](figures/{_slug(dataset.name)}.png)", ""]
    lines += ["## Speed of one full detection", "",
              "`detect` on MSLUB patient26 T1 (1 mm, 182x218x182): skull-stripped input detection, registration, "
              "reconstruction, scoring and resampling back to the native grid.", "",
              "| model | seconds |", "| --- | --- |"] + [f"| {m} | {s:.1f} |" for m, s in speed.items()]
    text = "\n".join(lines) + "\n"
    atomic_write(out / "RESULTS.md", lambda tmp: Path(tmp).write_text(text))
