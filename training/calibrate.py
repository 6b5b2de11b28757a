"""Calibrate a model's default threshold on healthy validation scans of every site and write it into its card.

The threshold is the anomaly score that flags at most ``--max-flagged`` of the healthy brain
voxels of the ``val`` split of each site cache and at most ``--max-flagged-ml`` per scan on average
(the largest of the per-site thresholds, so no site exceeds either bound). The threshold each val
scan alone would give is stored beside it. A "healthy" val scan can hold an incidental finding (an old
lacune, say) that a good model rightly flags; with a few val scans, that one scan would set the threshold
and hide such findings in every scan after it. So a val scan whose own threshold is more than
``--outlier-ratio`` times its site's median (sites of 3 or more val scans) is left out of that site's
threshold and named in the card. The fraction flagged on each site's ``test`` split at the threshold is
measured and stored too (never tuned on).

When the card's scoring is normative (``scoring.normative``), the voxel-wise healthy statistics of
the residual are fitted on the pooled ``val`` scans of every site (mirrored left-right;
:func:`napari_brainuad.scoring.fit_normative`) and written as ``normative.safetensors`` next to
the card. The threshold is calibrated on the normative scores of those val scans, each scored
against statistics fitted without it (leave one scan out): scored against statistics that include
it, a scan looks more typical than a new one does, and the threshold would come out too low. With
``--normative-train`` the statistics also pool every site's ``train`` scans (always, left out of none):
a few val scans give an unsteady std at each voxel, and the training scans are many. The model has seen
those scans, so their residuals run low; the threshold, still set on val scans the model never saw,
absorbs that.

The site caches hold T1 scans, so an ``"auto"`` scoring polarity is calibrated as on a T1 (``"both"``). On
another contrast it counts one side of the residual only, which never flags more of a scan than both sides
would; no healthy scans of other contrasts are at hand to calibrate on.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from napari_brainuad.io import atomic_write
from napari_brainuad.models import find_card, load_model, write_card
from napari_brainuad.models.card import NORMATIVE_FILE
from napari_brainuad.scoring import (NORMATIVE_FLOOR, NORMATIVE_SIGMA, ScoringConfig, calibrate_threshold,
                                     fit_normative, midline_index, save_normative)
from napari_brainuad.template import mni152

from .data import cached_split

CACHE_CONTRAST = "T1"
"""The contrast of every scan in the site caches (IXI and OASIS T1)."""
MAX_FLAGGED = 0.005
MAX_FLAGGED_ML = 5.0
"""The healthy-scan targets a default threshold is calibrated for: at most 0.5 % of the brain and 5 ml per scan."""
OUTLIER_RATIO = 3.0
"""A val scan whose own threshold exceeds this many times its site's median is left out (an incidental finding)."""


def add_calibration_arguments(p: argparse.ArgumentParser) -> None:
    """``--cache``, ``--max-flagged``, ``--max-flagged-ml``, ``--outlier-ratio`` and ``--device``: every command
    that calibrates."""
    p.add_argument("--cache", type=Path, nargs="+", default=[Path("cache/ixi"), Path("cache/oasis")],
                   help="site caches made by 'prepare' (their val splits calibrate, their test splits are measured)")
    p.add_argument("--max-flagged", type=float, default=MAX_FLAGGED,
                   help="largest fraction of healthy brain voxels flagged (default 0.005)")
    p.add_argument("--max-flagged-ml", type=float, default=MAX_FLAGGED_ML,
                   help="largest volume flagged per healthy scan, ml, on average (default 5)")
    p.add_argument("--outlier-ratio", type=float, default=OUTLIER_RATIO,
                   help="leave out a val scan whose own threshold exceeds this many times its site's median "
                        "(an incidental finding; default 3, 'inf' keeps every scan)")
    p.add_argument("--normative-train", action="store_true",
                   help="normative scoring: fit the healthy statistics on the train scans as well as the val scans")
    p.add_argument("--device", default="auto")


def calibration_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of :func:`calibrate_folder` that :func:`add_calibration_arguments` parsed."""
    return {"max_flagged": args.max_flagged, "device": args.device, "max_flagged_ml": args.max_flagged_ml,
            "outlier_ratio": args.outlier_ratio, "normative_train": args.normative_train}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="bundled model name or model folder")
    add_calibration_arguments(p)


def iter_reconstructions(model, files: list[Path], t_int=None):
    """(image, reconstruction, brain mask) on the template grid of each cached healthy scan, one at a time."""
    for path in tqdm(files, desc=model.name):
        with np.load(path) as z:
            image, mask = z["image"], z["mask"]
        yield image, model.reconstruct(image, mask, t_int=t_int), mask


def reconstructions(model, files: list[Path], t_int=None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """:func:`iter_reconstructions` as a list."""
    return list(iter_reconstructions(model, files, t_int))


def healthy_maps(model, scans):
    """Anomaly maps and eroded-brain masks of :func:`reconstructions`' scans, with the model's scoring."""
    config = ScoringConfig.from_card(model.card.scoring)
    return ([model.anomaly_map(image, recon, mask, contrast=CACHE_CONTRAST) for image, recon, mask in scans],
            [score_support(mask, config) for _, _, mask in scans])


def normative_val_maps(model, val: list[list], extra=()) -> list[tuple[list, list]]:
    """Fit the healthy residual statistics on every site's val scans (and the ``extra`` scans, an
    iterable like :func:`iter_reconstructions`, read once) and hand them to ``model``.

    Returns, per site, the anomaly maps and eroded-brain masks of its val scans, each scored
    against statistics fitted on all the other val scans and every extra scan (leave one val scan out).
    """
    config = ScoringConfig.from_card(model.card.scoring).for_contrast(CACHE_CONTRAST)
    scans = [scan for site in val for scan in site]
    if len(scans) < 2:
        raise ValueError(f"model {model.name}: normative calibration needs at least two healthy val scans "
                         f"(one is left out of the statistics at a time); the caches hold {len(scans)}.")
    residuals = [model.residual_map(image, recon, mask, config) for image, recon, mask in scans]
    masks = [mask for _, _, mask in scans]
    extra_residuals, extra_masks = [], []
    for image, recon, mask in extra:  # only the residual and the mask of each are kept
        extra_residuals.append(model.residual_map(image, recon, mask, config))
        extra_masks.append(mask)
    midline = midline_index(mni152().affine)
    per_site, i = [], 0
    for site in val:
        maps = []
        for image, recon, mask in site:
            model.normative = fit_normative(residuals[:i] + residuals[i + 1:] + extra_residuals,
                                            masks[:i] + masks[i + 1:] + extra_masks, midline=midline)
            maps.append(model.anomaly_map(image, recon, mask, contrast=CACHE_CONTRAST))
            i += 1
        per_site.append((maps, [score_support(mask, config) for _, _, mask in site]))
    model.normative = fit_normative(residuals + extra_residuals, masks + extra_masks, midline=midline)
    return per_site


def score_support(mask: np.ndarray, config: ScoringConfig) -> np.ndarray:
    return ndimage.binary_erosion(mask, iterations=config.erode) if config.erode else mask


def outlier_scans(per_scan: dict[str, float], ratio: float) -> list[str]:
    """Val scans whose own threshold exceeds ``ratio`` times the median of their site's (3 or more scans).

    ``per_scan``: each val scan's threshold (:func:`napari_brainuad.scoring.calibrate_threshold` on that scan
    alone), by name. A scan that alone needs a far higher threshold than its site's others most likely holds
    a focal finding the model flags rightly, not scanner variation.
    """
    if len(per_scan) < 3:
        return []
    median = float(np.median(list(per_scan.values())))
    return [stem for stem, t in per_scan.items() if t > ratio * median]


def main(args) -> int:
    result = calibrate_folder(args.model, args.cache, **calibration_options(args))
    print(json.dumps(result, indent=2))
    return 0


def calibrate_folder(model_ref, caches: list[Path], max_flagged: float = MAX_FLAGGED, device: str = "auto",
                     max_flagged_ml: float | None = MAX_FLAGGED_ML, outlier_ratio: float = OUTLIER_RATIO,
                     normative_train: bool = False) -> dict:
    """Set a model card's threshold from the healthy val splits; measure flagged voxels on the test splits.

    ``max_flagged_ml`` None: the share bound alone. ``outlier_ratio``: see :func:`outlier_scans`.
    ``normative_train``: normative statistics also fitted on the train splits (see the module docstring).
    """
    model = load_model(model_ref, device)
    start = time.perf_counter()
    t_int = model.card.t_int["default"] if model.card.is_diffusion else None
    caches = [Path(c) for c in caches]
    val = [reconstructions(model, cached_split(cache, "val"), t_int) for cache in caches]
    n_val = sum(len(scans) for scans in val)
    normative = None
    if ScoringConfig.from_card(model.card.scoring).normative:
        splits = ["val", "train"] if normative_train else ["val"]
        train = (scan for cache in caches if normative_train
                 for scan in iter_reconstructions(model, cached_split(cache, "train"), t_int))
        val_maps = normative_val_maps(model, val, train)
        atomic_write(model.card.folder / NORMATIVE_FILE, lambda tmp: save_normative(model.normative, tmp))
        normative = {"file": NORMATIVE_FILE, "splits": splits, "scans": model.normative.n_scans, "mirrored": True,
                     "sigma_voxels": NORMATIVE_SIGMA, "std_floor_fraction_of_median": NORMATIVE_FLOOR,
                     "threshold_maps": "each val scan scored against statistics fitted without it"}
    else:
        val_maps = [healthy_maps(model, scans) for scans in val]
    max_voxels = None if max_flagged_ml is None else max_flagged_ml / mni152().voxel_volume_ml
    per_scan = {cache.name: {path.stem: calibrate_threshold([m], [k], max_flagged, max_voxels)
                             for path, m, k in zip(cached_split(cache, "val"), *maps_masks)}
                for cache, maps_masks in zip(caches, val_maps)}
    left_out = {site: outlier_scans(scans, outlier_ratio) for site, scans in per_scan.items()}
    thresholds = []
    for (site, scans), (maps, masks) in zip(per_scan.items(), val_maps):
        keep = [i for i, stem in enumerate(scans) if stem not in left_out[site]]
        thresholds.append(calibrate_threshold([maps[i] for i in keep], [masks[i] for i in keep], max_flagged,
                                              max_voxels))
    threshold = float(max(thresholds))
    flagged = {}
    for cache in caches:
        maps, masks = healthy_maps(model, reconstructions(model, cached_split(cache, "test"), t_int))
        flagged[cache.name] = [float((m[k] >= threshold).mean()) for m, k in zip(maps, masks)]
    card = find_card(model_ref)
    data = dict(card.data)
    data["threshold"] = threshold
    if normative:
        data["normative"] = NORMATIVE_FILE
    data["metrics"] = dict(data.get("metrics", {}))
    sites = ", ".join(c.name for c in caches)
    data["metrics"]["calibration"] = {
        "command": f"python -m training calibrate {card.name} --cache {' '.join(map(str, caches))} "
                   f"--max-flagged {max_flagged}"
                   + ("" if max_flagged_ml is None else f" --max-flagged-ml {max_flagged_ml}")
                   + f" --outlier-ratio {outlier_ratio}"
                   + (" --normative-train" if normative and normative_train else ""),
        "data": f"val splits of {sites} ({n_val} healthy T1 scans)", "max_flagged": max_flagged,
        "max_flagged_ml": max_flagged_ml,
        "outlier_ratio": outlier_ratio if np.isfinite(outlier_ratio) else None,  # JSON has no infinity
        "left_out_scans": {site: stems for site, stems in left_out.items() if stems},
        "scoring": "normative" if normative else "residual", "normative": normative,
        "threshold": threshold, "per_site_thresholds": dict(zip([c.name for c in caches], thresholds)),
        "per_scan_thresholds": per_scan,
        "t_int": t_int, "machine": f"{platform.machine()}, {platform.system()}",
        "seconds": round(time.perf_counter() - start, 1),
    }
    data["metrics"]["healthy_test_flagged_fraction"] = {
        site: {"scans": len(v), "mean": float(np.mean(v)), "max": float(np.max(v))} for site, v in flagged.items() if v}
    every = [f for v in flagged.values() for f in v]
    summary = dict(data["metrics"].get("summary", {}))
    summary["healthy test voxels flagged"] = float(np.mean(every))
    data["metrics"]["summary"] = summary
    write_card(card.folder, data)
    return {"threshold": threshold, "healthy_test_flagged": flagged}
