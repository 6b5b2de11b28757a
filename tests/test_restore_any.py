"""``restore-any``: the restoration family trained on SynthSeg-style random contrasts (``synth_prob`` in its
recipe) from the command line into a model folder that accepts any contrast and detects on a FLAIR-like
scan with the brighter-only polarity; slice context: neighbouring slices rendered in the same contrast, a lesion
continued through them, and a model that sees them.
Self-contained: tiny synthetic volumes and labels, a tiny network."""
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import export_run, labelled_cache
from napari_brainuad.cli import main as cli
from napari_brainuad.models import load_model
from napari_brainuad.template import mni152
from training.__main__ import main as training
from training.data import axial_slab
from training.synth import SynthData, lesion_through_slices

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


def test_context_slabs_hold_the_neighbouring_slices_each_masked_by_its_own_brain():
    z = np.arange(40, dtype=np.float32)
    image = np.broadcast_to(z / 40, (32, 32, 40)).copy()  # every axial slice has its own value
    mask = np.zeros(image.shape, bool)
    mask[8:24, 8:24, 5:35] = True
    mask[8:12, 8:12, 20] = False  # a notch in one slice only
    data = SynthData([{"image": image * mask, "mask": mask}], synth_prob=0.0)
    for seed in range(10):
        sick, target, centre, lesion, *_ = data.sample(seed, augment=False, lesion_prob=0.0, context=1)
        k = int(round(float(target.max()) * 40))  # the centre slice drawn
        assert sick.shape == (3, 32, 32) and torch.equal(sick[1:2], target) and lesion.sum() == 0
        for i, zz in enumerate((k - 1, k, k + 1)):
            expected = (image * mask)[..., zz] if 0 <= zz < 40 else np.zeros((32, 32))
            np.testing.assert_allclose(sick[i].numpy(), expected, atol=1e-6)
    assert np.array_equal(axial_slab(image, 0, 1)[..., 0], np.zeros((32, 32)))  # beyond the grid: zeros


def test_synthetic_contrast_slabs_carry_one_contrast_and_a_lesion(cache):
    data = SynthData.from_cache(cache, "train", synth_prob=1.0)
    batch = data.batch(8, torch.Generator().manual_seed(1), augment=True, robust=True, context=1, pseudo_prob=1.0)
    assert batch.input.shape == (8, 3, 96, 112) and batch.target.shape == (8, 1, 96, 112) and batch.lesion.sum() > 0
    r = [np.corrcoef(batch.input[i, 0].flatten(), batch.input[i, 1].flatten())[0, 1] for i in range(8)]
    assert min(r) > 0.5  # neighbours rendered in the centre slice's contrast


def test_a_lesion_continues_through_neighbouring_slices_as_an_ellipsoid():
    yy, xx = np.mgrid[:60, :60]
    P = (np.hypot(xx - 30, yy - 30) < 10).astype(np.float32)
    np.testing.assert_array_equal(lesion_through_slices(P, 0, rng=None), P[None])
    areas = []
    for seed in range(30):
        slab = lesion_through_slices(P, 2, seed)
        assert slab.shape == (5, 60, 60) and np.array_equal(slab[2], P)
        areas.append((slab > 0.5).sum(axis=(1, 2)))
    areas = np.array(areas)
    assert (areas[:, [0, 4]] < areas[:, 2:3]).mean() > 0.5  # mostly smaller two slices away
    assert (areas[:, [0, 4]] == 0).any() and (areas[:, [1, 3]] > areas[:, 2:3]).any()  # some end, some widen


def test_restore_any_with_slice_context_trains_exports_and_detects(cache, tmp_path):
    run, folder = tmp_path / "run", tmp_path / "model"
    assert training(["fit", str(tiny_recipe(tmp_path, context=1)), "--data", str(cache), "--out", str(run),
                     "--device", "cpu"]) == 0
    export_run(run, folder, cache)
    model = load_model(folder, "cpu")
    assert model.card.architecture["context"] == 1 and model.context == 1
    tpl = mni152()
    recon = model.reconstruct(tpl.image * tpl.mask, tpl.mask, seed=0)
    assert recon.shape == tpl.shape and np.isfinite(recon).all()


def test_a_recipes_lesion_fraction_sets_the_size_of_the_synthetic_lesions():
    yy, xx = np.mgrid[:64, :64]
    mask = np.repeat((np.hypot(xx - 32, yy - 32) < 28)[..., None], 10, axis=2)
    volume = {"image": np.where(mask, 0.6, 0.0).astype(np.float32), "mask": mask}
    areas = {}
    for fraction in (None, (0.15, 0.2)):
        data = SynthData([volume], synth_prob=0.0, lesion_fraction=fraction)
        lesions = [data.sample(seed, augment=False, lesion_prob=1.0)[3] for seed in range(12)]
        areas[fraction] = np.median([float(lesion.sum()) / mask[..., 0].sum() for lesion in lesions])
    assert areas[None] < 0.05 < 0.1 < areas[(0.15, 0.2)]
