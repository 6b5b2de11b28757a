import csv
import re
import warnings

import nibabel as nib
import numpy as np
import pytest

from conftest import LESION_CENTRE_MM, near_lesion, phantom_scan
from napari_brainuad.cli import main
from napari_brainuad.io import InputError, read_volume
from napari_brainuad.models import load_model
from napari_brainuad.outdir import LOCK_FILE
from napari_brainuad.pipeline import batch, detect, output_paths
from napari_brainuad.sample import sample_path


def test_detect_finds_implanted_lesion_on_input_grid(phantom_path):
    volume = read_volume(phantom_path)
    result = detect(volume, load_model("intensity-t1", "cpu"), register=False)
    assert result.anomaly_map.shape == volume.shape == result.mask.shape == result.reconstruction.shape
    hits = near_lesion(result.findings)
    assert len(hits) == 1, "the dark lesion should be found once"
    assert 1.0 < hits[0].volume_ml < 8.0  # the sphere is 4.2 ml; median filtering changes its edge a bit


def test_rethreshold_without_rerun(phantom_path):
    result = detect(read_volume(phantom_path), load_model("intensity-t1", "cpu"), register=False)
    higher = result.with_threshold(result.threshold + 0.1)
    assert (higher.mask > 0).sum() < (result.mask > 0).sum()
    assert higher.anomaly_map is result.anomaly_map
    empty = result.with_threshold(float(result.anomaly_map.max()) + 1)
    assert empty.findings == [] and not empty.mask.any()


def test_polarity_counts_the_chosen_side_of_the_residual(phantom_path):
    volume = read_volume(phantom_path)
    model = load_model("intensity-t1", "cpu")
    dark = detect(volume, model, register=False, polarity="dark")
    bright = detect(volume, model, register=False, polarity="bright")
    auto = detect(volume, model, register=False, polarity="auto")
    assert (dark.polarity, bright.polarity, auto.polarity) == ("dark", "bright", "both")  # the phantom is a T1
    assert len(near_lesion(dark.findings)) == 1 and not near_lesion(bright.findings)  # the lesion is dark
    calibrated_for = "calibrated on healthy T1 scans counting the residual brighter or darker"
    assert any(calibrated_for in w for w in dark.warnings) and not any(calibrated_for in w for w in auto.warnings)
    assert not detect(volume, model, register=False, polarity="dark", threshold=0.2).warnings  # the user's threshold
    np.testing.assert_allclose(auto.anomaly_map, detect(volume, model, register=False).anomaly_map)


def test_scan_contrast_reads_the_tissue_order():
    from napari_brainuad.quality import scan_contrast
    from napari_brainuad.template import mni152

    tpl = mni152()
    t1 = tpl.image / tpl.image[tpl.mask].max()
    assert scan_contrast(t1, tpl.mask, tpl) == "T1"
    assert scan_contrast(np.where(tpl.mask, 1.0 - t1, 0.0), tpl.mask, tpl) == "T2"  # CSF brightest
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an empty brain is measured without dividing by zero
        assert scan_contrast(t1, np.zeros_like(tpl.mask), tpl) == "T1"  # no brain to read: the default


def test_cli_detect_writes_four_files_on_input_grid(phantom_path, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["detect", str(phantom_path), "--model", "intensity-t1", "--out", str(out), "--device", "cpu"])
    assert code == 0
    src = nib.load(phantom_path)
    paths = output_paths(out, "sub-01_T1w")
    for kind in ("reconstruction", "anomaly", "mask"):
        img = nib.load(paths[kind])
        assert img.shape == src.shape
        np.testing.assert_allclose(img.affine, src.affine, atol=1e-5)
    with open(paths["findings"]) as f:
        rows = list(csv.DictReader(f))
    centres = np.array([[float(r[f"centroid_{a}_mm"]) for a in "xyz"] for r in rows])
    assert (np.linalg.norm(centres - LESION_CENTRE_MM, axis=1) < 6.0).sum() == 1
    mask = np.asarray(nib.load(paths["mask"]).dataobj)
    assert set(np.unique(mask)) == set(range(len(rows) + 1))
    assert "counts brighter or darker" in capsys.readouterr().out
    assert main(["detect", str(phantom_path), "--model", "intensity-t1", "--out", str(tmp_path / "bright"),
                 "--device", "cpu", "--polarity", "bright"]) == 0
    assert "counts brighter only" in capsys.readouterr().out


def test_cli_bad_input_is_one_sentence_and_nonzero(tmp_path, capsys):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not an image at all")
    code = main(["detect", str(bad), "--model", "intensity-t1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert str(bad) in err and "Traceback" not in err and err.count("\n") == 0


def test_cli_unknown_model(tmp_path, phantom_path, capsys):
    assert main(["detect", str(phantom_path), "--model", "nope", "--out", str(tmp_path / "o")]) != 0
    assert "no such model" in capsys.readouterr().err


def test_batch_goes_on_after_a_bad_file_and_resumes(tmp_path):
    src = tmp_path / "cohort"
    src.mkdir()
    nib.save(phantom_scan(step=3), src / "a.nii.gz")
    (src / "b.nii.gz").write_bytes(b"\x1f\x8b garbage")
    nib.save(phantom_scan(step=3, lesion=False), src / "c.nii.gz")
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    out = tmp_path / "out"
    model = load_model("intensity-t1", "cpu")
    items = batch(src, out, model, register=False)
    assert [it.status for it in items] == ["ok", "error", "ok"]
    assert "b.nii.gz" in items[1].message
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert [r["polarity"] for r in rows] == ["both", "", "both"]  # what each map counted
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # inputs untouched
    (out / ".a_mask.nii.gz.x1y2z3.nii.gz").write_bytes(b"half a file")  # left by a killed write
    again = batch(src, out, model, register=False)
    assert [it.status for it in again] == ["skipped", "error", "skipped"]
    assert again[0].n_findings == items[0].n_findings
    assert [p.name for p in out.glob(".*")] == [LOCK_FILE]  # the temporary is gone; the (released) lock file stays
    with pytest.raises(InputError, match="other settings .*model"):  # resuming must not mix models
        batch(src, out, load_model("dae-t1", "cpu"), register=False)
    with pytest.raises(InputError, match="other settings .*threshold"):
        batch(src, out, model, register=False, threshold=0.5)


def test_batch_refuses_output_inside_input(tmp_path):
    (tmp_path / "a.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="inside the input folder"):
        batch(tmp_path, tmp_path / "out", load_model("intensity-t1", "cpu"))


@pytest.mark.slow
def test_detect_with_registration(phantom_path):
    volume = read_volume(phantom_path)
    result = detect(volume, load_model("intensity-t1", "cpu"), register=True)
    assert len(near_lesion(result.findings, 8.0)) == 1


def test_cli_models_lists_bundled_models(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("intensity-t1", "ae-t1", "dae-t1"):
        assert name in out


@pytest.mark.slow
def test_demo_on_bundled_sample(tmp_path, capsys):
    """The README's first quick-start command, on the sample that ships in the package."""
    assert main(["demo", "--out", str(tmp_path), "--device", "cpu"]) == 0
    src = nib.load(sample_path())
    mask = nib.load(tmp_path / "sample_T1_mask.nii.gz")
    assert mask.shape == src.shape and np.allclose(mask.affine, src.affine, atol=1e-5)
    out = capsys.readouterr().out
    left, total = (float(v) for v in re.search(r"([\d.]+) of the ([\d.]+) ml flagged on the MNI model grid lie left", out).groups())
    assert 0 < total and left >= 0.5 * total  # the stroke is left: most of what is flagged must be there
