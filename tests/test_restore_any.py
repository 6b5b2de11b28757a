"""``restore-any``: the restoration family trained on SynthSeg-style random contrasts (``synth_prob`` in its
recipe) from the command line into a model folder that accepts any contrast and detects on a FLAIR-like
scan with the brighter-only polarity; a recipe that asks for slice context gets a clear error.
Self-contained: tiny synthetic volumes and labels, a tiny network."""
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import export_run, labelled_cache
from napari_brainuad.cli import main as cli
from napari_brainuad.models import load_model
from napari_brainuad.template import mni152
from training.__main__ import main as training

ROOT = Path(__file__).resolve().parents[1]
TINY = {"channels": [4, 8], "strides": [2], "num_res_units": 0, "inference_batch": 48}


def tiny_recipe(folder: Path, **architecture) -> Path:
    recipe = json.loads((ROOT / "training" / "recipes" / "restore-any.json").read_text())
    recipe["name"] = "tiny-restore-any"
    recipe["architecture"].update(TINY, **architecture)
    recipe["training"].update(steps=3, batch_size=2, checkpoint_minutes=60)
    path = folder / "recipe.json"
    path.write_text(json.dumps(recipe))
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return labelled_cache(tmp_path_factory.mktemp("cache"))


def test_three_steps_on_synthetic_contrasts_export_an_any_contrast_model_that_detects(cache, tmp_path, capsys):
    run, folder = tmp_path / "run", tmp_path / "model"
    assert training(["fit", str(tiny_recipe(tmp_path)), "--data", str(cache), "--out", str(run), "--device", "cpu"]) == 0
    export_run(run, folder, cache)
    card = json.loads((folder / "card.json").read_text())
    assert card["family"] == "restore" and card["modality"] == "any"
    assert card["contrasts"] == ["T1", "T2", "FLAIR", "PD", "DWI"] and card["scoring"]["polarity"] == "auto"
    assert np.isfinite(card["threshold"]) and card["metrics"]["calibration"]["scoring"] == "residual"
    model = load_model(folder, "cpu")
    assert "accepts T1/T2/FLAIR/PD/DWI" in model.card.summary()
    tpl = mni152()
    flair = np.interp(tpl.image, [0, 0.3, 0.6, 1], [0.1, 0.7, 0.5, 0.5]) * tpl.mask * 1000
    scan = tmp_path / "flair.nii.gz"
    nib.save(nib.Nifti1Image(flair.astype(np.float32), tpl.affine), scan)
    capsys.readouterr()
    assert cli(["detect", str(scan), "--model", str(folder), "--contrast", "FLAIR", "--out", str(tmp_path / "out"),
                "--no-register", "--device", "cpu"]) == 0
    assert "accepts T1/T2/FLAIR/PD/DWI" in capsys.readouterr().out
    anomaly = nib.load(tmp_path / "out" / "flair_anomaly.nii.gz")
    assert anomaly.shape == flair.shape and np.isfinite(anomaly.get_fdata()).all()


def test_slice_context_with_synthetic_contrasts_is_a_clear_error(cache, tmp_path):
    with pytest.raises(ValueError, match="architecture.context must be 0, not 1"):
        training(["fit", str(tiny_recipe(tmp_path, context=1)), "--data", str(cache), "--out", str(tmp_path / "run"),
                  "--device", "cpu"])
