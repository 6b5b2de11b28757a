"""Calibrate a model's default threshold on healthy validation scans and write it into its card.

The threshold is the anomaly score that flags at most ``--max-flagged`` of the healthy brain
voxels of the IXI ``val`` split; the fraction flagged on the ``test`` split at that threshold is
measured and stored too (never tuned on).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from napari_brainuad.models import find_card, load_model, write_card
from napari_brainuad.scoring import ScoringConfig, anomaly_map, calibrate_threshold

from .data import load_preprocessed, split_files


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="bundled model name or model folder")
    p.add_argument("--data", type=Path, default=Path("../shared/data/ixi-t1-2mm"), help="IXI folder with splits.csv")
    p.add_argument("--cache", type=Path, default=Path("cache/ixi"), help="preprocessed-scan cache")
    p.add_argument("--max-flagged", type=float, default=0.005, help="fraction of healthy brain voxels flagged")
    p.add_argument("--device", default="auto")


def healthy_maps(model, files, cache, t_int=None):
    """Anomaly maps and eroded-brain masks (template grid) of healthy scans."""
    config = ScoringConfig.from_card(model.card.scoring)
    maps, masks = [], []
    for path in tqdm(files, desc=model.name):
        image, mask = load_preprocessed(path, cache)
        recon = model.reconstruct(image, mask, t_int=t_int)
        score = anomaly_map(image, recon, mask, config, device=model.device)
        maps.append(score)
        masks.append(score_support(mask, config))
    return maps, masks


def score_support(mask: np.ndarray, config: ScoringConfig) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_erosion(mask, iterations=config.erode) if config.erode else mask


def main(args) -> int:
    result = calibrate_folder(args.model, args.data, args.cache, args.max_flagged, args.device)
    print(json.dumps(result, indent=2))
    return 0


def calibrate_folder(model_ref, data_dir: Path, cache: Path, max_flagged: float = 0.005, device: str = "auto") -> dict:
    """Set a model card's threshold from the healthy val split; measure flagged voxels on test."""
    model = load_model(model_ref, device)
    start = time.perf_counter()
    t_int = model.card.t_int["default"] if model.card.is_diffusion else None
    val_maps, val_masks = healthy_maps(model, split_files(data_dir, "val"), cache, t_int)
    threshold = calibrate_threshold(val_maps, val_masks, max_flagged)
    test_maps, test_masks = healthy_maps(model, split_files(data_dir, "test"), cache, t_int)
    flagged = [float((m[k] >= threshold).mean()) for m, k in zip(test_maps, test_masks)]
    card = find_card(model_ref)
    data = dict(card.data)
    data["threshold"] = threshold
    data["metrics"] = dict(data.get("metrics", {}))
    data["metrics"]["calibration"] = {
        "command": f"python -m training calibrate {card.name} --max-flagged {max_flagged}",
        "data": f"IXI val split ({len(val_maps)} healthy T1 scans)", "max_flagged": max_flagged,
        "threshold": threshold, "t_int": t_int,
        "machine": f"{platform.machine()}, {platform.system()}", "seconds": round(time.perf_counter() - start, 1),
    }
    data["metrics"]["healthy_test_flagged_fraction"] = {
        "data": f"IXI test split ({len(flagged)} healthy T1 scans)", "mean": float(np.mean(flagged)),
        "max": float(np.max(flagged))}
    summary = dict(data["metrics"].get("summary", {}))
    summary["healthy test voxels flagged"] = float(np.mean(flagged))
    data["metrics"]["summary"] = summary
    write_card(card.folder, data)
    return {"threshold": threshold, "healthy_test_flagged": flagged}
