"""BIDS in and out, with pybids: the anatomical scans of a BIDS dataset, and outputs as a BIDS
derivatives dataset (``derivatives/brainuad`` by default) with entity-preserving names.

For ``sub-01/ses-1/anat/sub-01_ses-1_run-01_T1w.nii.gz`` the outputs are, under the derivatives root,
``sub-01/ses-1/anat/sub-01_ses-1_run-01_desc-{reconstruction,anomaly}_T1w.nii.gz``,
``..._desc-anomaly_mask.nii.gz`` and ``..._desc-anomaly_findings.tsv``.
"""
from __future__ import annotations

import json
from pathlib import Path

from bids import BIDSLayout
from bids.layout import parse_file_entities
from bids.layout.writing import build_path

from . import __version__
from .io import InputError, atomic_write

DERIVATIVE_NAME = "brainuad"
BIDS_VERSION = "1.10.0"
_ENTITIES = ("[_ses-{session}][_task-{task}][_acq-{acquisition}][_ce-{ceagent}][_rec-{reconstruction}]"
             "[_run-{run}][_echo-{echo}][_part-{part}][_chunk-{chunk}]")
PATH_PATTERN = "sub-{subject}[/ses-{session}]/{datatype}/sub-{subject}" + _ENTITIES + "_desc-{desc}_{suffix}{extension}"
OUTPUTS = {  # kind: (desc, suffix or None for the scan's own, extension)
    "reconstruction": ("reconstruction", None, ".nii.gz"),
    "anomaly": ("anomaly", None, ".nii.gz"),
    "mask": ("anomaly", "mask", ".nii.gz"),
    "findings": ("anomaly", "findings", ".tsv"),
}
SUFFIX_CONTRASTS = {"T1w": "T1", "T2w": "T2", "FLAIR": "FLAIR", "PDw": "PD", "dwi": "DWI"}
"""The contrast a BIDS anat suffix states (a batch over ``--bids FLAIR`` runs with ``contrast="FLAIR"``)."""
IGNORED = ["summary.csv", "batch.json", ".brainuad.lock"]
"""Files of a batch that are not BIDS; listed in the derivatives' ``.bidsignore``."""


def is_bids_dataset(root: Path) -> bool:
    """Whether ``root`` looks like a BIDS dataset (it has ``dataset_description.json``)."""
    return (Path(root) / "dataset_description.json").is_file()


def default_out_dir(root: Path) -> Path:
    """``ROOT/derivatives/brainuad``, where BIDS puts a pipeline's outputs."""
    return Path(root) / "derivatives" / DERIVATIVE_NAME


def find_scans(root: Path, suffix: str = "T1w") -> list[Path]:
    """The ``anat`` NIfTI scans with ``suffix`` (e.g. T1w, FLAIR, T2w) of the raw BIDS dataset ``root``, sorted.

    Derivatives are not searched; a folder without ``dataset_description.json`` is refused.
    """
    root = Path(root)
    if not is_bids_dataset(root):
        raise InputError(f"{root}: not a BIDS dataset (no dataset_description.json).")
    layout = BIDSLayout(root, validate=False)
    files = layout.get(datatype="anat", suffix=suffix, extension=[".nii", ".nii.gz"], return_type="filename")
    return sorted(Path(f) for f in files)


def output_paths(out_dir: Path, scan: Path) -> dict[str, Path]:
    """Where the four outputs of ``scan`` go in the derivatives dataset ``out_dir``, by kind."""
    entities = parse_file_entities(str(scan))
    if "subject" not in entities or "suffix" not in entities:
        raise InputError(f"{scan}: not a BIDS file name (sub-<label>_..._<suffix>.nii[.gz]).")
    entities.setdefault("datatype", "anat")
    paths = {}
    for kind, (desc, suffix, extension) in OUTPUTS.items():
        fields = {**entities, "desc": desc, "suffix": suffix or entities["suffix"], "extension": extension}
        paths[kind] = Path(out_dir) / build_path(fields, [PATH_PATTERN], strict=False)
    return paths


def write_description(out_dir: Path, source: Path, model_name: str) -> None:
    """Write the derivatives' ``dataset_description.json`` and ``.bidsignore`` unless already there."""
    out_dir = Path(out_dir)
    description = {
        "Name": "napari-brainuad anomaly maps",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "napari-brainuad", "Version": __version__,
                         "Description": f"unsupervised anomaly detection with the model {model_name}"}],
        "SourceDatasets": [{"URL": Path(source).resolve().as_uri()}],
    }
    files = {"dataset_description.json": json.dumps(description, indent=2) + "\n",
             ".bidsignore": "\n".join(IGNORED) + "\n"}
    for name, text in files.items():
        if not (out_dir / name).exists():
            atomic_write(out_dir / name, lambda tmp, text=text: Path(tmp).write_text(text, encoding="utf-8"))
