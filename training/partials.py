"""Per-model results of an evaluation, saved as each model finishes, so ``evaluate --resume`` goes on after a kill.

A saved result is reused only while its fingerprint matches: the bytes of the model folder's files
(weights, normative statistics) and its card without the ``metrics`` that evaluation writes into it,
the evaluation's data options and machine, the site caches' split tables, and the Python source of the
package and of the evaluation modules of ``training`` (results of other code are recomputed, never
mixed in; a new report layout or training code is not). Stored in
``<out>/partial/<model>.json`` (rows, figure metadata) beside ``<model>.npz`` (figure slices, PR
curves, rescan masks); no pickle.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import napari_brainuad
from napari_brainuad.io import atomic_write

FOLDER = "partial"


@dataclass
class ModelResult:
    """One model's evaluation: summary and per-volume rows, figure material by dataset, full-detect seconds."""

    summaries: list[dict]
    volumes: list[dict]
    plots: dict[str, dict]
    """dataset -> ``panel`` (reconstruction slice, map slice, threshold, colour limit), ``curve`` (precision,
    recall, AP) and ``flagged`` (case -> bool grid flagged at the threshold; rescan datasets only)."""
    family: str
    evaluated: str
    """Date (YYYY-MM-DD) the model was evaluated."""
    detect_seconds: float | None = None
    """One full ``detect`` of the MSLUB T1 scan (None for models evaluated without one)."""


EVALUATION_MODULES = ("evaluate.py", "measures.py", "cases.py", "data.py", "synth.py", "figures.py", "partials.py")
"""The modules of ``training`` that evaluation runs (datasets, measures, figure slices). The others train
(their effect reaches the results through the weights) or only write results down (``report``,
``seed_tables``, ``markdown``), so changing them does not invalidate saved results."""


def _source_files() -> list[Path]:
    package = Path(napari_brainuad.__file__).parent
    return sorted(package.rglob("*.py")) + [Path(__file__).parent / name for name in EVALUATION_MODULES]


def fingerprint(card, options: dict, caches: list[Path]) -> str:
    """A digest of what a model's results depend on (see the module docstring); ``options``: JSON-able."""
    digest = hashlib.sha256()
    files = [] if card.folder is None else \
        sorted(p for p in Path(card.folder).rglob("*") if p.is_file() and p.name != "card.json")
    for path in [*files, *(c / "splits.csv" for c in caches), *_source_files()]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes() if path.exists() else b"missing")
    card_data = {k: v for k, v in card.data.items() if k != "metrics"}
    digest.update(json.dumps([card_data, options], sort_keys=True, default=str).encode())
    return digest.hexdigest()


def save(folder: Path, name: str, key: str, result: ModelResult) -> None:
    """Write ``result`` under ``folder`` (arrays first, then the JSON that makes it count)."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays, plots = {}, {}
    for i, (dataset, plot) in enumerate(result.plots.items()):
        recon, score, threshold, vmax = plot["panel"]
        precision, recall, ap = plot["curve"]
        arrays.update({f"{i}_recon": recon, f"{i}_score": score, f"{i}_precision": precision, f"{i}_recall": recall})
        cases = list(plot["flagged"])
        arrays.update({f"{i}_flagged_{j}": plot["flagged"][c] for j, c in enumerate(cases)})
        plots[dataset] = {"index": i, "threshold": threshold, "vmax": vmax, "AP": ap, "flagged": cases}
    atomic_write(folder / f"{name}.npz", lambda tmp: np.savez_compressed(tmp, **arrays))
    record = {"summaries": result.summaries, "volumes": result.volumes, "plots": plots,
              "detect_seconds": result.detect_seconds, "family": result.family, "evaluated": result.evaluated,
              "fingerprint": key}
    text = json.dumps(record, indent=1, default=lambda o: o.item())
    atomic_write(folder / f"{name}.json", lambda tmp: Path(tmp).write_text(text))


def load(folder: Path, name: str, key: str) -> ModelResult | None:
    """The result saved for ``name`` if its fingerprint is ``key``, else None."""
    meta, npz = folder / f"{name}.json", folder / f"{name}.npz"
    if not (meta.exists() and npz.exists()):
        return None
    try:
        record = json.loads(meta.read_text())
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or record.pop("fingerprint", None) != key:
        return None
    with np.load(npz, allow_pickle=False) as arrays:
        plots = {}
        for dataset, p in record["plots"].items():
            i = p["index"]
            plots[dataset] = {"panel": (arrays[f"{i}_recon"], arrays[f"{i}_score"], p["threshold"], p["vmax"]),
                              "curve": (arrays[f"{i}_precision"], arrays[f"{i}_recall"], p["AP"]),
                              "flagged": {c: arrays[f"{i}_flagged_{j}"] for j, c in enumerate(p["flagged"])}}
    record["plots"] = plots
    return ModelResult(**record)
