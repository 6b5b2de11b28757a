"""Evaluate models on healthy and real lesion scans; write benchmarks/models.md, .csv and card metrics.

Healthy: the IXI ``test`` split (reconstruction SSIM and MAE inside the brain, fraction of brain
voxels flagged at the card's threshold). Lesions: MSLUB patient26 T1 (MS, consensus mask) and
BraTS 2013 pat0001-0002 T1c (glioma, whole tumour; contrast-enhanced T1, so outside the T1 models'
training distribution). Voxel-level AP, AUROC and best Dice on the model grid inside the brain;
Dice at the card's threshold. Seconds: one full ``detect`` (preprocessing included) on MSLUB T1.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
from monai.metrics import SSIMMetric
from tqdm import tqdm

from napari_brainuad.io import atomic_write, read_volume
from napari_brainuad.metrics import auroc, average_precision, best_dice, dice
from napari_brainuad.models import find_card, load_model, model_names, write_card
from napari_brainuad.pipeline import detect, write_csv
from napari_brainuad.preprocess import preprocess
from napari_brainuad.scoring import ScoringConfig, anomaly_map

from .calibrate import score_support
from .data import load_preprocessed, split_files

LESION_CASES = {  # name: (image, lesion mask, brain mask or None, label)
    "MSLUB-26 T1": ("mslub/patient26/T1.nii.gz", "mslub/patient26/consensus_gt.nii.gz", None, "MS, T1"),
    "BraTS-01 T1c": ("brats2013/pat0001/T1c_subtrMeanDivStd.nii.gz", "brats2013/pat0001/OTMultiClass.nii.gz",
                     "brats2013/pat0001/brainmask.nii.gz", "glioma, T1c"),
    "BraTS-02 T1c": ("brats2013/pat0002/T1c_subtrMeanDivStd.nii.gz", "brats2013/pat0002/OTMultiClass.nii.gz",
                     "brats2013/pat0002/brainmask.nii.gz", "glioma, T1c"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", help="model names or folders (default: all bundled)")
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--cache", type=Path, default=Path("cache/ixi"))
    p.add_argument("--out", type=Path, default=Path("benchmarks"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-card-update", action="store_true", help="do not write the figures into the cards")


def lesion_inputs(data: Path) -> dict:
    """Each lesion case preprocessed once: (image, brain mask, lesion mask) on the model grid."""
    cases = {}
    for name, (image, truth, brain, _) in tqdm(LESION_CASES.items(), desc="preprocess lesion cases"):
        volume = read_volume(data / image)
        brain_mask = read_volume(data / brain).data > 0 if brain else None
        pre = preprocess(volume, brain_mask=brain_mask)
        lesion = pre.to_template((read_volume(data / truth).data > 0).astype(np.float32), "nearest") > 0.5
        cases[name] = (pre.image, pre.mask, lesion & pre.mask)
    return cases


def evaluate_model(model, data: Path, cache: Path, cases: dict) -> dict:
    card = model.card
    config = ScoringConfig.from_card(card.scoring)
    t_int = card.t_int["default"] if card.is_diffusion else None
    row = {"model": card.name, "family": card.family, "t_int": t_int if t_int is not None else ""}
    ssim, mae, flagged = [], [], []
    metric = SSIMMetric(spatial_dims=3, data_range=1.0)
    for path in split_files(data / "ixi-t1-2mm", "test"):
        image, mask = load_preprocessed(path, cache)
        recon = model.reconstruct(image, mask, t_int=t_int)
        ssim.append(float(metric(torch.from_numpy(recon)[None, None], torch.from_numpy(image)[None, None])))
        mae.append(float(np.abs(recon - image)[mask].mean()))
        score = anomaly_map(image, recon, mask, config, device=model.device)
        flagged.append(float((score[score_support(mask, config)] >= card.threshold).mean()))
    row.update(healthy_ssim=np.mean(ssim), healthy_mae=np.mean(mae), healthy_flagged=np.mean(flagged))
    for name, (image, mask, lesion) in cases.items():
        recon = model.reconstruct(image, mask, t_int=t_int)
        score = anomaly_map(image, recon, mask, config, device=model.device)
        s, t = score[mask], lesion[mask]
        row[f"{name} AP"] = average_precision(s, t)
        row[f"{name} AUROC"] = auroc(s, t)
        row[f"{name} best Dice"] = best_dice(s, t)[0]
        row[f"{name} Dice@thr"] = dice(s >= card.threshold, t)
    volume = read_volume(data / LESION_CASES["MSLUB-26 T1"][0])
    start = time.perf_counter()
    detect(volume, model)
    row["seconds per volume"] = time.perf_counter() - start
    return row


def main(args) -> int:
    torch.set_num_threads(args.threads)
    names = args.models or model_names()
    cases = lesion_inputs(args.data)
    rows = []
    for name in names:
        model = load_model(name, args.device)
        rows.append(evaluate_model(model, args.data, args.cache, cases))
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()})
        if not args.no_card_update:
            _update_card(name, rows[-1], args)
    write_report(rows, args)
    return 0


def _update_card(name, row, args) -> None:
    card = find_card(name)
    data = dict(card.data)
    metrics = dict(data.get("metrics", {}))
    metrics["evaluation"] = {
        "command": "python -m training evaluate --data ../shared/data",
        "machine": _machine(args), "values": {k: v for k, v in row.items() if k not in ("model", "family")}}
    summary = dict(metrics.get("summary", {}))
    summary.update({"MSLUB T1 AP": row["MSLUB-26 T1 AP"], "MSLUB T1 best Dice": row["MSLUB-26 T1 best Dice"],
                    "healthy SSIM": row["healthy_ssim"], "seconds/volume (CPU)": row["seconds per volume"]})
    metrics["summary"] = summary
    data["metrics"] = metrics
    write_card(card.folder, data)


def _machine(args) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return f"{cpu}, {args.threads} threads, {args.device}, torch {torch.__version__}"


def write_report(rows: list[dict], args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0])
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    write_csv(args.out / "models.csv", columns, [{k: fmt(v) for k, v in r.items()} for r in rows])
    lines = ["# Model benchmark", "",
             f"Made by `python -m training evaluate --data {args.data}` on {time.strftime('%Y-%m-%d')}; "
             f"machine: {_machine(args)}.", "",
             "Healthy: IXI `test` split (4 scans never used for training or thresholds). Lesion cases: real scans "
             "from `../shared/data`; voxel-level metrics on the 2 mm model grid inside the brain mask. "
             "BraTS is contrast-enhanced T1 (T1c), not the T1 the models were trained on.", "",
             "## Healthy scans", "", "| model | SSIM | MAE | flagged at threshold |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['model']} | {fmt(r['healthy_ssim'])} | {fmt(r['healthy_mae'])} | {fmt(r['healthy_flagged'])} |"
              for r in rows]
    for case in LESION_CASES:
        lines += ["", f"## {case} ({LESION_CASES[case][3]})", "",
                  "| model | AP | AUROC | best Dice | Dice at threshold |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['model']} | {fmt(r[f'{case} AP'])} | {fmt(r[f'{case} AUROC'])} | "
                  f"{fmt(r[f'{case} best Dice'])} | {fmt(r[f'{case} Dice@thr'])} |" for r in rows]
    lines += ["", "## Speed", "", "One `detect` on MSLUB patient26 T1 (1 mm, 182x218x182), preprocessing included.", "",
              "| model | seconds |", "| --- | --- |"] + [f"| {r['model']} | {r['seconds per volume']:.1f} |" for r in rows]
    text = "\n".join(lines) + "\n"
    atomic_write(args.out / "models.md", lambda tmp: Path(tmp).write_text(text))
