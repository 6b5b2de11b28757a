"""Voxel-level detection metrics on flat arrays of scores and binary labels (numpy only).

All take ``scores`` (float, any shape) and ``truth`` (bool, same shape) and handle ties the way
scikit-learn does (one operating point per distinct score).
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def _sorted_counts(scores, truth):
    """Cumulative true/false positives at each distinct score, highest first."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    t = np.asarray(truth, dtype=bool).ravel()
    order = np.argsort(-s, kind="mergesort")
    s, t = s[order], t[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each run of equal scores
    tp = np.cumsum(t)[last]
    fp = (last + 1) - tp
    return tp, fp, s[last]


def auroc(scores, truth) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN without both classes."""
    t = np.asarray(truth, dtype=bool).ravel()
    n_pos, n_neg = int(t.sum()), int(t.size - t.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64).ravel())
    return float((ranks[t].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(scores, truth) -> float:
    """Area under the precision-recall curve as sum over thresholds of (R_n - R_{n-1}) P_n."""
    tp, fp, _ = _sorted_counts(scores, truth)
    if tp.size == 0 or tp[-1] == 0:
        return float("nan")
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def precision_recall(scores, truth) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and threshold at each distinct score, highest threshold first.

    The operating points of ``scores >= threshold``, as :func:`sklearn.metrics.precision_recall_curve`
    gives them (in reverse order, without its final (1, 0) point). Empty arrays without positives.
    """
    tp, fp, thresholds = _sorted_counts(scores, truth)
    if tp.size == 0 or tp[-1] == 0:
        return np.empty(0), np.empty(0), np.empty(0)
    return tp / (tp + fp), tp / tp[-1], thresholds


def best_dice(scores, truth) -> tuple[float, float]:
    """Best Dice over all thresholds ``scores >= t`` and the threshold that reaches it."""
    tp, fp, thresholds = _sorted_counts(scores, truth)
    positives = int(np.asarray(truth, bool).sum())
    if tp.size == 0 or positives == 0:
        return float("nan"), float("nan")
    dice = 2 * tp / (tp + fp + positives)
    i = int(np.argmax(dice))
    return float(dice[i]), float(thresholds[i])


def false_positive_rate(prediction, truth) -> float:
    """Fraction of the negative voxels that ``prediction`` flags; NaN without negatives."""
    p, t = np.asarray(prediction, bool), np.asarray(truth, bool)
    negatives = int(t.size - t.sum())
    return float("nan") if negatives == 0 else float(np.logical_and(p, ~t).sum() / negatives)


def dice(prediction, truth) -> float:
    """Dice of two binary masks (1.0 when both are empty)."""
    p, t = np.asarray(prediction, bool), np.asarray(truth, bool)
    total = p.sum() + t.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(p, t).sum() / total)
