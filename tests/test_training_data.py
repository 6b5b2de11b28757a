"""Training slabs: slice context, scanner-robust augmentation and pseudo-pathology pairs."""
import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import healthy_cache
from napari_brainuad.models.families.restore import RestorationModel
from napari_brainuad.models.card import validate_card
from napari_brainuad.template import mni152
from training.augment import acquisition, appearance
from training.data import SliceData
from training.pseudo import lesion_masks_on_grid, pseudo_pathology


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return healthy_cache(tmp_path_factory.mktemp("cache"), pseudo_per_scan=3)


def test_pseudo_pathology_changes_only_the_brain_and_repeats_with_the_seed():
    tpl = mni152()
    image = tpl.image.astype(np.float32)
    a = pseudo_pathology(image, tpl.mask, np.random.default_rng(3), [])
    b = pseudo_pathology(image, tpl.mask, np.random.default_rng(3), [])
    assert a.lesion.sum() >= 5 and not (a.lesion & ~tpl.mask).any()
    assert np.array_equal(a.image, b.image) and a.kind == b.kind
    assert np.array_equal(a.image[~tpl.mask], image[~tpl.mask])
    assert np.abs(a.image - image)[a.lesion].max() > 0


def test_blob_fraction_sets_the_size_of_blob_anomalies(monkeypatch):
    """``blob_fraction`` (prepare's ``--blob-fraction``) sets how much of the brain random blobs cover."""
    import training.pseudo as pseudo

    monkeypatch.setattr(pseudo, "SOURCES", {"blobs": 1.0})
    tpl = mni152()
    image, brain = tpl.image.astype(np.float32), int(tpl.mask.sum())
    small = [pseudo_pathology(image, tpl.mask, np.random.default_rng(i), [], (0.002, 0.004)) for i in range(3)]
    large = [pseudo_pathology(image, tpl.mask, np.random.default_rng(i), [], (0.08, 0.1)) for i in range(3)]
    assert all(c.kind == "blobs" for c in small + large)
    assert max(c.lesion.sum() for c in small) < 0.02 * brain < min(c.lesion.sum() for c in large)


def test_prepare_keeps_its_pseudo_copies_only_for_the_same_settings(cache):
    """A rerun of ``prepare`` keeps the copies it made (it resumes); other settings into the same cache, such as
    another ``--blob-fraction``, are one error naming the file instead of silently training on the old copies."""
    from training.prepare import write_pseudo

    path = cache / "pseudo" / "sub0.npz"
    before = path.read_bytes()
    assert write_pseudo(cache, "sub0", 3, [], [0, 0]) == path and path.read_bytes() == before
    with pytest.raises(SystemExit, match="sub0.npz: made with other pseudo-pathology settings"):
        write_pseudo(cache, "sub0", 3, [], [0, 0], (0.002, 0.1))
    assert path.read_bytes() == before


def test_real_lesion_masks_land_at_the_same_world_position(tmp_path):
    """A 1 mm MNI mask resampled to the 2 mm model grid stays at its world coordinates."""
    tpl = mni152()
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [90, -126, -72]  # FSL MNI152 1 mm
    data = np.zeros((182, 218, 182), np.uint8)
    centre = np.array([30.0, -20.0, 20.0])  # world mm
    ijk = np.round(np.linalg.inv(affine) @ np.append(centre, 1))[:3].astype(int)
    data[tuple(slice(c - 4, c + 5) for c in ijk)] = 1
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "p01_lesions.nii.gz")
    (mask,) = lesion_masks_on_grid(tmp_path, tpl)
    found = tpl.affine @ np.append(np.argwhere(mask).mean(axis=0), 1)
    assert np.linalg.norm(found[:3] - centre) < 1.5


def test_slab_has_context_channels_and_a_clean_target(cache):
    data = SliceData.from_cache(cache, "train")
    batch = data.batch(6, torch.Generator().manual_seed(0), augment=False, context=2)
    assert batch.input.shape[1] == 5 and batch.target.shape[1] == 1
    torch.testing.assert_close(batch.input[:, 2:3], batch.target)  # centre channel, nothing added
    assert not torch.equal(batch.input[:, 0], batch.input[:, 2])  # neighbours differ
    assert batch.lesion.sum() == 0


def test_pseudo_pairs_carry_lesions_the_target_does_not(cache):
    data = SliceData.from_cache(cache, "train", pseudo=True)
    batch = data.batch(8, torch.Generator().manual_seed(1), augment=True, context=1, pseudo_prob=1.0)
    assert all(batch.lesion[i].sum() > 0 for i in range(8))
    inside = batch.lesion > 0
    assert (batch.input[:, 1:2] - batch.target).abs()[inside].mean() > 0
    healthy = data.batch(8, torch.Generator().manual_seed(1), augment=False, pseudo_prob=0.0)
    assert healthy.lesion.sum() == 0


def test_copies_made_with_other_blob_sizes_are_refused_by_name(cache):
    with pytest.raises(SystemExit, match=r"pseudo.*\.npz: its random blobs cover 0.002-0.04 .* --blob-fraction 0.002 0.1"):
        SliceData.from_cache(cache, "train", pseudo=True, blob_fraction=(0.002, 0.1))


def test_robust_slabs_share_one_appearance_and_only_the_input_is_degraded(cache):
    data = SliceData.from_cache(cache, "train")
    plain = data.batch(8, torch.Generator().manual_seed(2), augment=False)
    robust = data.batch(8, torch.Generator().manual_seed(2), augment=False, robust=True)
    assert not torch.allclose(plain.target, robust.target)  # appearance changed the healthy slice
    x, mask = plain.target[0], plain.mask[0]
    both = appearance(torch.cat([x, x]), mask, seed=5)
    torch.testing.assert_close(both[0], both[1])  # one mapping for every channel
    changed = 0
    for seed in range(20):  # every degradation fires at least once over these seeds
        noisy = acquisition(x, mask, seed=seed)
        assert noisy.shape == x.shape and (noisy * (1 - mask)).abs().max() == 0
        changed += not torch.allclose(noisy, x * mask)
    assert changed >= 5


def test_slice_model_feeds_neighbouring_slices_as_channels():
    """A network that returns its channel k reconstructs the volume shifted by k - context slices."""
    tpl = mni152()

    class Pick(torch.nn.Module):
        def forward(self, x):
            return x[:, 2:3]  # the next slice (context 1: channels z-1, z, z+1)

    card = validate_card({"name": "pick", "family": "restore", "modality": "T1", "spatial_dims": 2,
                          "template": tpl.name, "grid_shape": list(tpl.shape), "spacing_mm": 2.0,
                          "normalisation": "x", "architecture": {"context": 1}, "scoring": {}, "threshold": 0.1,
                          "training": {}, "metrics": {}})
    model = RestorationModel(card, "cpu", network=Pick())
    image = tpl.image.astype(np.float32)
    out = model.reconstruct(image, tpl.mask)
    slices = np.flatnonzero(tpl.mask.any(axis=(0, 1)))[:-1]
    expected = np.where(tpl.mask, np.clip(np.roll(image, -1, axis=2), 0, 1), 0)
    np.testing.assert_allclose(out[:, :, slices], expected[:, :, slices], atol=1e-6)


def test_balanced_sites_are_drawn_equally_often_and_the_default_is_unchanged():
    """Three volumes of one site and one of another: balanced draws split the sites about evenly."""
    tpl = mni152()
    image = tpl.image.astype(np.float32)
    volumes = [(image * s, tpl.mask) for s in (0.97, 0.98, 0.99, 1.0)]  # volume 3 is the small site's
    sites = np.array([0, 0, 0, 1])
    plain = SliceData.from_volumes(volumes, sites=sites)
    balanced = SliceData.from_volumes(volumes, sites=sites, balance_sites=True)

    def small_site_share(data):
        g = torch.Generator().manual_seed(0)
        return np.mean([int(data._draw(data.slices, g)[0]) == 3 for _ in range(2000)])

    assert 0.45 < small_site_share(balanced) < 0.55
    assert 0.2 < small_site_share(plain) < 0.3
    default = SliceData.from_volumes(volumes)  # no sites: the draws of an unbalanced run, bit for bit
    a = default.batch(4, torch.Generator().manual_seed(5), augment=False)
    b = plain.batch(4, torch.Generator().manual_seed(5), augment=False)
    torch.testing.assert_close(a.input, b.input)


def test_balanced_sites_is_refused_for_synthetic_contrast_recipes(tmp_path):
    import json

    from training.__main__ import main as training

    recipe = tmp_path / "any.json"
    recipe.write_text(json.dumps({"name": "any", "family": "restore", "architecture": {},
                                  "training": {"synth_prob": 0.5, "balance_sites": True}}))
    with pytest.raises(ValueError, match="balance_sites.*any.json|any.json.*balance_sites"):
        training(["fit", str(recipe), "--data", str(tmp_path), "--out", str(tmp_path / "run")])
