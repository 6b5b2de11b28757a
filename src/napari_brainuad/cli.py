"""Command line: ``brainuad detect | batch | models | demo``; a thin shell over :mod:`pipeline`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .io import InputError, OutputError, read_volume, stem
from .models import ModelError, available_models, load_model
from .models.card import CONTRASTS
from .progress import run
from .sample import SAMPLE_MODEL, sample_path
from .scoring import POLARITIES, POLARITY_WORDS


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (InputError, ModelError, OutputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brainuad", description="Unsupervised anomaly detection in brain MRI.")
    parser.add_argument("--version", action="version", version=f"napari-brainuad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("detect", help="detect anomalies in one scan", description="Detect anomalies in one scan and "
                       "write <stem>_reconstruction/_anomaly/_mask.nii.gz and <stem>_findings.csv on its own grid.")
    p.add_argument("input", type=Path, help="NIfTI (.nii, .nii.gz) or MGZ scan")
    _add_detect_options(p)
    p.add_argument("--brain-mask", type=Path, help="brain mask on the input grid (skips skull stripping)")
    p.set_defaults(func=_detect)

    p = sub.add_parser("batch", help="detect anomalies in every scan of a folder",
                       description="Run detection over a folder; writes the outputs per file and summary.csv. "
                       "A bad file is reported in the summary and the batch goes on; complete outputs are skipped.")
    p.add_argument("input_dir", type=Path)
    p.add_argument("--pattern", default="*.nii*", help="glob pattern, e.g. '*_T1w.nii.gz' or '**/*.nii.gz'")
    p.add_argument("--bids", nargs="?", const="T1w", metavar="SUFFIX",
                   help="INPUT_DIR is a BIDS dataset: run its anat scans with this suffix (default T1w) and write a "
                   "BIDS derivatives dataset into --out (e.g. INPUT_DIR/derivatives/brainuad)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="run on Dask distributed: 'local' (a local cluster of "
                   "single-threaded workers) or a scheduler address such as tcp://host:8786")
    p.add_argument("--workers", type=int, help="workers of a local Dask cluster (default: one per core)")
    _add_detect_options(p)
    p.set_defaults(func=_batch)

    p = sub.add_parser("models", help="list the models and their cards' key figures")
    p.add_argument("--json", action="store_true", help="print the full cards as JSON")
    p.set_defaults(func=_models)

    p = sub.add_parser("demo", help="run detection on the bundled sample scan (a chronic stroke, T1)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--model", default=SAMPLE_MODEL)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_demo)
    return parser


def _add_detect_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="bundled model name (see 'brainuad models') or a model folder")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--t-int", type=int, help="diffusion noise level (diffusion models only)")
    p.add_argument("--threshold", type=float, help="anomaly threshold (default: the model's calibrated one)")
    p.add_argument("--skull-strip", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--no-register", action="store_true", help="the scan is already in MNI space")
    p.add_argument("--polarity", choices=list(POLARITIES), help="which side of the residual counts: both, bright "
                   "(image brighter than its reconstruction: hyperintense lesions), dark, or auto (both on a T1, "
                   "bright on other contrasts); default: the model card's")
    p.add_argument("--contrast", choices=list(CONTRASTS), help="the scan's contrast, when known (settles an auto "
                   "polarity and the contrast warning; default: read from the scan, T1, T2 or FLAIR only)")
    p.add_argument("--min-volume", type=float, default=0.0, help="drop findings smaller than this (ml)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda or cuda:N")


def _options(args) -> dict:
    return {"t_int": args.t_int, "threshold": args.threshold, "skull_strip": args.skull_strip,
            "register": not args.no_register, "min_volume_ml": args.min_volume, "seed": args.seed,
            "polarity": args.polarity, "contrast": args.contrast}


def _progress_bar(label: str):
    from tqdm import tqdm

    bar = tqdm(total=100, desc=label, unit="%", bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}")

    def update(step):
        bar.n = round(100 * step.fraction)
        bar.set_description_str(f"{label} [{step.stage}]")
    return bar, update


def _detect(args) -> int:
    from .outdir import output_lock, prepare_out_dir
    from .pipeline import check_options, check_spares_inputs, iter_detect, output_paths, save_result

    # Everything that can be checked without computing is checked first: options, the model,
    # the output folder and that no output lands on an input.
    model = load_model(args.model, args.device)
    check_options(model.card, args.t_int, args.threshold, args.min_volume, args.contrast, args.polarity)
    check_spares_inputs(output_paths(args.out, stem(args.input)), [args.input, args.brain_mask])
    with output_lock(prepare_out_dir(args.out)):
        volume = read_volume(args.input)
        brain_mask = _read_brain_mask(args.brain_mask, volume) if args.brain_mask else None
        bar, update = _progress_bar(args.input.name)
        with bar:
            result = run(iter_detect(volume, model, brain_mask=brain_mask, **_options(args)), update)
        paths = save_result(result, args.out)
    _report(result, paths, model.card)
    return 0


def _read_brain_mask(path: Path, volume):
    mask = read_volume(path)
    if mask.shape != volume.shape:
        raise InputError(f"{path}: brain mask shape {mask.shape} differs from the scan {volume.path}'s {volume.shape}.")
    return mask.data > 0


def _report(result, paths, card) -> None:
    total = sum(f.volume_ml for f in result.findings)
    print(f"{result.volume.name}: {len(result.findings)} findings, {total:.2f} ml at threshold "
          f"{result.threshold:.4g} ({result.model}, accepts {'/'.join(card.accepted_contrasts)}, counts "
          f"{POLARITY_WORDS[result.polarity]}); "
          f"{result.seconds['total']:.1f} s")
    for f in result.findings[:5]:
        x, y, z = f.centroid_mm
        print(f"  #{f.label}: {f.volume_ml:.2f} ml, peak {f.peak_score:.3g}, centroid ({x:.0f}, {y:.0f}, {z:.0f}) mm")
    for p in paths.values():
        print(f"  wrote {p}")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)


def _batch(args) -> int:
    from .pipeline import iter_batch

    model = load_model(args.model, args.device)
    options = _options(args)
    bar, update = _progress_bar(str(args.input_dir))
    with bar:
        items = run(iter_batch(args.input_dir, args.out, model, pattern=args.pattern, bids=args.bids,
                               scheduler=args.scheduler, workers=args.workers, worker_device=args.device, **options),
                    update)
    for it in items:
        print(f"{it.status:8s} {it.file.name}" + (f": {it.message}" if it.status == "error" else ""))
        for warning in it.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    bad = sum(it.status == "error" for it in items)
    print(f"{len(items) - bad} of {len(items)} files done; summary in {args.out / 'summary.csv'}")
    return 1 if bad else 0


def _models(args) -> int:
    cards = available_models()
    if args.json:
        print(json.dumps([c.data for c in cards], indent=2))
        return 0
    for card in cards:
        weights = card.weights or "none needed"
        t_int = f", t_int {card.t_int['min']}-{card.t_int['max']} (default {card.t_int['default']})" \
            if card.is_diffusion else ""
        print(f"{card.name}\n  {card.summary()}\n  weights: {weights}; default threshold {card.threshold:.4g}{t_int}")
    return 0


def _demo(args) -> int:
    from .outdir import prepare_out_dir
    from .pipeline import iter_detect, save_result

    model = load_model(args.model, args.device)
    prepare_out_dir(args.out)
    volume = read_volume(sample_path())
    bar, update = _progress_bar("demo: chronic stroke T1")
    with bar:
        result = run(iter_detect(volume, model), update)
    paths = save_result(result, args.out, name="sample_T1")
    _report(result, paths, model.card)
    left, total = left_hemisphere_ml(result)
    print(f"This scan has a chronic stroke in the left hemisphere (no expert mask ships with it): "
          f"{left:.2f} of the {total:.2f} ml flagged on the MNI model grid lie left of the midline.")
    return 0


def left_hemisphere_ml(result) -> tuple[float, float]:
    """Flagged volume (ml, on the model grid) left of the MNI midline (world x < 0), and in all."""
    import numpy as np

    arrays = result.template_arrays
    template = arrays["preprocessed"].template
    flagged = arrays["anomaly_map"] >= result.threshold
    x = template.affine[0, 0] * np.arange(flagged.shape[0]) + template.affine[0, 3]
    return float(flagged[x < 0].sum()) * template.voxel_volume_ml, float(flagged.sum()) * template.voxel_volume_ml
