"""The benchmark report: ``RESULTS.md``, ``results.csv``, ``results-per-volume.csv`` and the figures, written
from the models' evaluation results (:class:`training.partials.ModelResult`).

Only writes what :mod:`training.evaluate` measured, so the layout can change without evaluating again
(saved results are fingerprinted without this module, ``seed_tables`` and ``markdown``).
"""
from __future__ import annotations

import platform
import re
import time
from pathlib import Path

import numpy as np
import torch

from napari_brainuad.io import atomic_write
from napari_brainuad.pipeline import write_csv
from napari_brainuad.template import mni152

from . import figures, seed_tables
from .cases import Dataset
from .data import SITES
from .markdown import table
from .measures import AGREEMENT, pooled_kept
from .partials import ModelResult

RESCANS = "OASIS rescans"
BASELINE = "intensity-t1"
"""The intensity baseline every model must beat."""
TARGET_PERCENT, TARGET_ML = 0.5, 5.0
"""Targets for the median share (%) and volume (ml) of a healthy brain flagged per scan."""
VOLUME_COLUMNS = ["dataset", "case", "kind", "model", "polarity", "lesion voxels", "AP", "AUROC", "best Dice",
                  "FPR@best", "Dice@thr", "FPR@thr", "lesion kept", "anomaly energy",
                  "flagged %", "flagged ml", "SSIM", "MAE", *AGREEMENT, "seconds"]
SUMMARY_COLUMNS = ["dataset", "model", "volumes", "AP", "AP paired", "paired volumes", "AUROC", "best Dice",
                   "mean best Dice", "FPR@best", "Dice@thr", "FPR@thr", "lesion kept", "lesion kept paired",
                   "median flagged %", "median flagged ml", "max flagged ml", "SSIM", "MAE", *AGREEMENT,
                   "pairs both empty", "seconds"]
HEALTHY_KEYS = ["SSIM", "MAE", "FPR@thr", "median flagged %", "median flagged ml", "max flagged ml", "seconds"]
LESION_KEYS = ["AP", "AUROC", "best Dice", "mean best Dice", "Dice@thr", "FPR@thr", "lesion kept", "seconds"]


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


def command_line(args) -> str:
    models = f" --models {' '.join(map(str, args.models))}" if args.models else ""
    return (f"python -m training evaluate{models} --data {args.data} --cache {args.cache} --per-scan {args.per_scan} "
            f"--oasis-per-scan {args.oasis_per_scan} --contrast-per-scan {args.contrast_per_scan} --seed {args.seed} "
            f"--threads {args.threads}{' --no-card-update' if args.no_card_update else ''} --out {args.out}")


def machine(args) -> str:
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


def _targets(summaries: list[dict], volumes: list[dict], real: dict) -> list[str]:
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
            "minus the healthy scan on the anomaly; 0 removed, 1 copied), over the voxels of the same copies at "
            "once, so a faint small anomaly, whose own coefficient is ill-conditioned, cannot dominate it.",
            "",
            *table(["model", "AP IXI + fluid (all)", "AP IXI + fluid (paired copies)", "AP OASIS + fluid",
                    "OASIS / IXI (paired)", "lesion kept IXI (paired)", "lesion kept OASIS"], fluid), "",
            *_by_source(volumes, models), "",
            f"Each model should beat the intensity baseline (`{BASELINE}`) on every real case (AP per case).", "",
            *table(["model", *(f"AP {c}" for c in real), f"beats {BASELINE} on"], lesions), "",
            best_model_verdict(real, models), ""]


def _by_source(volumes: list[dict], models: list[str]) -> list[str]:
    """The second-scanner comparison per source of the fluid anomalies' P0 (random blobs or a real lesion mask):
    mean AP per copy and pooled lesion kept, IXI's paired copies against OASIS's."""
    site = {d: [r for r in volumes if r["dataset"] == d] for d in ("IXI + fluid", "OASIS + fluid")}
    sources = list(dict.fromkeys(r["kind"] for r in site["OASIS + fluid"]))
    rows = []
    for m in models:
        oasis = [r for r in site["OASIS + fluid"] if r["model"] == m]
        ixi = [r for r in site["IXI + fluid"] if r["model"] == m][:len(oasis)]  # the paired copies
        cells = []
        for source in sources:
            pair = [[r for r in copies if r["kind"] == source] for copies in (ixi, oasis)]
            cells.append(" / ".join(f"{np.mean([r['AP'] for r in p]):.3f}" for p in pair))
            cells.append(" / ".join(f"{pooled_kept(p):.2f}" for p in pair))
        rows.append([m, *cells])
    header = [h for s in sources for h in (f"AP {s[6:]}", f"kept {s[6:]}")]
    return ["By source of the anomaly (IXI / OASIS, the paired copies): mean AP per copy and pooled lesion kept. "
            "The sources differ in size: random blobs and the MS mask grow small anomalies, the glioma masks "
            "large ones.", "", *table(["model", *header], rows)]


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


def _intro(datasets: dict[str, Dataset], args, results: dict[str, ModelResult]) -> list[str]:
    ixi, oasis = datasets["IXI healthy"], datasets["OASIS healthy"]
    voxel_ml = mni152().voxel_volume_ml
    today = time.strftime("%Y-%m-%d")
    earlier = {m: r.evaluated for m, r in results.items() if r.evaluated != today}
    resumed = ("Evaluated on an earlier day, their saved results reused by `--resume` (same code, weights, data "
               "options and machine): " + ", ".join(f"`{m}` ({d})" for m, d in earlier.items()) + ". "
               ) if earlier else ""
    return ["# Benchmark results", "",
            f"Made by `{command_line(args)}` on {today}; machine: {machine(args)}. {resumed}"
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
                 results: dict[str, ModelResult], args) -> None:
    """RESULTS.md and the two CSVs in ``args.out`` from every model's results (in evaluation order)."""
    out = args.out
    summaries = [row for r in results.values() for row in r.summaries]
    volumes = [row for r in results.values() for row in r.volumes]
    speed = {m: r.detect_seconds for m, r in results.items() if r.detect_seconds is not None}
    families = {m: r.family for m, r in results.items()}
    write_csv(out / "results.csv", SUMMARY_COLUMNS, [{k: _fmt(v) for k, v in r.items()} for r in summaries])
    write_csv(out / "results-per-volume.csv", VOLUME_COLUMNS, [{k: _fmt(v) for k, v in r.items()} for r in volumes])
    real = real_cases(volumes, datasets)
    lines = _intro(datasets, args, results) + _targets(summaries, volumes, real)
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
