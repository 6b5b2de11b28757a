"""The benchmark: seeded synthetic datasets, metrics pooled correctly, one command writes report, CSVs and figures."""
import csv
import shutil
import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from conftest import phantom_scan
from napari_brainuad.metrics import average_precision
from napari_brainuad.models import load_model
from napari_brainuad.models.registry import bundled_folder
from napari_brainuad.template import mni152
from napari_brainuad.scoring import ScoringConfig
from training.__main__ import main as training_main
from training.figures import axial_slice
from training.cases import CONTRAST_LESION_CASES, LESION_CASES, Case, Dataset, cached_cases, fluid_cases, shape_cases
from training.evaluate import evaluate_dataset, rescan_summary
from training.measures import anomaly_energy, flagged_ml, lesion_kept, pooled_kept, rescan_agreement
from training.report import BASELINE, beats_baseline, best_model_verdict


def healthy(n: int = 2, seed: int = 0) -> list[Case]:
    tpl = mni152()
    cases = []
    for i in range(seed, seed + n):
        rng = np.random.default_rng(i)
        image = np.clip(tpl.image * (1 + 0.03 * rng.standard_normal(tpl.shape)), 0, 1).astype(np.float32) * tpl.mask
        cases.append(Case(f"sub{i}", image, tpl.mask))
    return cases


def write_site(cache, rows: list[tuple[str, str, str, Case | None]]) -> None:
    """A site cache: ``splits.csv`` of (subject, file, split) and the .npz of each row that has a case."""
    cache.mkdir(parents=True)
    with open(cache / "splits.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["subject", "file", "split"])
        writer.writeheader()
        for subject, file, split, case in rows:
            writer.writerow({"subject": subject, "file": file, "split": split})
            if case is not None:
                np.savez_compressed(cache / f"{file.split('.')[0]}.npz", image=case.image, mask=case.mask,
                                    **tissue_labels(case))


def tissue_labels(case: Case) -> dict[str, np.ndarray]:
    """Label maps of a phantom brain from its intensity: tissues 1 CSF, 2 GM, 3 WM, and labels as tissues."""
    tissues = np.where(case.mask, np.digitize(case.image, [0.35, 0.65]) + 1, 0).astype(np.uint8)
    return {"labels": tissues.astype(np.int16), "tissues": tissues}


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
    assert [x.kind for x in fluid_cases(scans, p0, 1, 0)] == ["fluid:blobs", "fluid:real"]  # sources cycle over scans



def test_fluid_draws_depend_on_the_position_in_the_dataset_only():
    """Two sites' fluid datasets share sources and lesion contrasts copy by copy (a paired comparison)."""
    scan = healthy()[0]
    p0 = {"real": mni152().mask & (np.indices(mni152().shape)[0] < 40)}
    one_each, two_of_one = fluid_cases([scan, scan], p0, 1, 0), fluid_cases([scan], p0, 2, 0)
    for x, y in zip(one_each, two_of_one):
        np.testing.assert_array_equal(x.image, y.image)

def test_flagged_ml_uses_the_grid_voxel_volume():
    flagged = np.zeros((10, 10, 10), bool)
    flagged[:5, :5, :5] = True  # 125 voxels
    assert flagged_ml(flagged, np.diag([2.0, 2.0, 2.0, 1.0])) == pytest.approx(1.0)
    oblique = np.diag([-1.0, 2.0, 3.0, 1.0])[[1, 0, 2, 3]]  # axes swapped and flipped: |det| = 6 mm3
    assert flagged_ml(flagged, oblique) == pytest.approx(0.75)
    assert flagged_ml(flagged[:1, :1, :1], mni152().affine) == pytest.approx(0.008)


def test_rescan_agreement_and_its_empty_cases():
    a, b = np.zeros((4, 4, 4), bool), np.zeros((4, 4, 4), bool)
    a.flat[:10] = True
    b.flat[6:11] = True  # 5 voxels, 4 of them flagged in a too
    assert rescan_agreement(a, b) == pytest.approx({"rescan Dice": 8 / 15, "flagged 1 in 2": 0.4,
                                                    "flagged 2 in 1": 0.8})
    empty = np.zeros_like(a)
    assert set(rescan_agreement(empty, empty).values()) == {1.0}
    assert set(rescan_agreement(a, empty).values()) == {0.0} == set(rescan_agreement(empty, a).values())
    summary, rows = rescan_summary("m", [("1", "2"), ("3", "4")], {"1": a, "2": b, "3": empty, "4": empty})
    assert [r["case"] for r in rows] == ["1 & 2", "3 & 4"] and summary["pairs both empty"] == 1
    assert summary["rescan Dice"] == pytest.approx((8 / 15 + 1) / 2) and summary["volumes"] == 2


def test_real_cases_against_the_baseline():
    aps = {BASELINE: (0.2, 0.5), "m1": (0.9, 0.4), "m2": (0.3, 0.6)}
    real = {c: {m: {"AP": ap[i]} for m, ap in aps.items()} for i, c in enumerate(("A", "B"))}
    assert [beats_baseline(real, c, "m1") for c in "AB"] == ["yes", "no"]
    assert beats_baseline(real, "A", BASELINE) == "-"
    assert "**m1**" in best_model_verdict(real, list(aps)) and "1 of 2 real cases (not B)" in \
        best_model_verdict(real, list(aps))
    assert "every real case" in best_model_verdict(real, [BASELINE, "m2"])
    assert "Evaluate" in best_model_verdict(real, ["m1", "m2"])


def test_missing_site_cache_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="oasis: no site cache.*training prepare"):
        cached_cases(tmp_path / "oasis")
    write_site(tmp_path / "ixi", [("s", "s_T1.nii.gz", "test", None)])
    with pytest.raises(FileNotFoundError, match=r"'test' scans not cached \(s_T1.npz\)"):
        cached_cases(tmp_path / "ixi")


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
    case = cases[0]
    config = model.scoring_for(case.image, case.mask, ScoringConfig.from_card(model.card.scoring), case.contrast)
    score = model.anomaly_map(case.image, model.reconstruct(case.image, case.mask), case.mask, config)
    recon_plane, score_plane, threshold, vmax = plot["panel"]  # the figure's slice of the first case
    assert threshold == model.card.threshold and vmax >= threshold
    assert np.array_equal(score_plane, score[..., axial_slice(case)]) and recon_plane.shape == score_plane.shape
    flagged = score[cases[0].mask] >= threshold
    truth = cases[0].lesion[cases[0].mask]
    assert rows[0]["FPR@thr"] == pytest.approx((flagged & ~truth).sum() / (~truth).sum())
    assert rows[0]["AP"] == pytest.approx(average_precision(score[cases[0].mask], truth))
    healthy_summary, _, healthy_plot = evaluate_dataset(model, Dataset("healthy", "", healthy()))
    assert "AP" not in healthy_summary and 0 < healthy_summary["SSIM"] <= 1
    assert healthy_plot["curve"][0].size == 0


def test_lesion_kept_is_zero_when_removed_and_one_when_copied():
    rng = np.random.default_rng(0)
    healthy = rng.random((8, 8, 8)).astype(np.float32)
    lesion = np.zeros(healthy.shape, bool)
    lesion[2:5, 2:5, 2:5] = True
    image = np.where(lesion, healthy - 0.3 * rng.random(healthy.shape), healthy).astype(np.float32)
    assert lesion_kept(healthy, image, healthy, lesion) == pytest.approx(0.0)
    assert lesion_kept(image, image, healthy, lesion) == pytest.approx(1.0)
    half = healthy + 0.5 * (image - healthy)
    assert lesion_kept(half, image, healthy, lesion) == pytest.approx(0.5)
    blur = healthy + np.where(lesion, 0.05 * rng.standard_normal(healthy.shape), 0)  # errors unrelated to it
    assert abs(lesion_kept(blur, image, healthy, lesion)) < 0.3


def test_pooled_kept_is_the_coefficient_over_all_voxels_at_once():
    """A faint small anomaly with a wild coefficient barely moves the pooled one; the mean it would wreck."""
    rng = np.random.default_rng(1)
    healthy = rng.random((8, 8, 8))
    big, faint = np.zeros(healthy.shape, bool), np.zeros(healthy.shape, bool)
    big[1:5, 1:5, 1:5], faint[6, 6, 6:8] = True, True
    image = healthy - 0.4 * big - 0.01 * faint
    recon = healthy + 0.2 * (image - healthy) * big - 0.03 * faint  # keeps 20 % of the big one, "300 %" of the faint
    rows = [{"lesion kept": lesion_kept(recon, image, healthy, m), "anomaly energy": anomaly_energy(image, healthy, m)}
            for m in (big, faint)]
    assert rows[1]["lesion kept"] == pytest.approx(3.0) and np.mean([r["lesion kept"] for r in rows]) > 1
    both = big | faint
    assert pooled_kept(rows) == pytest.approx(lesion_kept(recon, image, healthy, both))
    assert pooled_kept(rows) == pytest.approx(0.2, abs=0.01)
    assert np.isnan(pooled_kept([])) and np.isnan(pooled_kept([{"lesion kept": float("nan"), "anomaly energy": 1.0}]))


def fake_layout(tmp_path):
    """Data (OASIS participants, real lesion phantoms) and a two-site cache: 2 IXI and 3 OASIS test scans.

    OASIS 1003 and 1023 are a rescan pair (the second with a dark spot); 1004's partner is not in ``test``.
    """
    data, cache = tmp_path / "data", tmp_path / "cache"
    write_site(cache / "ixi", [(c.name, f"{c.name}_T1.nii.gz", "test", c) for c in healthy()]
               + [("subX", "subX_T1.nii.gz", "train", None)])
    oasis = healthy(3, seed=10)
    oasis[1].image = oasis[0].image.copy()
    oasis[1].image[40:46, 50:56, 50:56] *= 0.1
    ids = ["1003", "1023", "1004", "1024"]
    write_site(cache / "oasis", [(i, f"{i}_T1_brain.nii.gz", split, c)
                                 for i, split, c in zip(ids, ["test", "test", "test", "train"], [*oasis, None])])
    (data / "oasis-malf").mkdir(parents=True)
    (data / "oasis-malf" / "participants.csv").write_text(
        "id,oasis_subject,sex,age,scan,split\n1003,OAS1_0101,M,29,first of a rescan pair,test\n"
        "1023,OAS1_0101,M,29,second of a rescan pair,test\n1004,OAS1_0111,M,23,first of a rescan pair,test\n"
        "1024,OAS1_0111,M,23,second of a rescan pair,train\n")
    for image, truth, brain, _ in [*LESION_CASES.values(), *CONTRAST_LESION_CASES.values()]:
        scan = phantom_scan(step=2)
        lesion = nib.Nifti1Image((scan.get_fdata() == 50).astype(np.uint8), scan.affine)
        brain_mask = nib.Nifti1Image((scan.get_fdata() > 0).astype(np.uint8), scan.affine)
        for path, img in ((image, scan), (truth, lesion), (brain, brain_mask)):
            if path:
                (data / path).parent.mkdir(parents=True, exist_ok=True)
                nib.save(img, data / path)
    return data, cache


DATASETS = ["IXI healthy", "OASIS healthy", "OASIS rescans", "IXI + shapes", "IXI + fluid", "OASIS + fluid",
            "MSLUB-26 T1", "BraTS T1c"]
CONTRAST_DATASETS = ["OASIS T1-like + fluid", "OASIS T2-like + fluid", "OASIS FLAIR-like + fluid", "MSLUB-26 FLAIR",
                     "MSLUB-26 T2", "BraTS FLAIR"]


def test_evaluate_command_writes_report_csvs_and_figures(tmp_path):
    """``python -m training evaluate`` end to end on a fake data folder and two-site cache of phantoms."""
    data, cache = fake_layout(tmp_path)
    out = tmp_path / "bench"
    baseline = tmp_path / "intensity-t1"  # the bundled baseline at a fixed threshold, whatever its card holds now
    shutil.copytree(bundled_folder() / "intensity-t1", baseline)
    card = json.loads((baseline / "card.json").read_text())
    (baseline / "card.json").write_text(json.dumps({**card, "threshold": 0.3}))
    smoothed = tmp_path / "intensity-smoothed"  # another intensity model (a scoring variant) gets its bright twin
    shutil.copytree(baseline, smoothed)
    (smoothed / "card.json").write_text(json.dumps({**card, "name": "intensity-smoothed", "threshold": 0.3,
                                                    "scoring": {**card["scoring"], "gaussian_sigma": 1.0}}))
    args = ["evaluate", "--models", str(baseline), str(smoothed), "--data", str(data), "--cache", str(cache), "--out", str(out),
            "--per-scan", "2", "--no-card-update", "--threads", "1"]
    assert training_main(args) == 0
    report = (out / "RESULTS.md").read_text()
    for name in DATASETS + CONTRAST_DATASETS + ["Real cases, per case", "Other contrasts",
                                                 "The architectures seed's Table 2 (Malé et al.)",
                                                 "The conditional-diffusion seed's Table 1 (Lawry Aguila et al.)"]:
        assert f"## {name}" in report
    assert report.index("## Targets") < report.index("## IXI healthy") and f"--cache {cache}" in report
    assert f"--no-card-update --out {out}`" in report  # the command that made it, rerunnable as written
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    rows = {r["dataset"]: r for r in table if r["model"] == "intensity-t1"}
    assert list(rows) == DATASETS + CONTRAST_DATASETS  # the baseline is scored on every contrast
    bright = {r["dataset"]: r for r in table if r["model"] == "intensity-bright"}
    assert list(bright) == CONTRAST_DATASETS  # the bright baseline on the other contrasts only
    twin = {r["dataset"]: r for r in table if r["model"] == "intensity-smoothed-bright"}
    assert list(twin) == CONTRAST_DATASETS and twin != bright
    assert float(bright["OASIS FLAIR-like + fluid"]["AP"]) > float(rows["OASIS FLAIR-like + fluid"]["AP"])
    assert float(rows["OASIS T1-like + fluid"]["AP"]) > float(bright["OASIS T1-like + fluid"]["AP"])
    assert float(rows["MSLUB-26 T1"]["AP"]) > 0.3  # the dark phantom lesion
    assert rows["OASIS healthy"]["volumes"] == "3" and rows["OASIS + fluid"]["volumes"] == "3"
    assert rows["OASIS rescans"]["volumes"] == "1" and 0 <= float(rows["OASIS rescans"]["rescan Dice"]) <= 1
    ixi_fluid = rows["IXI + fluid"]  # IXI's first 3 of 4 copies draw the same anomalies as OASIS's 3
    assert ixi_fluid["volumes"] == "4" and ixi_fluid["paired volumes"] == "3"
    lines = report.splitlines()
    header = next(i for i, line in enumerate(lines) if "AP IXI + fluid (paired copies)" in line)
    cells = next(line for line in lines[header:] if line.startswith("| intensity-t1 |")).strip(" |").split(" | ")
    paired, oasis_ap, ratio = (float(c) for c in cells[2:5])
    assert paired == pytest.approx(float(ixi_fluid["AP paired"]), abs=1e-3)
    assert oasis_ap == pytest.approx(float(rows["OASIS + fluid"]["AP"]), abs=1e-3)
    assert ratio == pytest.approx(oasis_ap / paired, rel=0.05)
    with open(out / "results-per-volume.csv", newline="") as f:
        per_volume = [r for r in csv.DictReader(f) if r["model"] == "intensity-t1"]
    assert [r["case"] for r in per_volume if r["dataset"] == "OASIS rescans"] == ["1003 & 1023"]
    kept = [float(r["lesion kept"]) for r in per_volume if r["dataset"] == "IXI + fluid"]
    assert len(kept) == 4 and all(np.isfinite(kept))  # every synthetic case carries its healthy scan
    fluid_rows = [{"lesion kept": float(r["lesion kept"]), "anomaly energy": float(r["anomaly energy"])}
                  for r in per_volume if r["dataset"] == "IXI + fluid"]
    assert float(ixi_fluid["lesion kept"]) == pytest.approx(pooled_kept(fluid_rows), abs=1e-3)
    assert float(ixi_fluid["lesion kept paired"]) == pytest.approx(pooled_kept(fluid_rows[:3]), abs=1e-3)
    assert [r["kind"] for r in per_volume if r["dataset"] == "OASIS + fluid"] == \
        ["fluid:blobs", "fluid:MSLUB-26", "fluid:BraTS-01"]  # copy j draws source j, on either site
    assert "By source of the anomaly" in report and "| AP blobs | kept blobs | AP MSLUB-26 |" in report
    assert not any(r["lesion kept"] for r in per_volume if r["dataset"] in ("MSLUB-26 T1", "IXI healthy"))
    brain = int(mni152().mask.sum())
    for site in ("IXI healthy", "OASIS healthy"):
        scans = [r for r in per_volume if r["dataset"] == site]
        for r in scans:  # ml = flagged voxels x 0.008 ml, flagged % = flagged voxels / brain voxels
            voxels = float(r["flagged ml"]) / 0.008
            assert voxels == pytest.approx(round(voxels), abs=0.1)
            assert 100 * round(voxels) / brain == pytest.approx(float(r["flagged %"]), abs=6e-4)
        ml = [float(r["flagged ml"]) for r in scans]
        assert max(ml) > 0
        assert float(rows[site]["median flagged ml"]) == pytest.approx(np.median(ml), abs=1e-3)
        assert float(rows[site]["max flagged ml"]) == pytest.approx(max(ml), abs=1e-3)
    meets = all(float(rows[s]["median flagged %"]) <= 0.5 and float(rows[s]["median flagged ml"]) <= 5
                for s in ("IXI healthy", "OASIS healthy"))
    target = next(line for line in report.splitlines() if line.startswith("| intensity-t1 |"))
    assert target.endswith(f"| {'yes' if meets else 'no'} |")
    for case in ("MSLUB-26", "BraTS-01", "BraTS-02"):
        assert f"| {case} | intensity-t1 |" in report and report.count(f"| {case} | intensity-t1 |") == 1
    for figure in ("synthetic-examples", "ixi-healthy", "oasis-healthy", "oasis-rescans", "ixi-shapes", "ixi-fluid",
                   "oasis-fluid", "mslub-26-t1", "brats-t1c"):
        with Image.open(out / "figures" / f"{figure}.png") as png:
            assert png.width > 300 and png.height > 200
    first = (out / "results-per-volume.csv").read_text()
    shutil.rmtree(out)
    assert training_main(args) == 0  # same seed, same numbers (the seconds column aside)
    again = (out / "results-per-volume.csv").read_text()
    strip = lambda text: [line.rsplit(",", 1)[0] for line in text.splitlines()]  # noqa: E731
    assert strip(again) == strip(first)
    assert sorted(p.name for p in (out / "partial").iterdir()) == [
        "intensity-smoothed.json", "intensity-smoothed.npz", "intensity-t1.json", "intensity-t1.npz"]


def test_evaluate_resume_reuses_unchanged_models_only(tmp_path, monkeypatch):
    """``--resume`` reuses a model's saved results while weights, card and options match, and gives the same report."""
    import training.evaluate as evaluate

    data, cache = fake_layout(tmp_path)
    out = tmp_path / "bench"
    models = []
    for name, threshold in (("intensity-t1", 0.3), ("intensity-dim", 0.4)):
        folder = tmp_path / name
        shutil.copytree(bundled_folder() / "intensity-t1", folder)
        card = json.loads((folder / "card.json").read_text())
        (folder / "card.json").write_text(json.dumps({**card, "name": name, "threshold": threshold}))
        models.append(folder)
    args = ["evaluate", "--models", *map(str, models), "--data", str(data), "--cache", str(cache), "--out", str(out),
            "--per-scan", "1", "--contrast-per-scan", "0", "--no-card-update", "--threads", "1", "--resume"]
    (out / "partial").mkdir(parents=True)
    (out / "partial" / "intensity-t1.json").write_text("{}")  # a foreign file is not a saved result
    assert training_main(args) == 0
    first = (out / "results.csv").read_text()
    detected = []
    real_detect = evaluate.detect
    monkeypatch.setattr(evaluate, "detect", lambda volume, model: (detected.append(model.card.name),
                                                                   real_detect(volume, model))[1])
    card = json.loads((models[1] / "card.json").read_text())
    (models[1] / "card.json").write_text(json.dumps({**card, "metrics": {"note": "written by evaluate"}}))
    saved = json.loads((out / "partial" / "intensity-t1.json").read_text())
    (out / "partial" / "intensity-t1.json").write_text(json.dumps({**saved, "evaluated": "2026-01-01"}))
    assert training_main(args) == 0  # the figures evaluate writes into a card change nothing
    assert detected == [] and (out / "results.csv").read_text() == first  # both reused, the same table
    assert "reused by `--resume`" in (out / "RESULTS.md").read_text() and "`intensity-t1` (2026-01-01)." in \
        (out / "RESULTS.md").read_text()  # the report says which results are older
    (models[1] / "card.json").write_text(json.dumps({**card, "threshold": 0.2}))
    assert training_main(args) == 0 and detected == ["intensity-dim"]  # a new threshold: evaluated again
    rows = {(r["dataset"], r["model"]): r for r in csv.DictReader(open(out / "results.csv", newline=""))}
    before = {(r["dataset"], r["model"]): r for r in csv.DictReader(first.splitlines())}
    assert rows["IXI healthy", "intensity-t1"] == before["IXI healthy", "intensity-t1"]
    assert float(rows["OASIS healthy", "intensity-dim"]["median flagged ml"]) >= \
        float(before["OASIS healthy", "intensity-dim"]["median flagged ml"])
