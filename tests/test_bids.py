"""BIDS datasets in, BIDS derivatives out (pybids)."""
from __future__ import annotations

import json

import nibabel as nib
import pytest

from conftest import phantom_scan
from napari_brainuad.bids import default_out_dir, find_scans, output_paths, write_description
from napari_brainuad.io import InputError


def bids_dataset(root, files):
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.10.0"}))
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        nib.save(phantom_scan(step=4, lesion=False), root / rel)
    return root


def test_finds_anatomical_scans_of_one_suffix_and_not_derivatives(tmp_path):
    root = bids_dataset(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii.gz", "sub-02/ses-1/anat/sub-02_ses-1_run-01_T1w.nii",
                                          "sub-01/anat/sub-01_FLAIR.nii.gz", "sub-01/func/sub-01_task-rest_bold.nii.gz",
                                          "derivatives/brainuad/sub-01/anat/sub-01_desc-anomaly_T1w.nii.gz"])
    assert [p.relative_to(root).as_posix() for p in find_scans(root)] == [
        "sub-01/anat/sub-01_T1w.nii.gz", "sub-02/ses-1/anat/sub-02_ses-1_run-01_T1w.nii"]
    assert [p.name for p in find_scans(root, "FLAIR")] == ["sub-01_FLAIR.nii.gz"]


def test_a_folder_without_dataset_description_is_refused(tmp_path):
    with pytest.raises(InputError, match="not a BIDS dataset"):
        find_scans(tmp_path)


def test_output_names_keep_every_entity(tmp_path):
    out = default_out_dir(tmp_path)
    scan = tmp_path / "sub-02/ses-1/anat/sub-02_ses-1_acq-mprage_run-01_T1w.nii"
    paths = {k: p.relative_to(out).as_posix() for k, p in output_paths(out, scan).items()}
    stem = "sub-02/ses-1/anat/sub-02_ses-1_acq-mprage_run-01"
    assert paths == {"reconstruction": f"{stem}_desc-reconstruction_T1w.nii.gz",
                     "anomaly": f"{stem}_desc-anomaly_T1w.nii.gz", "mask": f"{stem}_desc-anomaly_mask.nii.gz",
                     "findings": f"{stem}_desc-anomaly_findings.tsv"}
    with pytest.raises(InputError, match="not a BIDS file name"):
        output_paths(out, tmp_path / "scan.nii.gz")


def test_dataset_description_marks_a_derivative_and_is_not_overwritten(tmp_path):
    out = tmp_path / "derivatives" / "brainuad"
    write_description(out, tmp_path, "restore-t1")
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "napari-brainuad"
    assert "summary.csv" in (out / ".bidsignore").read_text()
    (out / "dataset_description.json").write_text("{}")
    write_description(out, tmp_path, "restore-t1")
    assert (out / "dataset_description.json").read_text() == "{}"
