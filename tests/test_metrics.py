import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from napari_brainuad.metrics import auroc, average_precision, best_dice, dice


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
    assert auroc(scores, scores > 0.5) == 1.0 and average_precision(scores, scores > 0.5) == 1.0
