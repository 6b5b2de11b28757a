import numpy as np
import pytest
from sklearn.metrics import average_precision_score, confusion_matrix, precision_recall_curve, roc_auc_score

from napari_brainuad.metrics import (auroc, average_precision, best_dice, dice, false_positive_rate,
                                     precision_recall)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_against_scikit_learn(seed, ties):
    rng = np.random.default_rng(seed)
    truth = rng.random(500) < 0.2
    scores = rng.random(500) + truth * 0.3
    if ties:
        scores = np.round(scores, 1)
    assert auroc(scores, truth) == pytest.approx(roc_auc_score(truth, scores))
    assert average_precision(scores, truth) == pytest.approx(average_precision_score(truth, scores))
    precision, recall, thresholds = precision_recall(scores, truth)
    p_ref, r_ref, t_ref = precision_recall_curve(truth, scores)
    np.testing.assert_allclose(precision, p_ref[:-1][::-1])
    np.testing.assert_allclose(recall, r_ref[:-1][::-1])
    np.testing.assert_allclose(thresholds, t_ref[::-1])
    predicted = scores >= np.median(scores)
    tn, fp, _, _ = confusion_matrix(truth, predicted).ravel()
    assert false_positive_rate(predicted, truth) == pytest.approx(fp / (fp + tn))


@pytest.mark.parametrize("seed", range(3))
def test_best_dice_brute_force(seed):
    rng = np.random.default_rng(seed)
    truth = rng.random((8, 9, 10)) < 0.1
    scores = np.round(rng.random(truth.shape) + truth * 0.5, 2)
    brute = max(dice(scores >= t, truth) for t in np.unique(scores))
    value, threshold = best_dice(scores, truth)
    assert value == pytest.approx(brute)
    assert dice(scores >= threshold, truth) == pytest.approx(value)


def test_empty_and_degenerate_masks():
    scores = np.linspace(0, 1, 10)
    empty = np.zeros(10, bool)
    assert np.isnan(auroc(scores, empty)) and np.isnan(average_precision(scores, empty))
    assert np.isnan(best_dice(scores, empty)[0])
    assert dice(empty, empty) == 1.0
    assert all(a.size == 0 for a in precision_recall(scores, empty))
    assert false_positive_rate(scores > 0.5, empty) == pytest.approx(0.5)
    assert np.isnan(false_positive_rate(scores > 0.5, np.ones(10, bool)))
    assert auroc(scores, scores > 0.5) == 1.0 and average_precision(scores, scores > 0.5) == 1.0


def test_ssim_of_the_benchmark_matches_scikit_image():
    """The benchmark's SSIM (MONAI, 3D Gaussian window) against scikit-image's reference implementation."""
    import torch
    from monai.metrics import SSIMMetric
    from scipy import ndimage
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    a = ndimage.gaussian_filter(rng.random((40, 44, 36)), 2)
    a = ((a - a.min()) / (a.max() - a.min())).astype(np.float32)
    b = np.clip(a + 0.05 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
    ours = float(SSIMMetric(spatial_dims=3, data_range=1.0)(torch.from_numpy(b)[None, None], torch.from_numpy(a)[None, None]))
    reference = structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ours == pytest.approx(reference, abs=1e-4)
