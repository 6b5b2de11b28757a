"""The benchmark: seeded synthetic datasets, metrics pooled correctly, one command writes report, CSVs and figures."""
import csv
import shutil

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from conftest import phantom_scan
from napari_brainuad.metrics import average_precision
from napari_brainuad.models import load_model
from napari_brainuad.template import mni152
from training.__main__ import main as training_main
from training.cases import LESION_CASES, Case, Dataset, fluid_cases, shape_cases
from training.evaluate import evaluate_dataset


def healthy(n: int = 2) -> list[Case]:
    tpl = mni152()
    cases = []
    for i in range(n):
        rng = np.random.default_rng(i)
        image = np.clip(tpl.image * (1 + 0.03 * rng.standard_normal(tpl.shape)), 0, 1).astype(np.float32) * tpl.mask
        cases.append(Case(f"sub{i}", image, tpl.mask))
    return cases


def test_synthetic_datasets_are_deterministic_by_seed():
    scans = healthy()
    p0 = {"real": mni152().mask & (np.indices(mni152().shape)[0] < 40)}
    for make in (lambda s: shape_cases(scans, 2, s), lambda s: fluid_cases(scans, p0, 2, s)):
        a, b, c = make(0), make(0), make(1)
        assert len(a) == 4 and [x.name for x in a] == [x.name for x in b]
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x.image, y.image)
            np.testing.assert_array_equal(x.lesion, y.lesion)
        assert all(x.lesion.any() and not (x.lesion & ~x.mask).any() for x in a)
        assert any(not np.array_equal(x.lesion, z.lesion) for x, z in zip(a, c))
    kinds = [x.kind for x in fluid_cases(scans, p0, 2, 0)]
    assert kinds == ["fluid:blobs", "fluid:real"] * 2


def test_pooled_metrics_and_false_positive_rate():
    model = load_model("intensity-t1", "cpu")
    cases = healthy()
    for case in cases:  # a very dark lesion the intensity baseline must find
        case.lesion = np.zeros(case.mask.shape, bool)
        case.lesion[40:50, 50:60, 50:60] = True
        case.lesion &= case.mask
        case.image = np.where(case.lesion, 0.02, case.image).astype(np.float32)
    summary, rows, plot = evaluate_dataset(model, Dataset("dark", "", cases))
    assert summary["volumes"] == 2 and len(rows) == 2
    assert summary["AP"] > 0.5 and summary["AUROC"] > 0.9
    recon, score, threshold = plot["panel"]
    assert score.shape == cases[0].image.shape and threshold == model.card.threshold
    flagged = score[cases[0].mask] >= threshold
    truth = cases[0].lesion[cases[0].mask]
    assert rows[0]["FPR@thr"] == pytest.approx((flagged & ~truth).sum() / (~truth).sum())
    assert rows[0]["AP"] == pytest.approx(average_precision(score[cases[0].mask], truth))
    healthy_summary, _, healthy_plot = evaluate_dataset(model, Dataset("healthy", "", healthy()))
    assert "AP" not in healthy_summary and 0 < healthy_summary["SSIM"] <= 1
    assert healthy_plot["curve"][0].size == 0


def test_evaluate_command_writes_report_csvs_and_figures(tmp_path):
    """``python -m training evaluate`` end to end on a fake data folder of phantoms."""
    data, cache = tmp_path / "data", tmp_path / "cache"
    (data / "ixi-t1-2mm").mkdir(parents=True)
    cache.mkdir()
    with open(data / "ixi-t1-2mm" / "splits.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["subject", "file", "split"])
        writer.writeheader()
        for i, case in enumerate(healthy()):
            writer.writerow({"subject": case.name, "file": f"{case.name}_T1.nii.gz", "split": "test"})
            np.savez_compressed(cache / f"{case.name}_T1.npz", image=case.image, mask=case.mask)
    for image, truth, brain in LESION_CASES.values():
        scan = phantom_scan(step=2)
        lesion = nib.Nifti1Image((scan.get_fdata() == 50).astype(np.uint8), scan.affine)
        brain_mask = nib.Nifti1Image((scan.get_fdata() > 0).astype(np.uint8), scan.affine)
        for path, img in ((image, scan), (truth, lesion), (brain, brain_mask)):
            if path:
                (data / path).parent.mkdir(parents=True, exist_ok=True)
                nib.save(img, data / path)
    out = tmp_path / "bench"
    args = ["evaluate", "--models", "intensity-t1", "--data", str(data), "--cache", str(cache), "--out", str(out),
            "--per-scan", "2", "--no-card-update", "--threads", "1"]
    assert training_main(args) == 0
    report = (out / "RESULTS.md").read_text()
    for name in ("IXI healthy", "IXI + shapes", "IXI + fluid", "MSLUB-26 T1", "BraTS T1c"):
        assert f"## {name}" in report
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["dataset"] for r in rows} == {"IXI healthy", "IXI + shapes", "IXI + fluid", "MSLUB-26 T1", "BraTS T1c"}
    assert float(next(r for r in rows if r["dataset"] == "MSLUB-26 T1")["AP"]) > 0.3  # the dark phantom lesion
    per_volume = (out / "results-per-volume.csv").read_text()
    for figure in ("synthetic-examples", "ixi-healthy", "ixi-shapes", "ixi-fluid", "mslub-26-t1", "brats-t1c"):
        with Image.open(out / "figures" / f"{figure}.png") as png:
            assert png.width > 300 and png.height > 200
    first = {p.name: p.read_bytes() for p in (out / "results.csv", out / "results-per-volume.csv")}
    shutil.rmtree(out)
    assert training_main(args) == 0  # same seed, same numbers (the seconds column aside)
    again = (out / "results-per-volume.csv").read_text()
    strip = lambda text: [line.rsplit(",", 1)[0] for line in text.splitlines()]  # noqa: E731
    assert strip(again) == strip(per_volume) and first["results.csv"].count(b"\n") == 6
