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
from napari_brainuad.models.card import ModelCard
from napari_brainuad.models.families import FAMILIES
from napari_brainuad.pipeline import detect, write_csv
from napari_brainuad.scoring import ScoringConfig
from napari_brainuad.template import mni152

from . import figures, partials, seed_tables
from .cases import LESION_CASES, Dataset, build_contrast_datasets, build_datasets
from .data import SITES
from .markdown import table

RESCANS = "OASIS rescans"
BASELINE = "intensity-t1"
"""The intensity baseline every model must beat."""
TARGET_PERCENT, TARGET_ML = 0.5, 5.0
"""Targets for the median share (%) and volume (ml) of a healthy brain flagged per scan."""
AGREEMENT = ["rescan Dice", "flagged 1 in 2", "flagged 2 in 1"]
VOLUME_COLUMNS = ["dataset", "case", "model", "polarity", "lesion voxels", "AP", "AUROC", "best Dice", "FPR@best",
                  "Dice@thr", "FPR@thr", "lesion kept",
                  "flagged %", "flagged ml", "SSIM", "MAE", *AGREEMENT, "seconds"]
SUMMARY_COLUMNS = ["dataset", "model", "volumes", "AP", "AP paired", "paired volumes", "AUROC", "best Dice",
                   "mean best Dice", "FPR@best", "Dice@thr", "FPR@thr", "lesion kept", "lesion kept paired",
                   "median flagged %", "median flagged ml", "max flagged ml", "SSIM", "MAE", *AGREEMENT,
                   "pairs both empty", "seconds"]
HEALTHY_KEYS = ["SSIM", "MAE", "FPR@thr", "median flagged %", "median flagged ml", "max flagged ml", "seconds"]
LESION_KEYS = ["AP", "AUROC", "best Dice", "mean best Dice", "Dice@thr", "FPR@thr", "lesion kept", "seconds"]


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


def flagged_ml(flagged: np.ndarray, affine: np.ndarray) -> float:
    """Volume (ml) of the flagged voxels of a grid whose voxel-to-world ``affine`` is in mm."""
    return int(np.count_nonzero(flagged)) * abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0


def rescan_agreement(first: np.ndarray, second: np.ndarray) -> dict[str, float]:
    """Dice of two flagged masks of one brain, and the share of each one's flagged voxels flagged in the other.

    Both empty: full agreement (all 1). Only one empty: none (all 0).
    """
    a, b = np.asarray(first, bool), np.asarray(second, bool)
    na, nb, both = int(a.sum()), int(b.sum()), int(np.logical_and(a, b).sum())
    if na == 0 or nb == 0:
        return dict.fromkeys(AGREEMENT, float(na == nb))
    return dict(zip(AGREEMENT, (2 * both / (na + nb), both / na, both / nb)))


def rescan_summary(model: str, pairs: list[tuple[str, str]], flagged: dict) -> tuple[dict, list[dict]]:
    """Summary row (means over pairs) and per-pair rows of the rescans' agreement; ``flagged``: name -> mask."""
    rows = [{"dataset": RESCANS, "case": f"{a} & {b}", "model": model, **rescan_agreement(flagged[a], flagged[b])}
            for a, b in pairs]
    summary = {"dataset": RESCANS, "model": model, "volumes": len(rows),
               **{k: float(np.mean([r[k] for r in rows])) for k in AGREEMENT},
               "pairs both empty": sum(not (flagged[a].any() or flagged[b].any()) for a, b in pairs)}
    return summary, rows


def lesion_kept(reconstruction: np.ndarray, image: np.ndarray, healthy: np.ndarray, lesion: np.ndarray) -> float:
    """How much of a synthetic anomaly the reconstruction keeps, over its lesion voxels: the least-squares
    coefficient of (reconstruction - healthy scan) on (image - healthy scan). 0: the anomaly is removed (or
    the reconstruction errs in ways unrelated to it, as blur does); 1: copied into the "pseudo-healthy" image."""
    anomaly = (image - healthy)[lesion].astype(np.float64)
    power = float(anomaly @ anomaly)
    return float((reconstruction - healthy)[lesion].astype(np.float64) @ anomaly / power) if power > 0 else float("nan")


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
        row = {"dataset": dataset.name, "case": case.name, "model": card.name, "polarity": settled.polarity,
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
        if dataset.pairs:
            kept[case.name] = (score >= card.threshold) & case.mask
        rows.append(row)
        scores.append(s)
        truths.append(t)
        if panel is None:
            panel = figures.panel(case, recon, score, card.threshold)
    s, t = np.concatenate(scores), np.concatenate(truths)
    summary = _summary(dataset, card.name, rows, s, t)
    if dataset.paired:  # the copies that draw the same anomalies as the other site's
        summary["AP paired"] = average_precision(np.concatenate(scores[:dataset.paired]),
                                                 np.concatenate(truths[:dataset.paired]))
        summary["paired volumes"] = min(dataset.paired, len(rows))
        if "lesion kept" in rows[0]:
            summary["lesion kept paired"] = float(np.nanmean([r["lesion kept"] for r in rows[:dataset.paired]]))
    curve = (np.empty(0), np.empty(0), float("nan"))
    if not dataset.healthy:
        precision, recall, _ = precision_recall(s, t)
        curve = (*figures.thin_curve(precision, recall), summary["AP"])
    return summary, rows, {"panel": panel, "curve": curve, "flagged": kept}


def _summary(dataset: Dataset, model: str, rows: list[dict], s: np.ndarray, t: np.ndarray) -> dict:
    """A dataset's summary row from its per-volume rows and its pooled scores ``s`` and truth ``t``."""
    summary = {"dataset": dataset.name, "model": model, "volumes": len(rows)}
    for key in ("SSIM", "MAE", "FPR@thr", "FPR@best", "Dice@thr", "lesion kept", "seconds"):
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
    return {**options, "machine": _machine(args)}


def bright_baseline(device: str = "cpu", ref=BASELINE):
    """An intensity baseline (the bundled one unless ``ref`` names another, e.g. a scoring variant) with its
    polarity turned to bright lesions (T2, FLAIR, DWI), named ``intensity-bright`` for the bundled one and
    ``<name>-bright`` otherwise; its threshold is the T1 card's and is not reported."""
    card = find_card(ref)
    name = "intensity-bright" if card.name == BASELINE else f"{card.name}-bright"
    data = {**card.data, "name": name, "architecture": {**card.architecture, "polarity": "bright"}}
    return FAMILIES["intensity"](ModelCard(data, card.folder), device)


def write_figures(datasets: dict[str, Dataset], plots: dict, folder: Path) -> None:
    """Synthetic examples, a figure per dataset, one of the first rescan pair; ``plots``: model -> dataset -> ..."""
    figures.synthetic_examples(folder / "synthetic-examples.png", _examples(datasets))
    for dataset in datasets.values():
        material = {m: p[dataset.name] for m, p in plots.items() if dataset.name in p}
        figures.dataset_figure(folder / f"{_slug(dataset.name)}.png", dataset.name, dataset.cases[0],
                               {m: p["panel"] for m, p in material.items()},
                               {m: p["curve"] for m, p in material.items()})
        if dataset.pairs:
            cases = {c.name: c for c in dataset.cases}
            first, second = dataset.pairs[0]
            figures.rescan_figure(folder / f"{_slug(RESCANS)}.png", cases[first], cases[second],
                                  {m: (p["flagged"][first], p["flagged"][second]) for m, p in material.items()})


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


def _command(args) -> str:
    models = f" --models {' '.join(map(str, args.models))}" if args.models else ""
    return (f"python -m training evaluate{models} --data {args.data} --cache {args.cache} --per-scan {args.per_scan} "
            f"--oasis-per-scan {args.oasis_per_scan} --contrast-per-scan {args.contrast_per_scan} --seed {args.seed} "
            f"--threads {args.threads}{' --no-card-update' if args.no_card_update else ''} --out {args.out}")


def _update_card(name: str, summaries: list[dict], detect_seconds: float, args) -> None:
    card = find_card(name)
    data = dict(card.data)
    metrics = dict(data.get("metrics", {}))
    by_name = {s["dataset"]: {k: v for k, v in s.items() if k not in ("dataset", "model")} for s in summaries}
    metrics["evaluation"] = {"command": _command(args), "machine": _machine(args), "datasets": by_name,
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


def _machine(args) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    gpu = f" ({torch.cuda.get_device_name()})" if str(args.device).startswith("cuda") else ""
    return f"{cpu}, {args.threads} threads, {args.device}{gpu}, torch {torch.__version__}"


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def real_cases(volumes: list[dict], datasets: dict[str, Dataset]) -> dict[str, dict[str, dict]]:
    """Per-volume rows of the real lesion cases: case -> model -> row."""
    names = {d.name for d in datasets.values() if any(c.kind == "real" for c in d.cases)}
    out: dict[str, dict[str, dict]] = {}
    for row in volumes:
        if row["dataset"] in names:
            out.setdefault(row["case"], {})[row["model"]] = row
    return out


def beats_baseline(real: dict, case: str, model: str) -> str:
    """``yes`` if the model's AP on the case is above the baseline's, else ``no``; ``-`` for it or without it."""
    if model == BASELINE or BASELINE not in real[case]:
        return "-"
    return "yes" if real[case][model]["AP"] > real[case][BASELINE]["AP"] else "no"


def best_model_verdict(real: dict, models: list[str]) -> str:
    """A sentence: the best model by mean AP over the real cases, and on which cases it beats the baseline."""
    others = [m for m in models if m != BASELINE]
    if BASELINE not in models or not others:
        return f"Evaluate `{BASELINE}` and at least one other model to compare them on the real cases."
    best = max(others, key=lambda m: float(np.mean([real[c][m]["AP"] for c in real])))
    lost = [c for c in real if beats_baseline(real, c, best) != "yes"]
    where = "every real case" if not lost else \
        f"{len(real) - len(lost)} of {len(real)} real cases (not {', '.join(lost)})"
    return f"Best model by mean AP over the real cases: **{best}**; it beats `{BASELINE}` on {where}."


def _targets(summaries: list[dict], real: dict) -> list[str]:
    """The Targets section: healthy flagged volume, AP off the training scanner, real cases against the baseline."""
    by = {(r["dataset"], r["model"]): r for r in summaries}
    models = [m for m in dict.fromkeys(r["model"] for r in summaries) if ("IXI healthy", m) in by]
    sites = ("IXI healthy", "OASIS healthy")

    def meets(m: str) -> str:
        ok = all(by[d, m]["median flagged %"] <= TARGET_PERCENT and by[d, m]["median flagged ml"] <= TARGET_ML
                 for d in sites)
        return "yes" if ok else "no"

    healthy = [[m, *(by[d, m][k] for d in sites for k in ("median flagged %", "median flagged ml")), meets(m)]
               for m in models]
    paired = {m: by["IXI + fluid", m].get("AP paired", by["IXI + fluid", m]["AP"]) for m in models}
    kept = {m: by["IXI + fluid", m].get("lesion kept paired", by["IXI + fluid", m]["lesion kept"]) for m in models}
    fluid = [[m, by["IXI + fluid", m]["AP"], paired[m], by["OASIS + fluid", m]["AP"],
              by["OASIS + fluid", m]["AP"] / paired[m], kept[m], by["OASIS + fluid", m]["lesion kept"]] for m in models]
    lesions = [[m, *(real[c][m]["AP"] for c in real),
                "-" if BASELINE not in models or m == BASELINE else
                f"{sum(beats_baseline(real, c, m) == 'yes' for c in real)} of {len(real)}"] for m in models]
    return ["## Targets", "",
            f"Computed from the tables below. On healthy brains the median per scan flagged at the card threshold "
            f"should be at most {TARGET_PERCENT:g} % of the brain and at most {TARGET_ML:g} ml, on both scanners.", "",
            *table(["model", "IXI median %", "IXI median ml", "OASIS median %", "OASIS median ml",
                     f"both at most {TARGET_PERCENT:g} % and {TARGET_ML:g} ml"], healthy), "",
            "Synthetic fluid anomalies should be found as well on the second scanner (OASIS) as on IXI. Copy j of "
            "either dataset draws the same source, lesion contrast and evolution seed; IXI has more copies (more "
            "scans times `--per-scan`), so the ratio compares OASIS with IXI's first copies, the ones paired with "
            "OASIS's (the same mix of anomaly sources and sizes; pooled AP weighs large lesions most). **lesion "
            "kept**: how much of the anomaly the reconstruction keeps (least-squares coefficient of reconstruction "
            "minus the healthy scan on the anomaly, over its voxels; 0 removed, 1 copied), mean over the same copies.",
            "",
            *table(["model", "AP IXI + fluid (all)", "AP IXI + fluid (paired copies)", "AP OASIS + fluid",
                    "OASIS / IXI (paired)", "lesion kept IXI (paired)", "lesion kept OASIS"], fluid), "",
            f"Each model should beat the intensity baseline (`{BASELINE}`) on every real case (AP per case).", "",
            *table(["model", *(f"AP {c}" for c in real), f"beats {BASELINE} on"], lesions), "",
            best_model_verdict(real, models), ""]


def _dataset_section(dataset: Dataset, summaries: list[dict]) -> list[str]:
    rows = [r for r in summaries if r["dataset"] == dataset.name]
    keys = HEALTHY_KEYS if dataset.healthy else LESION_KEYS
    return [f"## {dataset.name}", "", dataset.description, "", f"{rows[0]['volumes']} volumes.", "",
            *table(["model", *("s" if k == "seconds" else k for k in keys)],
                    [[r["model"], *(r.get(k, "") for k in keys)] for r in rows]),
            "", f"![{dataset.name}](figures/{_slug(dataset.name)}.png)", ""]


def _rescan_section(dataset: Dataset, summaries: list[dict]) -> list[str]:
    rows = [r for r in summaries if r["dataset"] == RESCANS]
    keys = [*AGREEMENT, "pairs both empty"]
    return [f"## {RESCANS}", "",
            f"{len(dataset.pairs)} OASIS subjects scanned twice, both scans in `test`, each registered to MNI152 on "
            "its own; the two flagged masks (card threshold) are compared on the model grid. **rescan Dice**: Dice of "
            "the two masks; **flagged 1 in 2**: share of the voxels flagged in the first scan also flagged in the "
            "second (**2 in 1** the other way); means over pairs. A pair where neither scan flags anything counts as "
            "full agreement (1) and is counted in **pairs both empty**; a pair where only one does, as none (0).", "",
            *table(["model", *keys], [[r["model"], *(r[k] for k in keys)] for r in rows]),
            "", f"![{RESCANS}](figures/{_slug(RESCANS)}.png)", ""]


def _real_section(real: dict, models: list[str]) -> list[str]:
    rows = [[c, m, r["AP"], r["best Dice"], real[c][BASELINE]["AP"] if BASELINE in real[c] else "-",
             beats_baseline(real, c, m)] for c in real for m, r in real[c].items()]
    return ["## Real cases, per case", "",
            f"AP and best Dice of each model on each real case alone; **beats {BASELINE}**: AP above the intensity "
            "baseline's on that case.", "",
            *table(["case", "model", "AP", "best Dice", f"{BASELINE} AP", f"beats {BASELINE}"], rows), "",
            best_model_verdict(real, models), ""]


def _intro(datasets: dict[str, Dataset], args, results: dict[str, partials.ModelResult]) -> list[str]:
    ixi, oasis = datasets["IXI healthy"], datasets["OASIS healthy"]
    voxel_ml = flagged_ml(np.ones(1, bool), mni152().affine)
    today = time.strftime("%Y-%m-%d")
    earlier = {m: r.evaluated for m, r in results.items() if r.evaluated != today}
    resumed = ("Evaluated on an earlier day, their saved results reused by `--resume` (same code, weights, data "
               "options and machine): " + ", ".join(f"`{m}` ({d})" for m, d in earlier.items()) + ". "
               ) if earlier else ""
    return ["# Benchmark results", "",
            f"Made by `{_command(args)}` on {today}; machine: {_machine(args)}. {resumed}"
            "Per-volume rows: `results-per-volume.csv`; these tables: `results.csv`.", "",
            f"Data: the healthy `test` scans of the site caches in `{args.cache}` (`python -m training prepare`): "
            f"{SITES['ixi'].description}, {len(ixi.cases)} scans; {SITES['oasis'].description}, {len(oasis.cases)} "
            f"scans including {len(oasis.pairs)} rescan pairs; synthetic anomalies drawn on them (seed {args.seed}); "
            f"and from `{args.data}`: MSLUB patient26 T1 (multiple sclerosis) and BraTS 2013 pat0001-0002 T1c "
            "(glioma).", "",
            "Voxel-level metrics on the 2 mm model grid inside the brain mask. **AP**, **AUROC** and **best Dice** "
            "pool all voxels of the dataset (best Dice: the best single threshold for the whole dataset); "
            "**mean best Dice** is the best threshold per volume, averaged. **Dice@thr** and **FPR@thr** "
            "(fraction of non-lesion brain voxels flagged) use each model's card threshold (calibrated on healthy "
            "`val` scans), averaged over volumes. On healthy scans, **flagged %** is the share of brain voxels "
            f"flagged per scan and **flagged ml** their volume ({voxel_ml:.3f} ml per voxel of the model grid); "
            "median and max over scans. **s** is reconstruction plus anomaly map per volume, preprocessing excluded.",
            "", "![synthetic examples](figures/synthetic-examples.png)", ""]


def write_report(datasets: dict[str, Dataset], contrasts: dict[str, Dataset],
                 results: dict[str, partials.ModelResult], args) -> None:
    """RESULTS.md and the two CSVs in ``args.out`` from every model's results (in evaluation order)."""
    out = args.out
    summaries = [row for r in results.values() for row in r.summaries]
    volumes = [row for r in results.values() for row in r.volumes]
    speed = {m: r.detect_seconds for m, r in results.items() if r.detect_seconds is not None}
    families = {m: r.family for m, r in results.items()}
    write_csv(out / "results.csv", SUMMARY_COLUMNS, [{k: _fmt(v) for k, v in r.items()} for r in summaries])
    write_csv(out / "results-per-volume.csv", VOLUME_COLUMNS, [{k: _fmt(v) for k, v in r.items()} for r in volumes])
    real = real_cases(volumes, datasets)
    lines = _intro(datasets, args, results) + _targets(summaries, real)
    for dataset in datasets.values():
        lines += _dataset_section(dataset, summaries)
        if dataset.pairs:
            lines += _rescan_section(dataset, summaries)
    lines += _real_section(real, list(speed))
    lines += seed_tables.architectures_section(summaries, families)
    lines += seed_tables.diffusion_section(summaries, families)
    if contrasts:
        lines += seed_tables.contrast_section(summaries, volumes)
        for dataset in contrasts.values():
            lines += _dataset_section(dataset, summaries)
    lines += ["## Speed of one full detection", "",
              "`detect` on MSLUB patient26 T1 (1 mm, 182x218x182): skull-stripped input detection, registration, "
              "reconstruction, scoring and resampling back to the native grid.", "",
              *table(["model", "seconds"], [[m, f"{s:.1f}"] for m, s in speed.items()])]
    text = "\n".join(lines) + "\n"
    atomic_write(out / "RESULTS.md", lambda tmp: Path(tmp).write_text(text))
