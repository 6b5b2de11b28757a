"""How much of a large synthetic lesion a model keeps in its reconstruction, by the lesion's intensity.

    PYTHONPATH=. .venv/bin/python docs/probe_lesion_intensity.py --cache cache/oasis \
        --models restore-any runs/restore-any-large-model
    PYTHONPATH=. .venv/bin/python docs/probe_lesion_intensity.py --cache cache/oasis \
        --models restore-any runs/restore-any-large-model --fraction 0.06 0.1

The first ``--scans`` OASIS ``test`` brains of a ``prepare`` cache are rendered FLAIR-like from their label
maps (``training.synth.CONTRASTS``), each with one fluid-driven lesion covering ``--fraction`` of the brain
(default 1-3 %; the development gliomas cover 6-10 %), painted at each ``--levels`` intensity (on the scale of the tissue means: CSF 0.02-0.12,
WM 0.35-0.45, GM 0.5-0.6) into the same rendering. Prints, per model and level, the mean "lesion kept": the
evaluation's :func:`training.measures.lesion_kept` (0: removed, 1: copied) with the healthy rendering as the
healthy scan.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from napari_brainuad.models import load_model
from napari_brainuad.synthetic import fluid_pathology, random_blobs
from training.cases import cached_cases
from training.data import cached_labels
from training.measures import lesion_kept
from training.synth import CONTRASTS, contrast_image


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, required=True, help="OASIS site cache of `python -m training prepare`")
    p.add_argument("--models", nargs="+", required=True, help="bundled model names or model folders")
    p.add_argument("--levels", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8, 0.95])
    p.add_argument("--fraction", type=float, nargs=2, default=[0.01, 0.03], metavar=("LOW", "HIGH"),
                   help="range of the brain's fraction a lesion covers")
    p.add_argument("--scans", type=int, default=6)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    models = {name: load_model(name) for name in args.models}
    means = CONTRASTS["FLAIR-like"][0]
    kept = {name: {v: [] for v in args.levels} for name in models}
    for i, case in enumerate(cached_cases(args.cache, "test")[:args.scans]):
        maps = cached_labels(next(args.cache.glob(f"{case.name}_*.npz")))
        rng = np.random.default_rng([args.seed, i])
        P = fluid_pathology(random_blobs(case.mask, rng, tuple(args.fraction)), case.mask, rng) * case.mask
        lesion = (P > 0.5) & case.mask

        def render(**paint):  # the same rendering draws every time: only the lesion differs
            rng = np.random.default_rng([args.seed, i, 1])
            return contrast_image(maps["labels"], maps["tissues"], case.mask, rng, means=means, **paint)

        healthy = render()
        for v in args.levels:
            sick = render(lesion=P, lesion_mean=v)
            for name, model in models.items():
                kept[name][v].append(lesion_kept(model.reconstruct(sick, case.mask), sick, healthy, lesion))
        print(f"{case.name}: lesion {lesion.sum() * 0.008:.1f} ml", flush=True)
    print("lesion kept (mean over scans) by lesion intensity " + " ".join(f"{v:g}" for v in args.levels))
    for name in models:
        print(name, " ".join(f"{np.nanmean(kept[name][v]):.2f}" for v in args.levels))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
