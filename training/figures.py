"""PNG figures of the benchmark: one case per dataset across models, precision-recall curves, synthetic examples,
the flagged masks of a rescan pair.

Slices are axial (last grid axis), shown in neurological convention (subject's left on the left,
anterior up). Mask-versus-truth panels colour true positives green, false positives red and
missed lesion voxels blue.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from napari_brainuad.io import atomic_write  # noqa: E402


def axial_slice(case) -> int:
    """The axial index with the most lesion voxels, or the most brain voxels for healthy cases."""
    target = case.lesion if case.lesion is not None and case.lesion.any() else case.mask
    return int(np.argmax(target.sum(axis=(0, 1))))


def _show(ax, plane: np.ndarray, title: str = "", **kwargs) -> None:
    ax.imshow(np.swapaxes(plane, 0, 1), origin="lower", interpolation="nearest", **kwargs)
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def overlay(image: np.ndarray, predicted: np.ndarray, truth: np.ndarray | None) -> np.ndarray:
    """RGB (X, Y, 3) of a grey slice with TP green, FP red and FN blue."""
    rgb = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=-1) * 0.7
    truth = np.zeros_like(predicted) if truth is None else truth
    colours = {(True, True): (0, 1, 0), (True, False): (1, 0, 0), (False, True): (0, 0.4, 1)}
    for (p, t), colour in colours.items():
        rgb[(predicted == p) & (truth == t)] = colour
    return rgb


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def panel(case, reconstruction: np.ndarray, score: np.ndarray, threshold: float) -> tuple:
    """What :func:`dataset_figure` shows of one model on ``case``: the (X, Y) axial slices of reconstruction
    and anomaly map at :func:`axial_slice`, the threshold, and the map's colour limit (99.9th percentile
    in the brain, at least the threshold)."""
    z = axial_slice(case)
    vmax = max(float(np.percentile(score[case.mask], 99.9)), threshold, 1e-6)
    return reconstruction[..., z].copy(), score[..., z].copy(), float(threshold), vmax


def dataset_figure(path: Path, dataset: str, case, panels: dict[str, tuple], curves: dict[str, tuple]) -> None:
    """One row per model (input, reconstruction, anomaly map, mask vs truth) and a PR-curve panel.

    panels : model -> :func:`panel` of ``case``.
    curves : model -> (precision, recall, AP) pooled over the dataset (empty arrays for healthy data).
    """
    z = axial_slice(case)
    rows = max(len(panels), 2)
    fig = plt.figure(figsize=(11, 2.1 * rows), constrained_layout=True)
    grid = fig.add_gridspec(rows, 6)
    for r, (model, (recon, score, threshold, vmax)) in enumerate(panels.items()):
        axes = [fig.add_subplot(grid[r, c]) for c in range(4)]
        _show(axes[0], case.image[..., z], "input" if r == 0 else "", cmap="gray", vmin=0, vmax=1)
        _show(axes[1], recon, "reconstruction" if r == 0 else "", cmap="gray", vmin=0, vmax=1)
        _show(axes[2], score, "anomaly map" if r == 0 else "", cmap="inferno", vmin=0, vmax=vmax)
        truth = None if case.lesion is None else case.lesion[..., z]
        _show(axes[3], overlay(case.image[..., z], score >= threshold, truth),
              "mask vs truth (TP/FP/FN)" if r == 0 else "")
        axes[0].text(-0.08, 0.5, model, transform=axes[0].transAxes, rotation=90, va="center", ha="right", fontsize=9)
    ax = fig.add_subplot(grid[:, 4:])
    if any(len(p) for p, _, _ in curves.values()):
        for model, (precision, recall, ap) in curves.items():
            ax.plot(recall, precision, label=f"{model} (AP {ap:.3f})", lw=1.2)
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1), title="precision-recall (pooled voxels)")
        ax.legend(fontsize=8)
    else:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "healthy scans:\nno lesions, no PR curve", ha="center", va="center")
    fig.suptitle(f"{dataset}: {case.name}, axial slice {z}", fontsize=10)
    _save(fig, path)


def rescan_figure(path: Path, first, second, flagged: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """One row per model: each scan of a rescan pair with its flagged voxels (red), then both on the first scan.

    flagged : model -> (flagged mask of ``first``, of ``second``), bool volumes on the model grid. The
    last panel shows voxels flagged in both scans green, only in the first red, only in the second blue.
    """
    union = np.sum([a | b for a, b in flagged.values()], axis=0)
    z = int(np.argmax(union.sum(axis=(0, 1)))) if union.any() else axial_slice(first)
    fig, axes = plt.subplots(len(flagged), 3, figsize=(6.6, 2.3 * len(flagged)), constrained_layout=True,
                             squeeze=False)
    for r, (model, (a, b)) in enumerate(flagged.items()):
        _show(axes[r, 0], overlay(first.image[..., z], a[..., z], None), f"scan 1: {first.name}" if r == 0 else "")
        _show(axes[r, 1], overlay(second.image[..., z], b[..., z], None), f"scan 2: {second.name}" if r == 0 else "")
        _show(axes[r, 2], overlay(first.image[..., z], a[..., z], b[..., z]), "" if r else "both / only 1 / only 2")
        axes[r, 0].text(-0.08, 0.5, model, transform=axes[r, 0].transAxes, rotation=90, va="center", ha="right",
                        fontsize=9)
    fig.suptitle(f"rescans {first.name} and {second.name}: flagged at the card threshold, axial slice {z}", fontsize=10)
    _save(fig, path)


def thin_curve(precision: np.ndarray, recall: np.ndarray, points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """At most ``points`` operating points, evenly spaced in recall, for plotting."""
    if recall.size <= points:
        return precision, recall
    keep = np.unique(np.searchsorted(recall, np.linspace(0, 1, points)).clip(0, recall.size - 1))
    return precision[keep], recall[keep]


def synthetic_examples(path: Path, examples: list[tuple[str, object]]) -> None:
    """A row per example (label, case): the healthy-looking input slice and the lesion outline."""
    fig, axes = plt.subplots(2, len(examples), figsize=(2.2 * len(examples), 4.6), constrained_layout=True)
    for c, (label, case) in enumerate(examples):
        z = axial_slice(case)
        _show(axes[0, c], case.image[..., z], label, cmap="gray", vmin=0, vmax=1)
        _show(axes[1, c], case.image[..., z], "ground truth", cmap="gray", vmin=0, vmax=1)
        axes[1, c].contour(np.swapaxes(case.lesion[..., z], 0, 1).astype(float), levels=[0.5], colors="lime",
                           linewidths=0.8)
    _save(fig, path)
