"""Threshold calibration on healthy val scans, end to end: the bound holds and the card says how it was made."""
import json
import shutil

import numpy as np

from conftest import healthy_cache
from napari_brainuad.models import find_card, load_model
from training.calibrate import calibrate_folder, healthy_maps, reconstructions
from training.data import cached_split


def test_calibrated_threshold_flags_the_fraction_of_val_voxels_and_is_written_to_the_card(tmp_path):
    cache = tmp_path / "site"
    cache.mkdir()
    healthy_cache(cache)
    folder = tmp_path / "model"
    shutil.copytree(find_card("intensity-t1").folder, folder)
    result = calibrate_folder(folder, [cache], 0.005, "cpu")
    model = load_model(folder, "cpu")
    maps, masks = healthy_maps(model, reconstructions(model, cached_split(cache, "val")))
    scores = np.concatenate([m[k] for m, k in zip(maps, masks)])
    threshold = result["threshold"]
    assert np.count_nonzero(scores >= threshold) <= 0.005 * scores.size + 1  # the quantile voxel itself
    assert np.mean(scores >= scores[scores < threshold].max()) > 0.005  # the smallest such threshold
    card = json.loads((folder / "card.json").read_text())
    assert card["threshold"] == threshold
    calibration = card["metrics"]["calibration"]
    assert calibration["scoring"] == "residual" and calibration["per_site_thresholds"] == {"site": threshold}
    per_scan = calibration["per_scan_thresholds"]["site"]  # what each val scan alone would set
    assert sorted(per_scan) == sorted(p.stem for p in cached_split(cache, "val"))
    assert min(per_scan.values()) <= threshold <= max(per_scan.values())
    test = card["metrics"]["healthy_test_flagged_fraction"]["site"]
    assert test["max"] == max(result["healthy_test_flagged"]["site"])
