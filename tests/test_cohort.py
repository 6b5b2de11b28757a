"""Batches on Dask distributed and over BIDS datasets: same outputs, summary and guarantees as a plain batch."""
from __future__ import annotations

import csv
import json

import nibabel as nib
import pytest

from conftest import phantom_scan
from napari_brainuad.cli import main
from napari_brainuad.cohort import dask_client, iter_on_dask, model_reference, worker_model
from napari_brainuad.io import InputError
from napari_brainuad.models import load_model
from napari_brainuad.pipeline import batch, output_paths
from napari_brainuad.progress import run
from test_bids import bids_dataset


def summary(out):
    with open(out / "summary.csv") as f:
        return [{k: r[k] for k in ("file", "status", "n_findings", "lesion_volume_ml")} for r in csv.DictReader(f)]


def cohort(folder, n=3):
    folder.mkdir()
    for i in range(n):
        nib.save(phantom_scan(step=3, lesion=i % 2 == 0), folder / f"s{i}.nii.gz")
    (folder / "broken.nii.gz").write_bytes(b"\x1f\x8b not a scan")
    return folder


@pytest.mark.slow
def test_dask_batch_equals_the_plain_batch_and_resumes(tmp_path):
    src, model = cohort(tmp_path / "in"), load_model("intensity-t1", "cpu")
    batch(src, tmp_path / "plain", model, register=False)
    items = batch(src, tmp_path / "dask", model, register=False, scheduler="local", workers=2, worker_device="cpu")
    assert [it.status for it in items] == ["error", "ok", "ok", "ok"]
    assert summary(tmp_path / "dask") == summary(tmp_path / "plain")
    for name in ("s0", "s1", "s2"):
        for kind, path in output_paths(tmp_path / "dask", name).items():
            assert path.read_bytes() == output_paths(tmp_path / "plain", name)[kind].read_bytes()
    again = batch(src, tmp_path / "dask", model, register=False, scheduler="local", workers=1, worker_device="cpu")
    assert [it.status for it in again] == ["error", "skipped", "skipped", "skipped"]


@pytest.mark.slow
def test_each_worker_loads_the_model_once(tmp_path):
    src, model = cohort(tmp_path / "in", n=4), load_model("intensity-t1", "cpu")
    jobs = [(p, output_paths(tmp_path / "out", p.name.split(".")[0])) for p in sorted(src.glob("s*.nii.gz"))]
    with dask_client("local", workers=2) as client:
        items = run(iter_on_dask(jobs, client, model_reference(model), "cpu", {"register": False}, lambda items: None))
        loads = client.run(lambda: worker_model.cache_info().misses)
    assert [it.status for it in items] == ["ok"] * 4
    assert sorted(loads.values()) in ([1, 1], [0, 1])  # one load per worker that ran a scan


def test_unreachable_scheduler_is_one_sentence(tmp_path, capsys):
    src = cohort(tmp_path / "in", n=1)
    code = main(["batch", str(src), "--model", "intensity-t1", "--out", str(tmp_path / "o"), "--no-register",
                 "--scheduler", "tcp://127.0.0.1:9", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach a Dask scheduler" in err and "Traceback" not in err


def test_bids_batch_writes_a_derivatives_dataset_and_resumes(tmp_path):
    root = bids_dataset(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii.gz", "sub-02/ses-1/anat/sub-02_ses-1_run-01_T1w.nii.gz",
                                          "sub-01/anat/sub-01_FLAIR.nii.gz"])
    out = root / "derivatives" / "brainuad"
    code = main(["batch", str(root), "--bids", "--model", "intensity-t1", "--out", str(out), "--no-register",
                 "--device", "cpu"])
    assert code == 0
    made = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert made == ["batch.json", "dataset_description.json",
                    "sub-01/anat/sub-01_desc-anomaly_T1w.nii.gz", "sub-01/anat/sub-01_desc-anomaly_findings.tsv",
                    "sub-01/anat/sub-01_desc-anomaly_mask.nii.gz", "sub-01/anat/sub-01_desc-reconstruction_T1w.nii.gz",
                    "sub-02/ses-1/anat/sub-02_ses-1_run-01_desc-anomaly_T1w.nii.gz",
                    "sub-02/ses-1/anat/sub-02_ses-1_run-01_desc-anomaly_findings.tsv",
                    "sub-02/ses-1/anat/sub-02_ses-1_run-01_desc-anomaly_mask.nii.gz",
                    "sub-02/ses-1/anat/sub-02_ses-1_run-01_desc-reconstruction_T1w.nii.gz", "summary.csv"]
    findings = (out / "sub-01/anat/sub-01_desc-anomaly_findings.tsv").read_text().splitlines()
    assert findings[0].split("\t")[:2] == ["label", "volume_ml"] and len(findings) > 1
    assert json.loads((out / "batch.json").read_text())["contrast"] == "T1"  # stated by the suffix
    items = batch(root, out, load_model("intensity-t1", "cpu"), bids="T1w", register=False)
    assert [it.status for it in items] == ["skipped", "skipped"] and items[0].n_findings == len(findings) - 1
    with pytest.raises(InputError, match="inside the input folder"):  # only derivatives/ may hold outputs
        batch(root, root / "out", load_model("intensity-t1", "cpu"), bids="T1w")
