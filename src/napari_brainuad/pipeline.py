"""The detection engine: ``detect`` for one scan, ``batch`` for a folder.

The widgets and the command line call these and nothing lower. Data flows one way:
volume -> preprocess -> model.reconstruct -> scoring -> back to the native grid -> Result.
"""
from __future__ import annotations

import csv
import hashlib
import importlib
import inspect
import io as _io
import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .io import (InputError, OutputError, Volume, atomic_write, is_image_path, read_volume, remove_stale_temporaries,
                 stem, write_volume)
from .models import AnomalyModel, ModelError, load_model
from .models.card import CONTRASTS
from .outdir import output_lock, prepare_out_dir, reason
from .preprocess import SkullStrip, iter_preprocess
from .progress import Step, Steps, run, scaled
from .quality import scan_warnings
from .scoring import POLARITIES, POLARITY_WORDS, Finding, ScoringConfig, findings
from .template import Template

OUTPUT_KINDS = ("reconstruction", "anomaly", "mask", "findings")
FINDING_COLUMNS = ["label", "volume_ml", "peak_score", "mean_score", "centroid_x_mm", "centroid_y_mm",
                   "centroid_z_mm", "n_voxels"]
SETTINGS_FILE = "batch.json"
SUMMARY_COLUMNS = ["file", "status", "message", "model", "t_int", "threshold", "polarity", "n_findings",
                   "lesion_volume_ml", "max_score", "seconds", "warnings"]


@dataclass(eq=False)
class Result:
    """Outputs of one detection, on the input's own grid.

    reconstruction, anomaly_map : (X, Y, Z) float32 on ``volume``'s grid (intensities in the
        model's normalised [0, 1] units; zero outside the brain).
    mask : (X, Y, Z) int32 labels of the findings (0 = background, 1 = largest finding).
    template_arrays : the same quantities on the model grid, for evaluation.
    warnings : sentences about a scan the model may not suit (not a brain, another contrast,
        partial coverage, no orientation); empty when none.
    polarity : the side of the residual the map counted (``ScoringConfig.polarity``, ``"auto"`` settled).
    """

    volume: Volume
    model: str
    t_int: int | None
    threshold: float
    reconstruction: np.ndarray
    anomaly_map: np.ndarray
    mask: np.ndarray
    findings: list[Finding]
    brain_mask: np.ndarray
    template_arrays: dict = field(repr=False, default_factory=dict)
    seconds: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    polarity: str = "both"

    def with_threshold(self, threshold: float, min_volume_ml: float = 0.0) -> "Result":
        """The same result re-thresholded (no model run): new mask and findings."""
        labels, found = threshold_map(self.anomaly_map, threshold, self.volume.affine, min_volume_ml)
        return replace(self, threshold=float(threshold), mask=labels, findings=found)


def threshold_map(score: np.ndarray, threshold: float, affine: np.ndarray,
                  min_volume_ml: float = 0.0) -> tuple[np.ndarray, list[Finding]]:
    """Label image and findings of ``score >= threshold``, dropping findings under ``min_volume_ml``."""
    labels, found = findings(score, score >= threshold, affine)
    small = [f.label for f in found if f.volume_ml < min_volume_ml]
    if small:
        keep = [f for f in found if f.volume_ml >= min_volume_ml]
        relabel = np.zeros(len(found) + 1, np.int32)
        for new, f in enumerate(keep, start=1):
            relabel[f.label] = new
        labels = relabel[labels]
        found = [replace(f, label=new) for new, f in enumerate(keep, start=1)]
    return labels, found


def detect(volume: Volume, model: AnomalyModel, **kwargs) -> Result:
    """Run detection on one volume; see :func:`iter_detect` for the options."""
    return run(iter_detect(volume, model, **kwargs))


def iter_detect(
    volume: Volume,
    model: AnomalyModel,
    t_int: int | None = None,
    threshold: float | None = None,
    skull_strip: SkullStrip = "auto",
    register: bool = True,
    brain_mask: np.ndarray | None = None,
    scoring: ScoringConfig | None = None,
    polarity: str | None = None,
    contrast: str | None = None,
    min_volume_ml: float = 0.0,
    seed: int = 0,
    template: Template | None = None,
) -> Steps[Result]:
    """Detect anomalies in ``volume`` with ``model``, yielding progress steps.

    Parameters
    ----------
    t_int : diffusion noise level (diffusion families only; the card's default when None).
    threshold : anomaly-score threshold; the card's calibrated default when None.
    skull_strip, register, brain_mask : see :func:`napari_brainuad.preprocess.iter_preprocess`.
    scoring : anomaly-map switches; the card's ``scoring`` when None.
    polarity : which side of the residual counts (``"both"``, ``"bright"``, ``"dark"`` or ``"auto"``:
        see :class:`~napari_brainuad.scoring.ScoringConfig`); ``scoring``'s when None. ``"auto"`` is
        settled by ``contrast``.
    contrast : the scan's contrast (``"T1"``, ``"T2"``, ``"FLAIR"``, ``"PD"``, ``"DWI"``) when the user knows it;
        None reads it from the preprocessed scan (:func:`~napari_brainuad.quality.guess_contrast`: T1, T2 or
        FLAIR only, and easily fooled by weak grey-white contrast, so stating it is safer).
    min_volume_ml : findings smaller than this are dropped from the mask.
    seed : seeds every stochastic step; the same seed gives the same map.
    """
    card = model.card
    t_int, threshold = check_options(card, t_int, threshold, min_volume_ml, contrast, polarity)
    scoring = scoring or ScoringConfig.from_card(card.scoring)
    if polarity is not None:
        scoring = replace(scoring, polarity=polarity)
    template = template or card.template_grid()
    clock = {"start": time.perf_counter()}
    pre = yield from scaled(iter_preprocess(volume, template=template, skull_strip=skull_strip, register=register,
                                            brain_mask=brain_mask, device=model.device, seed=seed), 0.0, 0.3)
    clock["preprocess"] = time.perf_counter()
    recon = yield from scaled(model.iter_reconstruct(pre.image, pre.mask, t_int=t_int, seed=seed), 0.3, 0.9)
    clock["model"] = time.perf_counter()
    yield Step("scoring", 0.9)
    scoring = model.scoring_for(pre.image, pre.mask, scoring, contrast)
    score = model.anomaly_map(pre.image, recon, pre.mask, scoring)
    yield Step("mapping back to the input grid", 0.95)
    native_score = pre.to_native(score)
    np.clip(native_score, 0.0, None, out=native_score)
    native_recon = pre.to_native(recon)
    labels, found = threshold_map(native_score, threshold, volume.affine, min_volume_ml)
    clock["scoring"] = time.perf_counter()
    seconds = {"preprocess": clock["preprocess"] - clock["start"], "model": clock["model"] - clock["preprocess"],
               "scoring": clock["scoring"] - clock["model"], "total": clock["scoring"] - clock["start"]}
    yield Step("done", 1.0)
    return Result(volume, model.name, t_int, threshold, native_recon, native_score, labels, found, pre.native_mask,
                  {"image": pre.image, "mask": pre.mask, "reconstruction": recon, "anomaly_map": score,
                   "preprocessed": pre}, seconds,
                  scan_warnings(pre, card.accepted_contrasts, contrast) + _threshold_warnings(card, scoring, threshold),
                  scoring.polarity)


def _threshold_warnings(card, scoring: ScoringConfig, threshold: float) -> list[str]:
    """A sentence when the map counts another side of the residual than the card's threshold was calibrated
    for (on healthy T1 scans: an ``"auto"`` polarity as ``"both"``) and that threshold is in use."""
    calibrated = ScoringConfig.from_card(card.scoring).for_contrast("T1").polarity
    if scoring.polarity == calibrated or threshold != card.threshold:
        return []
    return [f"model {card.name}: its default threshold was calibrated on healthy T1 scans counting the residual "
            f"{POLARITY_WORDS[calibrated]}, and this map counts it {POLARITY_WORDS[scoring.polarity]}, so the "
            "threshold may flag too little or too much: tune it and read the map."]


def check_options(card, t_int: int | None = None, threshold: float | None = None,
                  min_volume_ml: float = 0.0, contrast: str | None = None,
                  polarity: str | None = None) -> tuple[int | None, float]:
    """The ``t_int`` and threshold a detection with ``card`` will use; :class:`ModelError` for bad options.

    Cheap: callers check before reading a scan or computing anything.
    """
    threshold = float(card.threshold if threshold is None else threshold)
    if not math.isfinite(threshold) or threshold <= 0:
        raise ModelError(f"threshold {threshold:g}: must be a positive finite number (model {card.name}'s default "
                         f"is {card.threshold:.4g}).")
    if not math.isfinite(min_volume_ml) or min_volume_ml < 0:
        raise ModelError(f"minimum volume {min_volume_ml:g} ml: must be a finite number of ml, 0 or more.")
    if contrast is not None and contrast not in CONTRASTS:
        raise ModelError(f"contrast '{contrast}': must be one of {', '.join(CONTRASTS)}.")
    if polarity is not None and polarity not in POLARITIES:
        raise ModelError(f"polarity '{polarity}': must be one of {', '.join(POLARITIES)}.")
    return _check_t_int(card, t_int), threshold


def _check_t_int(card, t_int):
    if not card.is_diffusion:
        if t_int is not None:
            raise ModelError(f"model {card.name}: t_int applies only to diffusion models ({card.family} is not one).")
        return None
    rng = card.t_int
    t_int = rng["default"] if t_int is None else int(t_int)
    if not rng["min"] <= t_int <= rng["max"]:
        raise ModelError(f"model {card.name}: t_int {t_int} is outside the range {rng['min']}-{rng['max']}.")
    return t_int


# ---- files ---------------------------------------------------------------------------------

def output_paths(out_dir: Path, name: str) -> dict[str, Path]:
    """Where the outputs for input stem ``name`` go."""
    out_dir = Path(out_dir)
    return {"reconstruction": out_dir / f"{name}_reconstruction.nii.gz", "anomaly": out_dir / f"{name}_anomaly.nii.gz",
            "mask": out_dir / f"{name}_mask.nii.gz", "findings": out_dir / f"{name}_findings.csv"}


def save_result(result: Result, out_dir: Path, name: str | None = None) -> dict[str, Path]:
    """Write the four outputs on the input's grid (same shape and affine) as :func:`output_paths` names
    them; the CSV last. Raises :class:`OutputError` (one sentence) when they cannot be written
    (permissions, full disk)."""
    paths = output_paths(out_dir, name or result.volume.name)
    _save_outputs(result, paths)
    return paths


def _save_outputs(result: Result, paths: dict[str, Path]) -> None:
    try:
        write_volume(paths["reconstruction"], result.reconstruction, result.volume)
        write_volume(paths["anomaly"], result.anomaly_map, result.volume)
        write_volume(paths["mask"], result.mask, result.volume, dtype=np.int32)
        write_csv(paths["findings"], FINDING_COLUMNS, [_finding_row(f) for f in result.findings])
    except OSError as exc:
        raise OutputError(f"{paths['findings'].parent}: cannot write the outputs of {result.volume.name} "
                          f"({reason(exc)}).") from None


def check_spares_inputs(paths: dict[str, Path], inputs: list[Path | None]) -> None:
    """Refuse outputs that would land on an input file (a brain mask named like an output, e.g. FSL's ``X_mask``)."""
    for source in (Path(i) for i in inputs if i is not None):
        for kind, out in paths.items():
            if out.resolve() == source.resolve() or (out.exists() and os.path.samefile(out, source)):
                raise InputError(f"{source}: is an input and would be overwritten by the {kind} output; "
                                 "choose another output folder.")


def _finding_row(f: Finding) -> dict:
    x, y, z = f.centroid_mm
    return {"label": f.label, "volume_ml": f"{f.volume_ml:.4f}", "peak_score": f"{f.peak_score:.5g}",
            "mean_score": f"{f.mean_score:.5g}", "centroid_x_mm": f"{x:.2f}", "centroid_y_mm": f"{y:.2f}",
            "centroid_z_mm": f"{z:.2f}", "n_voxels": f.n_voxels}


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    """Write a CSV atomically (tab-separated when ``path`` ends in ``.tsv``)."""
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", delimiter=_delimiter(path))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(buffer.getvalue(), encoding="utf-8"))


def _delimiter(path: Path) -> str:
    return "\t" if Path(path).suffix == ".tsv" else ","


# ---- batch ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchItem:
    """What happened to one file of a batch (a row of ``summary.csv``)."""

    file: Path
    status: str  # "ok", "skipped" (complete outputs already there) or "error"
    message: str = ""
    n_findings: int | None = None
    lesion_volume_ml: float | None = None
    max_score: float | None = None
    seconds: float | None = None
    warnings: tuple[str, ...] = ()
    outputs: dict[str, Path] = field(default_factory=dict)  # kind -> path, as in :func:`output_paths`
    polarity: str = ""  # the side of the residual counted (an "auto" polarity settled); "" when not run


def find_inputs(input_dir: Path, pattern: str = "*.nii*") -> list[Path]:
    """Image files under ``input_dir`` matching ``pattern`` (``**/`` patterns recurse), sorted."""
    return sorted(p for p in Path(input_dir).glob(pattern) if is_image_path(p))


def check_out_dir(input_dir: Path, out_dir: Path, allow_derivatives: bool = False) -> None:
    """Refuse an output folder that is, or lies inside, the input folder (except, for a BIDS dataset,
    inside its ``derivatives/`` folder, which BIDS inputs never come from)."""
    src, dst = Path(input_dir).resolve(), Path(out_dir).resolve()
    if allow_derivatives and (src / "derivatives") in [dst, *dst.parents] and dst != src / "derivatives":
        return
    if dst == src or src in dst.parents:
        raise InputError(f"{out_dir}: output folder lies inside the input folder {input_dir}; choose another.")


def batch(input_dir: Path, out_dir: Path, model: AnomalyModel, **kwargs) -> list[BatchItem]:
    """Run a folder; see :func:`iter_batch`."""
    return run(iter_batch(input_dir, out_dir, model, **kwargs))


def iter_batch(input_dir: Path, out_dir: Path, model: AnomalyModel, pattern: str = "*.nii*",
               threshold: float | None = None, t_int: int | None = None, bids: str | None = None,
               scheduler: str | None = None, workers: int | None = None, worker_device: str = "auto",
               **detect_options) -> Steps[list[BatchItem]]:
    """Detect in every matching file, write its outputs and ``summary.csv``; yield progress.

    ``bids``: ``input_dir`` is a BIDS dataset; its ``anat`` scans with this suffix (e.g. ``"T1w"``)
    are run (``pattern`` is not used) and the outputs form a BIDS derivatives dataset in ``out_dir``
    (see :mod:`napari_brainuad.bids`), which may be the dataset's own ``derivatives/`` sub-folder;
    the suffix states the scans' ``contrast`` unless it is given (``FLAIR`` -> ``"FLAIR"``).
    ``scheduler``: run on Dask distributed (``"local"`` or a scheduler address; ``workers``
    single-threaded processes for a local cluster; the model is loaded once per worker on
    ``worker_device``; see :mod:`napari_brainuad.cohort`); progress is then reported per file.

    A bad file becomes an ``error`` row and the batch goes on, and so does a file whose outputs
    cannot be written (full disk); when ``summary.csv`` itself cannot be written the batch stops
    with :class:`OutputError`. Files whose four outputs exist are ``skipped`` (resume; each output
    is written atomically and the findings table last, so existing outputs are complete).
    ``summary.csv`` is rewritten atomically after every file. The settings, with the model's
    threshold and a hash of its weights, are kept in ``batch.json``; a rerun into the same folder
    must use the same ones. Options, output names (two inputs must not share one) and the output
    folder (writable, and locked against a second run) are checked before any scan is read.
    """
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    if not input_dir.is_dir():
        raise InputError(f"{input_dir}: not a folder.")
    check_out_dir(input_dir, out_dir, allow_derivatives=bids is not None)
    check_options(model.card, t_int, threshold, detect_options.get("min_volume_ml", 0.0),
                  detect_options.get("contrast"), detect_options.get("polarity"))
    detect_options = {**_detect_defaults(), **detect_options}  # recorded in full, however they were given
    if bids is not None:
        bids_io = _optional("napari_brainuad.bids", "--bids", "bids")
        if detect_options.get("contrast") is None:
            detect_options["contrast"] = bids_io.SUFFIX_CONTRASTS.get(bids)
        files = bids_io.find_scans(input_dir, bids)
        if not files:
            raise InputError(f"{input_dir}: no anat/*_{bids}.nii[.gz] scans in this BIDS dataset.")
        outputs = [bids_io.output_paths(out_dir, path) for path in files]
    else:
        files = find_inputs(input_dir, pattern)
        if not files:
            raise InputError(f"{input_dir}: no files match '{pattern}'.")
        outputs = [output_paths(out_dir, output_name(path, input_dir)) for path in files]
    check_collisions(files, outputs)
    prepare_out_dir(out_dir)
    with output_lock(out_dir):
        check_settings(out_dir, {"model": model.name, **model_fingerprint(model), "threshold": threshold,
                                 "t_int": t_int, "pattern": pattern if bids is None else None, "bids": bids,
                                 **detect_options})
        own = {"summary": out_dir / "summary.csv", "settings": out_dir / SETTINGS_FILE}
        for folder, names in _by_folder([*outputs, own]).items():
            remove_stale_temporaries(folder, names)  # the lock says no run owns them
        if bids is not None:
            bids_io.write_description(out_dir, input_dir, model.name)
        options = {"t_int": t_int, "threshold": threshold, **detect_options}
        jobs = list(zip(files, outputs))
        if scheduler is None:
            return (yield from _run_here(jobs, out_dir, model, options))
        return (yield from _run_on_dask(jobs, out_dir, model, options, scheduler, workers, worker_device))


def iter_process_file(path: Path, paths: dict[str, Path], model: AnomalyModel, t_int: int | None = None,
                      threshold: float | None = None, **detect_options) -> Steps[BatchItem]:
    """One file of a batch: detect, write the outputs at ``paths``; a bad file is an ``error`` item."""
    start = time.perf_counter()
    try:
        volume = read_volume(path)
        result = yield from iter_detect(volume, model, t_int=t_int, threshold=threshold, **detect_options)
        _save_outputs(result, paths)
    except (InputError, ModelError, OutputError) as exc:
        return BatchItem(path, "error", str(exc), outputs=paths)
    return BatchItem(path, "ok", "", len(result.findings), sum(f.volume_ml for f in result.findings),
                     max((f.peak_score for f in result.findings), default=None), time.perf_counter() - start,
                     tuple(result.warnings), paths, result.polarity)


def _run_here(jobs, out_dir, model, options) -> Steps[list[BatchItem]]:
    items: list[BatchItem] = []
    for i, (path, paths) in enumerate(jobs):
        if all(p.exists() for p in paths.values()):
            items.append(_from_existing(path, paths))
        else:
            items.append((yield from scaled(iter_process_file(path, paths, model, **options),
                                            i / len(jobs), (i + 1) / len(jobs))))
        _write_summary(out_dir, items, model, options, len(jobs))
        yield Step(f"{path.name}: {items[-1].status}", (i + 1) / len(jobs))
    return items


def _run_on_dask(jobs, out_dir, model, options, scheduler, workers, worker_device) -> Steps[list[BatchItem]]:
    _optional("distributed", "--scheduler", "cohort")
    from .cohort import dask_client, iter_on_dask, model_reference

    done = {i: _from_existing(path, paths) for i, (path, paths) in enumerate(jobs)
            if all(p.exists() for p in paths.values())}
    todo = [i for i in range(len(jobs)) if i not in done]

    def record(finished: dict[int, BatchItem]) -> None:
        _write_summary(out_dir, [it for _, it in sorted({**done, **finished}.items())], model, options, len(jobs))

    if not todo:
        record({})
        return [done[i] for i in range(len(jobs))]
    with dask_client(scheduler, workers) as client:
        finished = yield from iter_on_dask([jobs[i] for i in todo], client, model_reference(model), worker_device,
                                           options, lambda items: record(dict(zip(todo, items))))
    return [it for _, it in sorted({**done, **dict(zip(todo, finished))}.items())]


def _write_summary(out_dir: Path, items: list[BatchItem], model: AnomalyModel, options: dict, total: int) -> None:
    try:
        write_summary(out_dir / "summary.csv", items, model, options["t_int"], options["threshold"])
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot write summary.csv ({reason(exc)}); the batch stopped after "
                          f"{len(items)} of {total} files.") from None


def _detect_defaults() -> dict:
    """:func:`iter_detect`'s options with their defaults (all but the scan, the model, t_int and threshold)."""
    params = inspect.signature(iter_detect).parameters
    return {k: p.default for k, p in params.items()
            if p.default is not inspect.Parameter.empty and k not in ("t_int", "threshold")}


def _optional(module: str, option: str, extra: str):
    """Import an optional dependency's module, or say in one sentence how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise InputError(f"{option} needs a package that is not installed ({exc.name}); "
                         f"install it with: pip install 'napari-brainuad[{extra}]'.") from None


def _by_folder(outputs: list[dict[str, Path]]) -> dict[Path, list[str]]:
    folders: dict[Path, list[str]] = {}
    for paths in outputs:
        for path in paths.values():
            folders.setdefault(path.parent, []).append(path.name)
    return folders


def check_collisions(files: list[Path], outputs: list[dict[str, Path]]) -> None:
    """Refuse two inputs whose outputs would share a path (``a.nii`` and ``a.nii.gz``; ``s1/t1`` and ``s1_t1``).

    Compared without case, as on case-insensitive file systems.
    """
    seen: dict[str, Path] = {}
    for path, paths in zip(files, outputs):
        for out in paths.values():
            other = seen.setdefault(str(out).casefold(), path)
            if other != path:
                raise InputError(f"{path}: its outputs would be named like those of {other} ({out.name}); "
                                 "rename one or narrow the pattern.")


def model_fingerprint(model: AnomalyModel) -> dict:
    """The model's calibrated threshold and SHA-256 of its weights and normative files: a model folder
    with the same name but other contents must not resume another's batch."""
    card = model.card
    files = {"weights_sha256": card.weights_path, "normative_sha256": card.normative_path}
    return {"card_threshold": card.threshold,
            **{key: None if path is None else _sha256(path) for key, path in files.items()}}


def _sha256(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


def check_settings(out_dir: Path, settings: dict) -> None:
    """Record a batch's settings in ``out_dir/batch.json``, or refuse ones that differ from those recorded.

    Resuming skips files whose outputs exist, so one folder must never mix models or options.
    """
    path = Path(out_dir) / SETTINGS_FILE
    settings = json.loads(json.dumps(settings, default=str))
    if path.exists():
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: unreadable batch settings ({exc}); use a new output folder.") from None
        changed = sorted(k for k in settings.keys() | recorded.keys() if settings.get(k) != recorded.get(k))
        if changed:
            raise InputError(f"{out_dir}: holds outputs made with other settings ({', '.join(changed)} differ); "
                             "use a new output folder.")
    else:
        text = json.dumps(settings, indent=2)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def output_name(path: Path, input_dir: Path) -> str:
    """The stem a batch gives the outputs of ``path`` (sub-folders joined with ``_``)."""
    rel = path.relative_to(input_dir)
    return "_".join([*rel.parent.parts, stem(rel)])


def _from_existing(path: Path, paths: dict[str, Path]) -> BatchItem:
    with open(paths["findings"], newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter=_delimiter(paths["findings"])))
    return BatchItem(path, "skipped", "outputs already complete", len(rows),
                     sum(float(r["volume_ml"]) for r in rows), max((float(r["peak_score"]) for r in rows), default=None),
                     outputs=paths)


def write_summary(path: Path, items: list[BatchItem], model: AnomalyModel, t_int, threshold) -> None:
    threshold = model.card.threshold if threshold is None else threshold
    rows = [{"file": str(it.file), "status": it.status, "message": it.message, "model": model.name,
             "t_int": "" if t_int is None else t_int, "threshold": threshold, "polarity": it.polarity,
             "n_findings": "" if it.n_findings is None else it.n_findings,
             "lesion_volume_ml": "" if it.lesion_volume_ml is None else f"{it.lesion_volume_ml:.4f}",
             "max_score": "" if it.max_score is None else f"{it.max_score:.5g}",
             "seconds": "" if it.seconds is None else f"{it.seconds:.2f}", "warnings": " | ".join(it.warnings)}
            for it in items]
    write_csv(path, SUMMARY_COLUMNS, rows)


__all__ = ["Result", "detect", "iter_detect", "batch", "iter_batch", "save_result", "load_model", "BatchItem"]
