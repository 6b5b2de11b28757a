import itertools

import numpy as np
import pytest
from scipy import ndimage

from napari_brainuad.scoring import (ScoringConfig, anomaly_map, calibrate_threshold, findings, scan_level,
                                     shift_tolerant_residual)


def brute_force_residual(x, y, shift):
    best = np.full(x.shape, np.inf)
    for idx in np.ndindex(x.shape):
        for d in itertools.product(range(-shift, shift + 1), repeat=x.ndim):
            j = tuple(min(max(i + o, 0), n - 1) for i, o, n in zip(idx, d, x.shape))
            best[idx] = min(best[idx], abs(x[idx] - y[j]))
    return best


@pytest.mark.parametrize("shift", [0, 1, 2])
def test_shift_tolerant_residual_matches_brute_force(shift):
    rng = np.random.default_rng(shift)
    x, y = rng.random((6, 7, 5)), rng.random((6, 7, 5))
    np.testing.assert_allclose(shift_tolerant_residual(x, y, shift), brute_force_residual(x, y, shift), rtol=1e-6)


def test_shift_tolerance_forgives_a_one_voxel_misalignment():
    x = np.zeros((20, 20, 20))
    x[5:15, 5:15, 5:15] = 1.0
    moved = np.roll(x, 1, axis=0)
    assert shift_tolerant_residual(x, moved, 0).max() == 1.0
    assert shift_tolerant_residual(x, moved, 1).max() == 0.0


def test_anomaly_map_switches():
    rng = np.random.default_rng(0)
    x = rng.random((24, 24, 24)).astype(np.float32)
    mask = np.zeros(x.shape, bool)
    mask[4:20, 4:20, 4:20] = True
    recon = np.zeros_like(x)
    plain = anomaly_map(x, recon, mask, ScoringConfig(shift=0, minmax=False, median_size=0, erode=0))
    np.testing.assert_allclose(plain, np.where(mask, x, 0))
    eroded = anomaly_map(x, recon, mask, ScoringConfig(shift=0, median_size=0, erode=2))
    assert not eroded[mask & ~ndimage.binary_erosion(mask, iterations=2)].any()
    scaled = anomaly_map(x, recon, mask, ScoringConfig(shift=0, minmax=True, median_size=0, erode=0))
    assert scaled[mask].min() == 0.0 and scaled[mask].max() == pytest.approx(1.0)
    smooth = anomaly_map(x, recon, mask, ScoringConfig(shift=0, median_size=3, erode=0))
    assert smooth[mask].std() < plain[mask].std()
    blurred = anomaly_map(x, recon, mask, ScoringConfig(shift=0, median_size=0, gaussian_sigma=1.0, erode=0))
    assert blurred[mask].std() < plain[mask].std()


def test_gaussian_smoothing_keeps_a_score_on_a_thin_anomaly_that_the_median_erases():
    mask = np.ones((16, 16, 16), bool)
    image = np.zeros((16, 16, 16), np.float32)
    image[8, 8, 4:12] = 1.0  # a line one voxel thick: a minority of every 3x3x3 neighbourhood
    recon = np.zeros_like(image)
    median = anomaly_map(image, recon, mask, ScoringConfig(shift=0, median_size=3, erode=0))
    gauss = anomaly_map(image, recon, mask, ScoringConfig(shift=0, median_size=0, gaussian_sigma=1.0, erode=0))
    assert not median.any()
    assert gauss[8, 8, 4:12].min() > gauss[8, 11, 4:12].max() > 0  # highest on the line, falling off it
    assert gauss[0, 0, 0] < 1e-6


def test_calibrate_threshold_flags_at_most_the_fraction():
    rng = np.random.default_rng(1)
    maps = [rng.random((10, 10, 10)) for _ in range(3)]
    masks = [np.ones((10, 10, 10), bool)] * 3
    t = calibrate_threshold(maps, masks, 0.01)
    flagged = np.mean(np.concatenate([m[k] for m, k in zip(maps, masks)]) >= t)
    assert 0.005 < flagged <= 0.01


def test_calibrate_threshold_volume_bound_wins_when_tighter():
    rng = np.random.default_rng(2)
    maps = [rng.random((10, 10, 10)) for _ in range(4)]
    masks = [np.ones((10, 10, 10), bool)] * 4
    loose = calibrate_threshold(maps, masks, 0.01, max_voxels=1000)  # 1000 voxels per scan: the share binds
    assert loose == calibrate_threshold(maps, masks, 0.01)
    t = calibrate_threshold(maps, masks, 0.01, max_voxels=4)  # 4 voxels per scan: 0.4 % of 1000
    per_scan = [np.count_nonzero(m >= t) for m in maps]
    assert 8 < sum(per_scan) <= 4 * 4 + 1 and t > loose


def test_findings_volumes_centroids_and_order():
    score = np.zeros((30, 30, 30), np.float32)
    mask = np.zeros(score.shape, bool)
    mask[2:4, 2:4, 2:4] = True  # 8 voxels
    mask[10:20, 10:20, 10:20] = True  # 1000 voxels, largest -> label 1
    score[mask] = 0.5
    score[15, 15, 15] = 0.9
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-10, 0, 5]
    labels, found = findings(score, mask, affine)
    assert [f.n_voxels for f in found] == [1000, 8]
    assert found[0].volume_ml == pytest.approx(8.0) and found[1].volume_ml == pytest.approx(0.064)
    assert found[0].peak_score == pytest.approx(0.9)
    np.testing.assert_allclose(found[0].centroid_mm, [-10 + 2 * 14.5, 2 * 14.5, 5 + 2 * 14.5])
    assert labels[15, 15, 15] == 1 and labels[3, 3, 3] == 2 and labels[0, 0, 0] == 0
    assert findings(score, np.zeros_like(mask), affine)[1] == []


def test_polarity_counts_one_side_of_the_residual():
    x = np.full((9, 9, 9), 0.5, np.float32)
    x[2, 2, 2], x[6, 6, 6] = 0.9, 0.1  # one bright and one dark voxel
    recon = np.full_like(x, 0.5)
    both = shift_tolerant_residual(x, recon, 0, "both")
    bright = shift_tolerant_residual(x, recon, 0, "bright")
    dark = shift_tolerant_residual(x, recon, 0, "dark")
    np.testing.assert_allclose(both, bright + dark)
    assert bright[2, 2, 2] == pytest.approx(0.4) and bright[6, 6, 6] == 0.0
    assert dark[6, 6, 6] == pytest.approx(0.4) and dark[2, 2, 2] == 0.0
    # shift tolerance: the smallest one-sided residual over shifts is against the brightest (for "bright")
    # or darkest (for "dark") reconstruction voxel within the shift
    rng = np.random.default_rng(1)
    a, b = rng.random((6, 7, 5)), rng.random((6, 7, 5))
    padded = np.pad(b, 1, mode="edge")
    windows = np.stack([padded[i:i + 6, j:j + 7, k:k + 5] for i, j, k in itertools.product(range(3), repeat=3)])
    np.testing.assert_allclose(shift_tolerant_residual(a, b, 1, "bright"), np.maximum(a - windows.max(0), 0), rtol=1e-6)
    np.testing.assert_allclose(shift_tolerant_residual(a, b, 1, "dark"), np.maximum(windows.min(0) - a, 0), rtol=1e-6)


def test_auto_polarity_is_settled_by_the_contrast():
    auto = ScoringConfig(polarity="auto")
    assert auto.for_contrast("T1").polarity == "both"
    assert {auto.for_contrast(c).polarity for c in ("T2", "FLAIR", "PD", "DWI")} == {"bright"}
    assert ScoringConfig(polarity="dark").for_contrast("FLAIR").polarity == "dark"
    mask = np.ones((8, 8, 8), bool)
    with pytest.raises(ValueError, match="settled"):
        anomaly_map(np.zeros((8, 8, 8)), np.zeros((8, 8, 8)), mask, auto)
    with pytest.raises(ValueError, match="polarity"):
        ScoringConfig(polarity="up")


def test_scan_scale_scores_a_scanner_with_higher_residuals_everywhere_as_the_one_it_was_calibrated_on():
    rng = np.random.default_rng(3)
    recon = rng.random((20, 20, 20)).astype(np.float32)
    mask = np.zeros(recon.shape, bool)
    mask[2:18, 2:18, 2:18] = True
    error = 0.02 * rng.standard_normal(recon.shape).astype(np.float32)
    error[8:11, 8:11, 8:11] += 0.5  # a lesion
    config = ScoringConfig(shift=0, median_size=0, erode=1, scan_scale=True)
    calibrated = anomaly_map(recon + error, recon, mask, config)
    shifted = anomaly_map(recon + 3 * error, recon, mask, config)  # a scanner reconstructed 3x less closely
    np.testing.assert_allclose(shifted, calibrated, rtol=1e-4, atol=1e-5)
    raw = anomaly_map(recon + error, recon, mask, ScoringConfig(shift=0, median_size=0, erode=1))
    brain = ndimage.binary_erosion(mask)
    np.testing.assert_allclose(calibrated[brain], raw[brain] / np.median(raw[brain]), rtol=1e-5)
    assert calibrated[9, 9, 9] > 10 * np.median(calibrated[brain])  # the lesion stands out by the same ratio


def test_scan_scale_reads_the_level_from_both_sides_so_a_one_sided_polarity_is_scaled_too():
    rng = np.random.default_rng(4)
    recon = rng.random((16, 16, 16)).astype(np.float32)
    mask = np.ones(recon.shape, bool)
    image = recon + 0.05 * rng.standard_normal(recon.shape).astype(np.float32)
    plain = dict(shift=0, median_size=0, erode=0)
    both = anomaly_map(image, recon, mask, ScoringConfig(**plain))
    bright = anomaly_map(image, recon, mask, ScoringConfig(polarity="bright", scan_scale=True, **plain))
    np.testing.assert_allclose(bright, np.maximum(image - recon, 0) / np.median(both), rtol=1e-5, atol=1e-6)


def test_scan_level_is_the_median_over_the_eroded_mask_and_a_perfect_reconstruction_is_left_unscaled():
    residual = np.arange(5 ** 3, dtype=np.float32).reshape(5, 5, 5)
    mask = np.ones(residual.shape, bool)
    assert scan_level(residual, mask) == np.median(residual)
    assert scan_level(residual, mask, erode=2) == residual[2, 2, 2]
    assert scan_level(residual, np.zeros(residual.shape, bool)) == 0.0
    image = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    config = ScoringConfig(shift=0, median_size=0, erode=0, scan_scale=True)
    assert not anomaly_map(image, image, image > 0, config).any()  # no residual, no division by zero
