"""Normative scoring: a residual is scored against healthy residual statistics at its own voxel."""
import json
import pickle
import shutil

import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import healthy_cache
from napari_brainuad.models import ModelError, find_card, load_model
from napari_brainuad.scoring import (NORMATIVE_FLOOR, NormativeStats, ScoringConfig, anomaly_map,
                                     calibrate_threshold, fit_normative, load_normative, midline_index,
                                     mirror_left_right, normative_score, save_normative)
from napari_brainuad.template import mni152

PLAIN = dict(shift=0, median_size=0, erode=0)


def noisy_healthy_residuals(n, shape=(30, 20, 20), seed=0):
    """Healthy residual maps: loud (|N(0, 0.2)|) for x < 12, like cortex edges; quiet (|N(0, 0.01)|) elsewhere."""
    rng = np.random.default_rng(seed)
    scale = np.full(shape, 0.01, np.float32)
    scale[:12] = 0.2
    return [np.abs(rng.standard_normal(shape)).astype(np.float32) * scale for _ in range(n)]


def test_a_residual_usual_where_healthy_scans_vary_is_not_flagged_but_flagged_where_they_are_quiet():
    healthy = noisy_healthy_residuals(8)
    masks = [np.ones(healthy[0].shape, bool)] * len(healthy)
    stats = fit_normative(healthy[:6], masks[:6], sigma=1.0)
    config = ScoringConfig(normative=True, **PLAIN)
    zero = np.zeros(healthy[0].shape, np.float32)
    held_out = [anomaly_map(r, zero, m, config, normative=stats) for r, m in zip(healthy[6:], masks[6:])]
    threshold = calibrate_threshold(held_out, masks[6:], 0.005)
    scan = noisy_healthy_residuals(1, seed=99)[0]
    loud, quiet = (slice(4, 8), slice(8, 12), slice(8, 12)), (slice(21, 25), slice(8, 12), slice(8, 12))
    scan[loud] = scan[quiet] = 0.3  # above the loud place's healthy mean (0.16), within its usual spread
    raw = anomaly_map(scan, zero, masks[0], ScoringConfig(**PLAIN))
    assert (raw[loud] == raw[quiet]).all()  # a threshold on the raw residual cannot tell them apart
    score = anomaly_map(scan, zero, masks[0], config, normative=stats)
    assert (score[quiet] >= threshold).all()
    assert not (score[loud] >= threshold).any()


def test_mirror_about_the_template_midline():
    np.testing.assert_array_equal(mirror_left_right(np.arange(5), 2.0), [4, 3, 2, 1, 0])
    np.testing.assert_array_equal(mirror_left_right(np.arange(5), 1.5), [3, 2, 1, 0, 0])  # off the grid -> 0
    np.testing.assert_array_equal(mirror_left_right(np.arange(5), 2.5), [0, 4, 3, 2, 1])
    tpl = mni152()
    assert midline_index(tpl.affine) == 47.0  # not the array centre 47.5: a plain [::-1] is one voxel off
    np.testing.assert_array_equal(mirror_left_right(tpl.mask, 47.0), tpl.mask)
    assert (tpl.mask[::-1] != tpl.mask).any()
    with pytest.raises(ValueError, match="half-integer"):
        mirror_left_right(tpl.mask, 47.2)


def test_mirrored_pooling_makes_symmetric_statistics_from_one_sided_data():
    rng = np.random.default_rng(1)
    shape = (21, 8, 8)
    scale = np.where(np.arange(21)[:, None, None] < 10, 0.2, 0.01) * np.ones(shape)
    residuals = [np.abs(rng.standard_normal(shape)) * scale for _ in range(5)]
    masks = [np.ones(shape, bool)] * 5
    plain = fit_normative(residuals, masks, sigma=1.0, floor=0.01)
    pooled = fit_normative(residuals, masks, midline=10.0, sigma=1.0, floor=0.01)
    assert pooled.n_scans == plain.n_scans == 5
    np.testing.assert_allclose(pooled.mean, mirror_left_right(pooled.mean, 10.0), rtol=1e-5)
    np.testing.assert_allclose(pooled.std, mirror_left_right(pooled.std, 10.0), rtol=1e-5)
    assert pooled.std[16].min() > 5 * plain.std[16].max()  # the quiet side now sees the loud side's spread
    np.testing.assert_allclose(pooled.mean, (plain.mean + mirror_left_right(plain.mean, 10.0)) / 2, rtol=1e-5)


def test_std_floor_for_perfectly_reconstructed_and_unseen_locations():
    rng = np.random.default_rng(2)
    shape = (40, 10, 10)
    mask = np.zeros(shape, bool)
    mask[:20] = True
    residuals = []
    for _ in range(4):
        r = np.zeros(shape, np.float32)
        r[:12] = np.abs(rng.standard_normal((12, 10, 10))) * 0.1  # x in 12..19: always reconstructed exactly
        residuals.append(r)
    stats = fit_normative(residuals, [mask] * 4, sigma=1.0)
    floor = NORMATIVE_FLOOR * np.median(stats.std[mask])
    assert floor > 0 and stats.std.min() == pytest.approx(floor)
    assert stats.std[17].max() == pytest.approx(floor)  # zero spread in the brain
    assert stats.std[39].max() == pytest.approx(floor) and not stats.mean[39].any()  # no sample reaches here
    residual = np.full(shape, 0.05, np.float32)
    np.testing.assert_allclose(normative_score(residual, stats)[39], 0.05 / floor, rtol=1e-5)
    with pytest.raises(ValueError, match="positive"):
        fit_normative(residuals, [mask] * 4, sigma=1.0, floor=0.0)


def test_normative_switch_without_statistics_is_an_error():
    x = np.ones((8, 8, 8), np.float32)
    with pytest.raises(ValueError, match="no normative statistics"):
        anomaly_map(x, 0 * x, x > 0, ScoringConfig(normative=True, **PLAIN))
    stats = NormativeStats(np.zeros((4, 4, 4), np.float32), np.ones((4, 4, 4), np.float32), 1)
    with pytest.raises(ValueError, match="does not match"):
        anomaly_map(x, 0 * x, x > 0, ScoringConfig(normative=True, **PLAIN), normative=stats)


def test_save_load_round_trip(tmp_path):
    stats = fit_normative(noisy_healthy_residuals(3), [np.ones((30, 20, 20), bool)] * 3, sigma=1.0)
    path = tmp_path / "normative.safetensors"
    save_normative(stats, path)
    back = load_normative(path, (30, 20, 20))
    np.testing.assert_array_equal(back.mean, stats.mean)
    np.testing.assert_array_equal(back.std, stats.std)
    assert back.n_scans == 3


def good_arrays(shape=(4, 5, 6)):
    return {"mean": np.zeros(shape, np.float32), "std": np.ones(shape, np.float32), "n_scans": np.array(2, np.int64)}


@pytest.mark.parametrize("change, message", [
    ({"std": np.full((4, 5, 6), np.nan, np.float32)}, "non-finite"),
    ({"std": np.zeros((4, 5, 6), np.float32)}, "positive"),
    ({"mean": np.zeros((4, 5, 6), np.float64)}, "float32"),
    ({"mean": np.zeros((4, 5), np.float32)}, "3-D"),
    ({"mean": np.zeros((4, 5, 7), np.float32)}, "differ in shape"),
    ({"n_scans": np.array(2.0, np.float32)}, "integer scalar n_scans"),
    ({"extra": np.zeros(1, np.float32)}, "must hold mean, std"),
])
def test_invalid_statistics_files_are_refused_naming_the_file(tmp_path, change, message):
    path = tmp_path / "stats.safetensors"
    save_file(dict(good_arrays(), **change), str(path))
    with pytest.raises(ModelError, match=message) as err:
        load_normative(path)
    assert str(path) in str(err.value)


def test_missing_corrupt_or_wrong_grid_statistics_file(tmp_path):
    path = tmp_path / "normative.safetensors"
    with pytest.raises(ModelError, match="missing") as err:
        load_normative(path)
    assert str(path) in str(err.value)
    path.write_bytes(pickle.dumps({"mean": [0.0]}))
    with pytest.raises(ModelError, match="not a valid safetensors") as err:
        load_normative(path)
    assert str(path) in str(err.value)
    save_file(good_arrays(), str(path))
    with pytest.raises(ModelError, match="grid") as err:
        load_normative(path, (96, 112, 96))
    assert str(path) in str(err.value)


def normative_model_folder(tmp_path, **card_changes):
    folder = tmp_path / "normative-model"
    shutil.copytree(find_card("intensity-t1").folder, folder)
    data = json.loads((folder / "card.json").read_text())
    data.update(name="normative-model", **card_changes)
    data["scoring"] = dict(data["scoring"], normative=True)
    (folder / "card.json").write_text(json.dumps(data))
    return folder


def test_model_uses_statistics_set_directly_or_refuses_without_them(tmp_path):
    model = load_model(normative_model_folder(tmp_path), "cpu")
    residuals = noisy_healthy_residuals(2)
    mask = np.ones(residuals[0].shape, bool)
    image = residuals[1]
    with pytest.raises(ModelError, match="normative"):
        model.anomaly_map(image, 0 * image, mask)
    stats = fit_normative(residuals[:1], [mask], sigma=1.0)
    model.normative = stats
    config = ScoringConfig.from_card(model.card.scoring)
    np.testing.assert_array_equal(model.anomaly_map(image, 0 * image, mask),
                                  anomaly_map(image, 0 * image, mask, config, normative=stats))


def test_model_with_a_bad_statistics_file_names_it(tmp_path):
    folder = normative_model_folder(tmp_path, normative="normative.safetensors")
    (folder / "normative.safetensors").write_bytes(b"\x00" * 16)
    model = load_model(folder, "cpu")
    x = np.ones((96, 112, 96), np.float32)
    with pytest.raises(ModelError, match="normative.safetensors"):
        model.anomaly_map(x, x, x > 0)


def test_calibrate_fits_writes_and_uses_normative_statistics(tmp_path):
    from training.calibrate import calibrate_folder

    cache = tmp_path / "cache"
    cache.mkdir()
    healthy_cache(cache)
    folder = normative_model_folder(tmp_path)
    splits = (cache / "splits.csv").read_text()
    (cache / "splits.csv").write_text(splits.replace("sub3.nii.gz,val", "sub3.nii.gz,train"))
    with pytest.raises(ValueError, match="at least two healthy val scans"):  # one is left out at a time
        calibrate_folder(folder, [cache], 0.005, "cpu")
    (cache / "splits.csv").write_text(splits)
    result = calibrate_folder(folder, [cache], 0.005, "cpu")
    card = json.loads((folder / "card.json").read_text())
    assert card["normative"] == "normative.safetensors"
    assert card["threshold"] == result["threshold"] and np.isfinite(result["threshold"]) and result["threshold"] > 0
    calibration = card["metrics"]["calibration"]
    assert calibration["scoring"] == "normative" and calibration["normative"]["scans"] == 2
    assert not list(folder.glob(".normative.safetensors.*"))  # the atomic write left no temporary behind
    stats = load_normative(folder / "normative.safetensors", (96, 112, 96))
    assert stats.n_scans == 2
    model = load_model(folder, "cpu")
    np.testing.assert_array_equal(model.normative.std, stats.std)  # read lazily from the card's folder
    with np.load(cache / "sub4.npz") as z:  # the test scan, scored as calibrate measured it
        image, mask = z["image"], z["mask"]
    score = model.anomaly_map(image, model.reconstruct(image, mask), mask)
    assert np.isfinite(score).all() and score.max() > 0


def test_calibrate_can_pool_the_train_scans_into_the_normative_statistics(tmp_path):
    import argparse

    from training.calibrate import add_arguments, calibrate_folder, calibration_options

    cache = tmp_path / "cache"
    cache.mkdir()
    healthy_cache(cache)  # train 2, val 2, test 1
    folder = normative_model_folder(tmp_path)
    p = argparse.ArgumentParser()
    add_arguments(p)
    options = calibration_options(p.parse_args([str(folder), "--normative-train", "--device", "cpu"]))
    assert options["normative_train"] is True
    calibrate_folder(folder, [cache], **options)
    card = json.loads((folder / "card.json").read_text())
    calibration = card["metrics"]["calibration"]
    assert calibration["normative"]["scans"] == 4 and calibration["normative"]["splits"] == ["val", "train"]
    assert calibration["command"].endswith(" --normative-train")
    assert load_normative(folder / "normative.safetensors").n_scans == 4
    calibrate_folder(folder, [cache], 0.005, "cpu")  # the default: val scans only
    calibration = json.loads((folder / "card.json").read_text())["metrics"]["calibration"]
    assert calibration["normative"]["scans"] == 2 and "--normative-train" not in calibration["command"]
