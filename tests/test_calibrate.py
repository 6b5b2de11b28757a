"""Threshold calibration on healthy val scans, end to end: the bound holds and the card says how it was made."""
import json
import shutil

import numpy as np

from conftest import healthy_cache
from napari_brainuad.models import find_card, load_model
from training.calibrate import calibrate_folder, healthy_maps, reconstructions
from training.data import cached_split


def baseline_and_site(tmp_path):
    """A copy of the intensity baseline's folder and a tiny healthy site cache."""
    cache = tmp_path / "site"
    cache.mkdir()
    healthy_cache(cache)
    folder = tmp_path / "model"
    shutil.copytree(find_card("intensity-t1").folder, folder)
    return folder, cache


def val_maps(folder, cache):
    model = load_model(folder, "cpu")
    return healthy_maps(model, reconstructions(model, cached_split(cache, "val")))


def test_calibrated_threshold_flags_the_fraction_of_val_voxels_and_is_written_to_the_card(tmp_path):
    folder, cache = baseline_and_site(tmp_path)
    result = calibrate_folder(folder, [cache], 0.005, "cpu", max_flagged_ml=None)
    maps, masks = val_maps(folder, cache)
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


def test_volume_bound_caps_the_flagged_ml_per_val_scan(tmp_path):
    from napari_brainuad.template import mni152

    voxel_ml = mni152().voxel_volume_ml
    folder, cache = baseline_and_site(tmp_path)
    share_only = calibrate_folder(folder, [cache], 0.005, "cpu", max_flagged_ml=None)["threshold"]
    maps, masks = val_maps(folder, cache)
    flagged_ml = [np.count_nonzero(m[k] >= share_only) * voxel_ml for m, k in zip(maps, masks)]
    bound = 0.5 * float(np.mean(flagged_ml))  # half of what the share alone flags: the volume bound binds
    threshold = calibrate_folder(folder, [cache], 0.005, "cpu", max_flagged_ml=bound)["threshold"]
    assert threshold > share_only
    scores = np.concatenate([m[k] for m, k in zip(maps, masks)])
    over, ties = np.count_nonzero(scores > threshold), np.count_nonzero(scores == threshold)
    assert over * voxel_ml / len(maps) <= bound  # strictly above the threshold: within the bound
    assert (over + ties) * voxel_ml / len(maps) >= 0.99 * bound  # the smallest such threshold
    calibration = json.loads((folder / "card.json").read_text())["metrics"]["calibration"]
    assert calibration["max_flagged_ml"] == bound and f"--max-flagged-ml {bound}" in calibration["command"]


def test_scoring_variant_shares_the_weights_and_is_calibrated_for_its_own_scoring(tmp_path):
    import pytest

    from napari_brainuad.models import ModelError
    from training.variant import make_variant

    cache = tmp_path / "site"
    cache.mkdir()
    healthy_cache(cache)
    source = find_card("ae-t1")
    before = (source.folder / "card.json").read_bytes()
    out = make_variant("ae-t1", tmp_path / "ae-normative", scoring={"normative": True, "polarity": "dark"})
    calibrate_folder(out, [cache], 0.005, "cpu")
    card = find_card(out)
    assert card.name == "ae-normative" and card.scoring == {**source.scoring, "normative": True, "polarity": "dark"}
    assert card.weights_path.read_bytes() == source.weights_path.read_bytes()
    assert card.normative_path.exists() and card.metrics["calibration"]["scoring"] == "normative"
    assert card.metrics["variant"]["of"] == "ae-t1"
    assert (source.folder / "card.json").read_bytes() == before  # the source is never touched
    swapped = make_variant(out, tmp_path / "ae-as-pcldm", scoring_of="pcldm-t1")
    assert find_card(swapped).scoring == find_card("pcldm-t1").scoring  # the other's scoring, whole
    assert not (swapped / "normative.safetensors").exists()
    with pytest.raises(FileExistsError):
        make_variant("ae-t1", out)
    with pytest.raises(ModelError):
        make_variant("ae-t1", tmp_path / "bad", scoring={"polarity": "up"})
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="diffusion models only"):
        make_variant("ae-t1", tmp_path / "no-t", t_int={"steps": 50})


def test_a_t_int_variant_samples_with_its_own_ddim_stride(tmp_path):
    """``--t-int`` changes a diffusion model's DDIM stride and range, nothing else."""
    from napari_brainuad.models.families.ddpm import ddim_scheduler
    from training.variant import make_variant

    source = find_card("ddpm-t1")
    coarse = {"steps": 125, "min": 125, "max": 375}
    out = make_variant("ddpm-t1", tmp_path / "ddpm-s125", t_int=coarse)
    card = find_card(out)
    assert card.t_int == {**source.t_int, **coarse}
    assert card.scoring == source.scoring and card.metrics["variant"]["t_int"] == card.t_int
    assert "T_int steps 125" in card.description
    assert ddim_scheduler(card)[1] == 125 != ddim_scheduler(source)[1]


def test_outlier_scans_are_those_far_above_their_sites_median():
    from training.calibrate import outlier_scans

    assert outlier_scans({"a": 1.0, "b": 1.2, "c": 3.7}, 3.0) == ["c"]
    assert outlier_scans({"a": 1.0, "b": 1.2, "c": 3.5}, 3.0) == []
    assert outlier_scans({"a": 1.0, "b": 9.0}, 3.0) == []  # two scans: no median to trust
    assert outlier_scans({"a": 1.0, "b": 1.2, "c": 37.0}, float("inf")) == []


def test_a_val_scan_with_an_incidental_finding_is_left_out_and_named(tmp_path):
    import csv

    from napari_brainuad.scoring import calibrate_threshold
    from napari_brainuad.template import mni152

    folder, cache = baseline_and_site(tmp_path)
    with np.load(cache / "sub2.npz") as z:
        image, mask = z["image"].copy(), z["mask"]
    centre = np.argwhere(mask).mean(axis=0).astype(int)
    image[tuple(slice(c - 5, c + 5) for c in centre)] = 0.0  # a dark 8 ml focus: the baseline flags it
    # (the baseline's scores saturate, so this scan's own threshold is 1.7x the others', not 3x: ratio 1.5)
    np.savez_compressed(cache / "sub5.npz", image=image, mask=mask)
    with open(cache / "splits.csv", "a", newline="") as f:
        csv.writer(f).writerow(["sub5", "sub5.nii.gz", "val"])
    kept = calibrate_folder(folder, [cache], 0.005, "cpu", outlier_ratio=1.5)["threshold"]
    calibration = json.loads((folder / "card.json").read_text())["metrics"]["calibration"]
    assert calibration["left_out_scans"] == {"site": ["sub5"]} and "--outlier-ratio 1.5" in calibration["command"]
    maps, masks = val_maps(folder, cache)
    stems = [p.stem for p in cached_split(cache, "val")]
    clean = [i for i, s in enumerate(stems) if s != "sub5"]
    expected = calibrate_threshold([maps[i] for i in clean], [masks[i] for i in clean], 0.005,
                                   5.0 / mni152().voxel_volume_ml)
    assert kept == expected  # the threshold of the other val scans alone
    every = calibrate_folder(folder, [cache], 0.005, "cpu", outlier_ratio=float("inf"))["threshold"]
    assert every > kept  # with the finding in, that one scan would set the threshold
    calibration = find_card(folder).metrics["calibration"]  # the card still loads
    assert calibration["left_out_scans"] == {} and calibration["outlier_ratio"] is None


def test_normative_train_is_not_recorded_for_a_card_without_normative_scoring(tmp_path):
    folder, cache = baseline_and_site(tmp_path)
    calibrate_folder(folder, [cache], 0.005, "cpu", normative_train=True)
    calibration = json.loads((folder / "card.json").read_text())["metrics"]["calibration"]
    assert calibration["normative"] is None and "--normative-train" not in calibration["command"]
    assert not (folder / "normative.safetensors").exists()
