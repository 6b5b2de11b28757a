"""The ``anatomy`` family (issue 14): SynthSeg-style contrasts from label maps, straight-through Gumbel
one-hot anatomy, a restorer that sees only the anatomy's edges, 3-step training from the command line
into a model folder that detects, the accepted-contrasts card field and its warning, hostile numbers,
labels cached through the scan's registration, and the per-contrast evaluation datasets.
Self-contained: tiny synthetic volumes and labels, tiny models."""
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import export_run, labelled_cache, phantom_scan
from napari_brainuad.cli import main as cli
from napari_brainuad.io import Volume
from napari_brainuad.models import ModelError, load_model, validate_card
from napari_brainuad.models.families import learned_family
from napari_brainuad.models.families.anatomy import AnatomyNet, class_edges, gumbel_one_hot, tissue_probabilities
from napari_brainuad.pipeline import detect
from napari_brainuad.quality import guess_contrast, measures, scan_warnings
from napari_brainuad.template import mni152
from training.__main__ import main as training
from training.cases import contrast_cases
from training.data import cached_labels, load_preprocessed
from training.synth import CONTRASTS, SynthData, add_lesion, contrast_image, degrade

ROOT = Path(__file__).resolve().parents[1]
TINY = {"classes": 3, "channels": [4, 8], "strides": [2], "num_res_units": 0, "restore_channels": [4, 8],
        "refine_channels": 4}


def rings(shape=(40, 40, 4)):
    """A tiny brain: white matter inside, a grey ring, a CSF rim; anatomical labels split each tissue in two."""
    x, y = np.indices(shape[:2]) - (np.array(shape[:2])[:, None, None] - 1) / 2
    r = np.hypot(x, y)[..., None] * np.ones(shape)
    tissues = np.select([r < 8, r < 13, r < 17], [3, 2, 1], 0)
    labels = tissues * 10 + (x[..., None] > 0) * (tissues > 0)
    return labels.astype(np.int16), tissues.astype(np.int16), tissues > 0


def tissue_order(image, tissues):
    means = [image[tissues == t].mean() for t in (1, 2, 3)]
    return tuple(np.argsort(means))


def test_generator_renders_varied_contrasts_from_labels_deterministically():
    labels, tissues, mask = rings()
    images = [contrast_image(labels, tissues, mask, seed) for seed in range(30)]
    assert len({tissue_order(im, tissues) for im in images}) >= 4  # T1-, T2-, FLAIR-like orderings and others
    for im in images:
        assert im.dtype == np.float32 and im.min() >= 0 and im.max() <= 1 and np.all(im[~mask] == 0)
    np.testing.assert_array_equal(images[3], contrast_image(labels, tissues, mask, 3))
    # without bias, texture, jitter and blur every tissue is one intensity; the bias field makes it vary
    flat = dict(full_random_prob=0.0, label_jitter=0.0, texture=0.0, blur_sigma=0.0)
    plain = contrast_image(labels, tissues, mask, 5, bias=0.0, **flat)
    biased = contrast_image(labels, tissues, mask, 5, bias=0.5, **flat)
    assert plain[tissues == 3].std() < 1e-6 and biased[tissues == 3].std() > 1e-3
    noisy = degrade(plain, mask, 7, blur_prob=0.0, lowres_prob=0.0, noise_std=0.1)
    assert np.abs(noisy - plain)[mask].mean() > 1e-3 and np.all(noisy[~mask] == 0)
    np.testing.assert_array_equal(noisy, degrade(plain, mask, 7, blur_prob=0.0, lowres_prob=0.0, noise_std=0.1))
    low = degrade(plain, mask, 1, blur_prob=0.0, lowres_prob=1.0, noise_std=0.0)
    assert low.shape == plain.shape and not np.array_equal(low, plain)
    # the fixed families come out in their orderings: T2-like CSF brightest, FLAIR-like CSF darkest and GM > WM
    t2 = contrast_image(labels, tissues, mask, 0, means=CONTRASTS["T2-like"][0])
    flair = contrast_image(labels, tissues, mask, 0, means=CONTRASTS["FLAIR-like"][0])
    assert tissue_order(t2, tissues)[-1] == 0 and tissue_order(flair, tissues) == (0, 2, 1)


def test_lesions_of_any_intensity():
    _, tissues, mask = rings((48, 48, 1))
    image = np.where(mask, 0.5, 0.0).astype(np.float32)[..., 0]
    intensities = []
    for seed in range(6):
        sick, lesion = add_lesion(image, mask[..., 0], seed)
        if lesion.any():
            intensities.append(sick[lesion].mean())
            assert np.all(sick[~mask[..., 0]] == 0)
    assert max(intensities) - min(intensities) > 0.2  # a random intensity per lesion


def test_gumbel_one_hot_is_discrete_forward_and_differentiable():
    logits = torch.randn(2, 5, 6, 7, requires_grad=True)
    y = gumbel_one_hot(logits, 0.5, torch.Generator().manual_seed(3))
    assert torch.all((y.detach() - y.detach().round()).abs() < 1e-6) and torch.allclose(y.sum(1), torch.ones(2, 6, 7))
    (y * torch.randn_like(y)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    torch.manual_seed(11)  # the same formula and noise as torch's own gumbel_softmax(hard=True)
    reference = F.gumbel_softmax(logits, tau=0.5, hard=True, dim=1)
    torch.testing.assert_close(gumbel_one_hot(logits, 0.5, torch.Generator().manual_seed(11)), reference)
    net = AnatomyNet({**TINY, "slice_shape": [16, 16]}).train()
    x = torch.rand(2, 1, 16, 16)
    out = net(x, torch.ones_like(x), torch.Generator().manual_seed(0))
    assert set(out["anatomy"].unique().tolist()) <= {0.0, 1.0}
    out["render"].sum().backward()
    assert net.encoder.model[0].conv.weight.grad.abs().sum() > 0  # the rendering's gradient reaches the encoder


class Thresholds(torch.nn.Module):
    """A stand-in encoder: class k where the intensity is nearest 0.2, 0.5, 0.8."""

    def forward(self, x):
        return -100.0 * (x - torch.tensor([0.2, 0.5, 0.8]).view(1, 3, 1, 1)) ** 2


def test_the_restorer_sees_only_the_anatomys_edges():
    net = AnatomyNet({**TINY, "slice_shape": [32, 32]}).eval()
    net.encoder = Thresholds()
    seen = []
    net.restorer.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    image = torch.full((1, 1, 32, 32), 0.5)
    image[..., 16:] = 0.8  # grey matter left, white matter right
    mask = torch.ones_like(image)
    lesion = (slice(None), slice(None), slice(10, 18), slice(20, 28))
    sick = image.clone()
    sick[lesion] = 0.75 + 0.1 * torch.rand(1, 1, 8, 8)  # other intensities, same class (white matter)
    with torch.no_grad():
        net(image, mask), net(sick, mask)
    torch.testing.assert_close(seen[1], seen[0], rtol=0, atol=0)  # the decoder input did not change
    assert not torch.equal(sick, image)
    torch.testing.assert_close(seen[0], class_edges(F.one_hot(Thresholds()(image).argmax(1), 3).permute(0, 3, 1, 2).float()))
    assert seen[0][..., 4:28, 4:12].abs().max() == 0  # constant anatomy: no input at all
    dark = image.clone()
    dark[lesion] = 0.2  # a lesion of another class: only its outline reaches the restorer
    with torch.no_grad():
        net(dark, mask)
    changed = (seen[2] != seen[0]).any(1)[0]
    assert changed[11:17, 21:27].sum() == 0 and changed[9:19, 19:29].any() and not changed[:, :8].any()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return labelled_cache(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def anatomy_folder(cache, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("anatomy")
    recipe = json.loads((ROOT / "training" / "recipes" / "anatomy-any.json").read_text())
    recipe["name"] = "tiny-anatomy"
    recipe["architecture"].update(TINY, inference_batch=48)
    recipe["training"].update(steps=3, batch_size=2, checkpoint_minutes=60)
    (tmp / "recipe.json").write_text(json.dumps(recipe))
    run, folder = tmp / "run", tmp / "model"
    assert training(["fit", str(tmp / "recipe.json"), "--data", str(cache), "--out", str(run), "--device", "cpu"]) == 0
    export_run(run, folder, cache)
    return folder


def test_training_batches_mix_synthetic_contrasts_real_slices_and_lesions(cache):
    data = SynthData.from_cache(cache, "train", synth_prob=0.5)
    batch = data.batch(12, torch.Generator().manual_seed(0), augment=True, robust=True, pseudo_prob=0.5)
    assert batch.input.shape == batch.target.shape == batch.mask.shape == (12, 1, 96, 112)
    assert batch.prior.shape == (12, 3, 96, 112) and batch.tissue.dtype == torch.long
    assert batch.lesion.sum() > 0 and set(batch.tissue.unique().tolist()) <= {0, 1, 2, 3}
    again = data.batch(12, torch.Generator().manual_seed(0), augment=True, robust=True, pseudo_prob=0.5)
    torch.testing.assert_close(again.input, batch.input)  # seeded


def test_three_training_steps_export_a_model_that_detects_and_says_which_contrasts(anatomy_folder, tmp_path, capsys):
    stored = json.loads((anatomy_folder / "card.json").read_text())
    assert stored["family"] == "anatomy" and stored["training"]["steps"] == 3 and stored["modality"] == "any"
    assert stored["contrasts"] == ["T1", "T2", "FLAIR", "PD", "DWI"]
    model = load_model(anatomy_folder, "cpu")
    assert "accepts T1/T2/FLAIR/PD/DWI" in model.card.summary()
    scan = tmp_path / "scan.nii.gz"
    nib.save(phantom_scan(step=2), scan)
    capsys.readouterr()
    assert cli(["detect", str(scan), "--model", str(anatomy_folder), "--out", str(tmp_path / "out"), "--no-register",
                "--device", "cpu"]) == 0
    assert "accepts T1/T2/FLAIR/PD/DWI" in capsys.readouterr().out
    anomaly = nib.load(tmp_path / "out" / "scan_anomaly.nii.gz")
    assert anomaly.shape == nib.load(scan).shape and np.isfinite(anomaly.get_fdata()).all()


def flair_like() -> Volume:
    """The model-grid template with its tissues re-rendered FLAIR-like: CSF dark, grey above white matter."""
    tpl = mni152()
    q = np.quantile(tpl.image[tpl.mask], [0.15, 0.35, 0.6, 0.7])
    data = np.interp(tpl.image, [0, *q, 1], [0.1, 0.1, 0.7, 0.7, 0.45, 0.45]) * tpl.mask * 1000
    return Volume(data.astype(np.float32), tpl.affine)


def test_accepted_contrasts_and_the_mismatch_warning(anatomy_folder):
    base = {"name": "c", "family": "intensity", "spatial_dims": 3, "template": "t", "grid_shape": [4, 4, 4],
            "spacing_mm": 2.0, "normalisation": "x", "architecture": {}, "scoring": {}, "threshold": 1.0,
            "training": {}, "metrics": {}}
    assert validate_card({**base, "modality": "T1"}).accepted_contrasts == ["T1"]
    assert validate_card({**base, "modality": "any"}).accepted_contrasts == ["T1", "T2", "FLAIR", "PD", "DWI"]
    assert validate_card({**base, "modality": "any", "contrasts": ["T2", "FLAIR"]}).accepted_contrasts == ["T2", "FLAIR"]
    for bad in (["T7"], [], ["T1", "T1"]):
        with pytest.raises(ModelError, match="contrasts"):
            validate_card({**base, "modality": "T1", "contrasts": bad})
    volume = flair_like()
    t1_only = detect(volume, load_model("intensity-t1", "cpu"), register=False)
    assert any("looks like FLAIR, not the T1 this model accepts" in w for w in t1_only.warnings), t1_only.warnings
    anything = detect(volume, load_model(anatomy_folder, "cpu"), register=False)
    assert not any("looks like" in w for w in anything.warnings), anything.warnings


def test_the_warning_follows_the_accepted_list():
    from napari_brainuad.preprocess import preprocess

    pre = preprocess(flair_like(), register=False)
    assert guess_contrast(measures(pre.image, pre.mask, pre.template)["means"]) == "FLAIR"
    assert any("looks like FLAIR" in w for w in scan_warnings(pre, ["T1", "T2"]))
    assert not any("looks like" in w for w in scan_warnings(pre, ["T2", "FLAIR"]))
    assert not any("looks like" in w for w in scan_warnings(pre, "any"))
    assert any("looks like FLAIR, not the T1 " in w for w in scan_warnings(pre, "T1"))


def anatomy_card(**arch) -> dict:
    return {"name": "tiny-anatomy", "family": "anatomy", "modality": "any", "spatial_dims": 2, "template": "t",
            "grid_shape": [32, 32, 6], "spacing_mm": 2.0, "normalisation": "x",
            "architecture": {"slice_shape": [32, 32], **TINY, **arch}, "scoring": {}, "threshold": 1.0,
            "training": {}, "metrics": {}, "weights": "weights.safetensors"}


def test_anatomy_builds_from_a_card_and_reconstructs_every_brain_slice():
    data = validate_card(anatomy_card(classes=5))
    cls = learned_family("anatomy")
    model = cls(data, "cpu", network=cls.build_network(data.architecture))
    image = np.random.default_rng(0).random((32, 32, 6), dtype=np.float32)
    mask = np.zeros(image.shape, bool)
    mask[4:28, 4:28, 1:5] = True
    recon = model.reconstruct(image * mask, mask, seed=1)
    assert recon.shape == image.shape and np.all(recon[~mask] == 0) and np.all((recon >= 0) & (recon <= 1))
    np.testing.assert_array_equal(recon, model.reconstruct(image * mask, mask, seed=1))


@pytest.mark.parametrize("change, message", [
    ({"classes": 10**6}, "classes"),
    ({"classes": 2}, "classes"),
    ({"refine_channels": 10**5}, "refine_channels"),
    ({"restore_channels": [10**6]}, "restore_channels"),
    ({"edges": "canny"}, "edges"),
    ({"slice_shape": [32, 33]}, "must divide by the product of strides"),
    ({"context": 1}, "context must be 0"),
    ({"channels": [4]}, "anatomy.*invalid"),
])
def test_hostile_architecture_numbers_are_one_model_error(change, message, tmp_path):
    (tmp_path / "card.json").write_text(json.dumps(anatomy_card(**change)))
    with pytest.raises(ModelError, match=message) as error:
        load_model(tmp_path, "cpu")
    assert "\n" not in str(error.value) and str(error.value).endswith(".")


def test_tissue_probabilities_group_classes_by_tissue():
    p = torch.softmax(torch.randn(1, 6, 4, 4), 1)
    t = tissue_probabilities(p)
    torch.testing.assert_close(t[:, 0], p[:, 0] + p[:, 3])
    torch.testing.assert_close(t.sum(1), torch.ones(1, 4, 4))


def test_labels_are_cached_through_the_scans_own_registration(tmp_path):
    scan = phantom_scan(step=2, lesion=False)
    data = scan.get_fdata()
    ijk = np.indices(data.shape).reshape(3, -1).T
    world = (ijk @ scan.affine[:3, :3].T + scan.affine[:3, 3]).reshape(*data.shape, 3)
    label_of = lambda w: 1 + (w[..., 0] > 0) + 2 * (w[..., 2] > 10)  # noqa: E731  regions by world position
    labels = np.where(data > 0, label_of(world), 0).astype(np.int16)
    for name, array in {"scan": data.astype(np.float32), "labels": labels, "tissues": np.minimum(labels, 3)}.items():
        nib.save(nib.Nifti1Image(array, scan.affine), tmp_path / f"{name}.nii.gz")
    cache = tmp_path / "cache"
    cache.mkdir()
    np.savez_compressed(cache / "scan.npz", image=np.zeros(1), mask=np.zeros(1, bool))  # an old cache without labels
    maps = {"labels": tmp_path / "labels.nii.gz", "tissues": tmp_path / "tissues.nii.gz"}
    image, mask = load_preprocessed(tmp_path / "scan.nii.gz", cache, labels=maps, register=False)
    cached = cached_labels(cache / "scan.npz")
    assert set(cached) == {"labels", "tissues"} and cached["labels"].shape == image.shape
    assert set(np.unique(cached["labels"])) <= {0, 1, 2, 3, 4}  # nearest neighbour: no value in between
    assert np.all(cached["labels"][~mask] == 0)
    tpl = mni152()
    grid = np.indices(tpl.shape).reshape(3, -1).T
    expected = label_of((grid @ tpl.affine[:3, :3].T + tpl.affine[:3, 3]).reshape(*tpl.shape, 3))
    inside = mask & (cached["labels"] > 0)
    assert (cached["labels"][inside] == expected[inside]).mean() > 0.95  # at the same world positions
    again, _ = load_preprocessed(tmp_path / "scan.nii.gz", cache, labels=maps, register=False)
    np.testing.assert_array_equal(again, image)  # now read from the cache


def test_contrast_datasets_share_lesions_and_differ_in_contrast(tmp_path):
    import csv

    cache = tmp_path / "oasis"
    cache.mkdir()
    labels, tissues, mask = rings((40, 40, 12))
    with open(cache / "splits.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["subject", "file", "split"])
        writer.writeheader()
        for i in range(2):
            writer.writerow({"subject": f"s{i}", "file": f"s{i}_T1_brain.nii.gz", "split": "test"})
            np.savez_compressed(cache / f"s{i}_T1_brain.npz", image=mask.astype(np.float32), mask=mask,
                                labels=labels, tissues=tissues)
    datasets = contrast_cases(cache, per_scan=1, seed=0)
    assert [d.name for d in datasets] == [f"OASIS {c} + fluid" for c in CONTRASTS]
    for cases in zip(*(d.cases for d in datasets)):
        assert all(np.array_equal(c.lesion, cases[0].lesion) for c in cases) and cases[0].lesion.any()
    t2, flair = datasets[1].cases[0].image, datasets[2].cases[0].image
    assert t2[tissues == 1].mean() > t2[tissues == 3].mean() and flair[tissues == 1].mean() < flair[tissues == 3].mean()
    for d, (image, lesion) in zip(datasets, ((c.image, c.lesion) for c in (d.cases[0] for d in datasets))):
        tissue_means = [image[(tissues == k) & ~lesion].mean() for k in (1, 2, 3)]
        if d.name.startswith("OASIS FLAIR"):  # the lesion stands out after normalisation: brightest on FLAIR
            assert image[lesion].mean() > max(tissue_means)
        if d.name.startswith("OASIS T1"):  # darker than grey and white matter on T1
            assert image[lesion].mean() < min(tissue_means[1:])
    again = contrast_cases(cache, per_scan=1, seed=0)
    np.testing.assert_array_equal(again[2].cases[1].image, datasets[2].cases[1].image)
    np.savez_compressed(cache / "s1_T1_brain.npz", image=mask.astype(np.float32), mask=mask)
    with pytest.raises(FileNotFoundError, match="without their label maps"):
        contrast_cases(cache)
