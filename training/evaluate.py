"""Evaluate models on healthy, synthetic and real lesion scans; write benchmarks/RESULTS.md, CSVs and figures.

Datasets (see ``training.cases``): the healthy ``test`` scans of the IXI and OASIS site caches
(false positives at the card threshold, reconstruction SSIM and MAE), the OASIS rescan pairs
(agreement of the flagged masks), IXI ``test`` with synthetic shapes and with fluid-driven
anomalies (``--per-scan`` seeded copies each), OASIS ``test`` with fluid-driven anomalies
(``--oasis-per-scan``), MSLUB patient26 T1 and BraTS 2013 pat0001-0002 T1c. Metrics are voxel-level
on the 2 mm model grid inside the brain mask: AP, AUROC and best Dice pooled over the dataset's
voxels; per-volume best Dice, Dice and false-positive rate at the card's threshold averaged over
volumes; on healthy scans, the share and volume (ml) flagged per scan. Seconds: reconstruction plus
anomaly map per volume on the model grid, and one full ``detect`` (preprocessing included) on
MSLUB T1. Everything is deterministic given ``--seed``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from monai.metrics import SSIMMetric

from napari_brainuad.io import read_volume
from napari_brainuad.metrics import (auroc, average_precision, best_dice, dice, false_positive_rate,
                                     precision_recall)
from napari_brainuad.models import find_card, load_model, model_names, write_card
from napari_brainuad.models.card import ModelCard
from napari_brainuad.models.families import FAMILIES
from napari_brainuad.pipeline import detect
from napari_brainuad.scoring import ScoringConfig
from napari_brainuad.template import mni152

from . import figures, partials
from .cases import LESION_CASES, Dataset, build_contrast_datasets, build_datasets
from .data import SITES
from .measures import AGREEMENT, anomaly_energy, flagged_ml, lesion_kept, pooled_kept, rescan_agreement
from .report import BASELINE, RESCANS, command_line, machine, write_figures, write_report

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", help="model names or folders (default: all bundled)")
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--cache", type=Path, default=Path("cache"),
                   help="root of the site caches made by 'prepare' (reads CACHE/ixi and CACHE/oasis)")
    p.add_argument("--out", type=Path, default=Path("benchmarks"))
    p.add_argument("--per-scan", type=int, default=4, help="synthetic anomalies per healthy IXI test scan")
    p.add_argument("--oasis-per-scan", type=int, default=1, help="fluid-driven anomalies per healthy OASIS test scan")
    p.add_argument("--contrast-per-scan", type=int, default=1,
                   help="fluid-driven anomalies per OASIS test scan rendered in each other contrast (0: no contrasts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-card-update", action="store_true", help="do not write the figures into the cards")
    p.add_argument("--resume", action="store_true",
                   help="reuse the results an earlier run of the same command saved in OUT/partial for models whose "
                        "weights, card, data options and code are unchanged (a killed run goes on)")


def rescan_summary(model: str, pairs: list[tuple[str, str]], flagged: dict) -> tuple[dict, list[dict]]:
    """Summary row (means over pairs) and per-pair rows of the rescans' agreement; ``flagged``: name -> mask."""
    rows = [{"dataset": RESCANS, "case": f"{a} & {b}", "model": model, **rescan_agreement(flagged[a], flagged[b])}
            for a, b in pairs]
    summary = {"dataset": RESCANS, "model": model, "volumes": len(rows),
               **{k: float(np.mean([r[k] for r in rows])) for k in AGREEMENT},
               "pairs both empty": sum(not (flagged[a].any() or flagged[b].any()) for a, b in pairs)}
    return summary, rows


def evaluate_dataset(model, dataset: Dataset) -> tuple[dict, list[dict], dict]:
    """Summary row, per-volume rows, and material for figures and rescans.

    The dict holds ``panel`` (:func:`figures.panel` of the first case), ``curve`` (pooled PR curve) and ``flagged``
    (case name -> bool grid flagged at the card threshold; datasets with rescan pairs only).
    """
    card = model.card
    config = ScoringConfig.from_card(card.scoring)
    t_int = card.t_int["default"] if card.is_diffusion else None
    ssim = SSIMMetric(spatial_dims=3, data_range=1.0)
    rows, scores, truths, panel, kept = [], [], [], None, {}
    for case in dataset.cases:
        start = time.perf_counter()
        recon = model.reconstruct(case.image, case.mask, t_int=t_int)
        settled = model.scoring_for(case.image, case.mask, config, case.contrast)  # "auto": by the stated contrast
        score = model.anomaly_map(case.image, recon, case.mask, settled)
        seconds = time.perf_counter() - start
        s = score[case.mask]
        t = np.zeros(s.shape, bool) if case.lesion is None else case.lesion[case.mask]
        flagged = s >= card.threshold
        row = {"dataset": dataset.name, "case": case.name, "kind": case.kind, "model": card.name,
               "polarity": settled.polarity,
               "lesion voxels": int(t.sum()),
               "FPR@thr": false_positive_rate(flagged, t), "seconds": seconds}
        if dataset.healthy:
            pair = (torch.from_numpy(recon)[None, None], torch.from_numpy(case.image)[None, None])
            row.update({"SSIM": float(ssim(*pair)), "MAE": float(np.abs(recon - case.image)[case.mask].mean()),
                        "flagged %": 100.0 * float(flagged.mean()), "flagged ml": flagged_ml(flagged, mni152().affine)})
        else:
            best, at = best_dice(s, t)
            row.update({"AP": average_precision(s, t), "AUROC": auroc(s, t), "best Dice": best,
                        "FPR@best": false_positive_rate(s >= at, t), "Dice@thr": dice(flagged, t)})
            if case.healthy is not None:
                row["lesion kept"] = lesion_kept(recon, case.image, case.healthy, case.lesion)
                row["anomaly energy"] = anomaly_energy(case.image, case.healthy, case.lesion)
        if dataset.pairs:
            kept[case.name] = (score >= card.threshold) & case.mask
        rows.append(row)
        scores.append(s)
        truths.append(t)
        if panel is None:
            panel = figures.panel(case, recon, score, card.threshold)
    s, t = np.concatenate(scores), np.concatenate(truths)
    summary = _summary(dataset, card.name, rows, s, t)
    if "lesion kept" in rows[0]:
        summary["lesion kept"] = pooled_kept(rows)
    if dataset.paired:  # the copies that draw the same anomalies as the other site's
        summary["AP paired"] = average_precision(np.concatenate(scores[:dataset.paired]),
                                                 np.concatenate(truths[:dataset.paired]))
        summary["paired volumes"] = min(dataset.paired, len(rows))
        if "lesion kept" in rows[0]:
            summary["lesion kept paired"] = pooled_kept(rows[:dataset.paired])
    curve = (np.empty(0), np.empty(0), float("nan"))
    if not dataset.healthy:
        precision, recall, _ = precision_recall(s, t)
        curve = (*figures.thin_curve(precision, recall), summary["AP"])
    return summary, rows, {"panel": panel, "curve": curve, "flagged": kept}


def _summary(dataset: Dataset, model: str, rows: list[dict], s: np.ndarray, t: np.ndarray) -> dict:
    """A dataset's summary row from its per-volume rows and its pooled scores ``s`` and truth ``t``."""
    summary = {"dataset": dataset.name, "model": model, "volumes": len(rows)}
    for key in ("SSIM", "MAE", "FPR@thr", "FPR@best", "Dice@thr", "seconds"):
        if key in rows[0]:
            summary[key] = float(np.nanmean([r[key] for r in rows]))
    if dataset.healthy:
        ml = [r["flagged ml"] for r in rows]
        summary.update({"median flagged %": float(np.median([r["flagged %"] for r in rows])),
                        "median flagged ml": float(np.median(ml)), "max flagged ml": float(max(ml))})
    else:
        summary.update({"AP": average_precision(s, t), "AUROC": auroc(s, t), "best Dice": best_dice(s, t)[0],
                        "mean best Dice": float(np.mean([r["best Dice"] for r in rows]))})
    return summary


def evaluate_model(model, datasets: dict[str, Dataset]) -> partials.ModelResult:
    """One model on every dataset (its full-detect time is left for the caller to measure)."""
    summaries, volumes, plots = [], [], {}
    for dataset in datasets.values():
        summary, rows, plots[dataset.name] = evaluate_dataset(model, dataset)
        results = [(summary, rows)]
        if dataset.pairs:
            results.append(rescan_summary(model.card.name, dataset.pairs, plots[dataset.name]["flagged"]))
        for summary, rows in results:
            summaries.append(summary)
            volumes += rows
            print(_rounded(summary), flush=True)
    return partials.ModelResult(summaries, volumes, plots, model.card.family, time.strftime("%Y-%m-%d"))


def main(args) -> int:
    torch.set_num_threads(args.threads)
    datasets = build_datasets(args.data, args.cache, args.per_scan, args.seed, args.oasis_per_scan)
    contrasts = build_contrast_datasets(args.data, args.cache, args.contrast_per_scan, args.seed) \
        if args.contrast_per_scan else {}
    results: dict[str, partials.ModelResult] = {}
    bright_refs = [BASELINE]  # the bundled baseline, and any other intensity model evaluated (a scoring variant)
    for name in args.models or model_names():
        model = load_model(name, args.device)
        if model.card.family == "intensity" and model.card.name != BASELINE:
            bright_refs.append(name)
        other = contrasts if set(model.card.accepted_contrasts) - {"T1"} or model.card.family == "intensity" else {}
        key = partials.fingerprint(model.card, _options(args), [args.cache / site for site in SITES])
        result = partials.load(args.out / partials.FOLDER, model.card.name, key) if args.resume else None
        if result is None:
            result = evaluate_model(model, {**datasets, **other})
            start = time.perf_counter()
            detect(read_volume(args.data / LESION_CASES["MSLUB-26"][0]), model)
            result.detect_seconds = time.perf_counter() - start
            partials.save(args.out / partials.FOLDER, model.card.name, key, result)
        else:
            print(f"{model.card.name}: results of {result.evaluated} reused (--resume)", flush=True)
        results[model.card.name] = result
        if not args.no_card_update:
            _update_card(name, result.summaries, result.detect_seconds, args)
    for ref in bright_refs if contrasts else []:  # intensity baselines for bright lesions, other contrasts only
        bright = bright_baseline(args.device, ref)
        results[bright.card.name] = evaluate_model(bright, contrasts)
    write_figures({**datasets, **contrasts}, {m: r.plots for m, r in results.items()}, args.out / "figures")
    write_report(datasets, contrasts, results, args)
    return 0


def _options(args) -> dict:
    """The evaluation options a model's results depend on (see :mod:`training.partials`)."""
    options = {k: str(getattr(args, k)) for k in ("data", "cache", "per_scan", "oasis_per_scan", "contrast_per_scan",
                                                   "seed", "device")}
    return {**options, "machine": machine(args)}


def bright_baseline(device: str = "cpu", ref=BASELINE):
    """An intensity baseline (the bundled one unless ``ref`` names another, e.g. a scoring variant) with its
    polarity turned to bright lesions (T2, FLAIR, DWI), named ``intensity-bright`` for the bundled one and
    ``<name>-bright`` otherwise; its threshold is the T1 card's and is not reported."""
    card = find_card(ref)
    name = "intensity-bright" if card.name == BASELINE else f"{card.name}-bright"
    data = {**card.data, "name": name, "architecture": {**card.architecture, "polarity": "bright"}}
    return FAMILIES["intensity"](ModelCard(data, card.folder), device)


def _rounded(row: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}


def _update_card(name: str, summaries: list[dict], detect_seconds: float, args) -> None:
    card = find_card(name)
    data = dict(card.data)
    metrics = dict(data.get("metrics", {}))
    by_name = {s["dataset"]: {k: v for k, v in s.items() if k not in ("dataset", "model")} for s in summaries}
    metrics["evaluation"] = {"command": command_line(args), "machine": machine(args), "datasets": by_name,
                             "seconds per detect (MSLUB T1, preprocessing included)": detect_seconds}
    metrics["summary"] = {"healthy test voxels flagged": by_name["IXI healthy"]["FPR@thr"],
                          "OASIS healthy test voxels flagged": by_name["OASIS healthy"]["FPR@thr"],
                          "healthy SSIM": by_name["IXI healthy"]["SSIM"],
                          "synthetic fluid AP": by_name["IXI + fluid"]["AP"],
                          "OASIS synthetic fluid AP": by_name["OASIS + fluid"]["AP"],
                          "BraTS T1c AP": by_name["BraTS T1c"]["AP"],
                          "seconds/volume (CPU)": detect_seconds}
    for dataset in ("MSLUB-26 FLAIR", "BraTS FLAIR"):
        if dataset in by_name:
            metrics["summary"][f"{dataset} AP"] = by_name[dataset]["AP"]
    data["metrics"] = metrics
    write_card(card.folder, data)

