"""The latent diffusion families (ldm-ae, ldm, ldm-tavg, cldm, pcldm) on tiny models: built from a card,
slice-wise reconstruction at a given t_int, seeded; hostile architecture numbers refused; pcldm's
adaptive group normalisation; ldm-tavg's averaging; the adversarial first stage resumes exactly; and
3-step training of each stage from the command line into model folders that detect through the CLI."""
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_hostile_card_refused, export_run, healthy_cache, phantom_scan
from napari_brainuad.cli import main as cli
from napari_brainuad.models import ModelError, load_model, validate_card
from napari_brainuad.models.families import learned_family
from napari_brainuad.models.families.ldm import LatentDiffusionModel
from napari_brainuad.models.families.pcldm import AdaGNResnetBlock
from napari_brainuad.scoring import ScoringConfig, residual_map, score_residual
from training import export
from training.__main__ import main as training
from training.data import SliceData
from training.fit import CHECKPOINT, fit

ROOT = Path(__file__).resolve().parents[1]
AE = {"ae_channels": [4, 8, 8], "latent_channels": 3, "ae_num_res_blocks": 1, "ae_norm_groups": 4, "ae_attention": False}
UNET = {"channels": [8, 8], "attention_levels": [False, True], "num_res_blocks": 1, "num_head_channels": 8,
        "norm_groups": 4}
TINY = {"ldm-ae": AE, "ldm": {**AE, **UNET}, "ldm-tavg": {**AE, **UNET, "t_avg": 3}, "cldm": {**AE, **UNET},
        "pcldm": {**AE, **UNET, "cond_dim": 16}}
DIFFUSION = ["ldm", "ldm-tavg", "cldm", "pcldm"]
SCHEDULER = {"num_train_timesteps": 1000, "schedule": "scaled_linear_beta",
             "schedule_args": {"beta_start": 0.0015, "beta_end": 0.0195}}


def card(family: str, grid=(32, 32, 6), **arch) -> dict:
    diffusion = family != "ldm-ae"
    extra = {"scheduler": SCHEDULER} if diffusion else {}
    return {"name": f"tiny-{family}", "family": family, "modality": "T1", "spatial_dims": 2, "template": "t",
            "grid_shape": list(grid), "spacing_mm": 2.0, "normalisation": "x",
            "architecture": {"slice_shape": list(grid[:2]), **TINY[family], **extra, **arch}, "scoring": {},
            "threshold": 1.0, "training": {}, "metrics": {},
            "t_int": {"default": 250, "min": 25, "max": 475, "steps": 25} if diffusion else None}


def model_of(family: str, network=None, **arch):
    data = validate_card(card(family, **arch))
    cls = learned_family(family)
    torch.manual_seed(0)
    return cls(data, "cpu", network=network if network is not None else cls.build_network(data.architecture))


def volume():
    image = np.random.default_rng(0).random((32, 32, 6), dtype=np.float32)
    mask = np.zeros(image.shape, bool)
    mask[4:28, 4:28, 1:5] = True
    return image * mask, mask


@pytest.mark.parametrize("family", list(TINY))
def test_family_builds_from_a_card_and_reconstructs_at_a_given_t_int(family):
    model = model_of(family)
    image, mask = volume()
    t_int = None if family == "ldm-ae" else 100
    recon = model.reconstruct(image, mask, t_int=t_int, seed=1)
    assert recon.shape == image.shape and recon.dtype == np.float32
    assert np.all(recon[~mask] == 0) and np.all((recon >= 0) & (recon <= 1))
    np.testing.assert_array_equal(recon, model.reconstruct(image, mask, t_int=t_int, seed=1))  # seeded
    if family != "ldm-ae":
        assert model.card.is_diffusion
        assert not np.array_equal(recon, model.reconstruct(image, mask, t_int=300, seed=1))  # t_int matters
        assert not np.array_equal(recon, model.reconstruct(image, mask, t_int=t_int, seed=2))


@pytest.mark.parametrize("family, change, message", [
    ("ldm-ae", {"slice_shape": [32, 30]}, "must divide by 2 \\*\\* \\(len\\(ae_channels\\) - 1\\) = 4"),
    ("ldm-ae", {"latent_channels": 10**6}, "latent_channels"),
    ("ldm-ae", {"ae_channels": [4] * 7}, "ae_channels"),
    ("ldm-ae", {"ae_norm_groups": 3}, "ldm-ae.*invalid"),
    ("ldm-ae", {"slice_shape": [1024, 1024], "ae_channels": [4, 4]}, "262144 latent positions per slice exceed"),
    ("ldm", {"channels": [8] * 5, "attention_levels": [False] * 5}, "the 8x8 latent must divide by 2 \\*\\* \\(len\\(channels\\) - 1\\) = 16"),
    ("ldm", {"scheduler": None}, "scheduler"),
    ("ldm", {"num_head_channels": 10**6}, "num_head_channels"),
    ("cldm", {"norm_groups": 3}, "cldm.*invalid"),
    ("pcldm", {"cond_dim": None}, "pcldm.*invalid.*cond_dim"),
    ("pcldm", {"cond_dim": 10**7}, "cond_dim"),
    ("ldm-tavg", {"t_avg": 1000}, "t_avg"),
    ("ldm-tavg", {"t_avg": 0}, "t_avg"),
])
def test_hostile_architecture_numbers_are_one_model_error(family, change, message, tmp_path):
    assert_hostile_card_refused(card(family), change, message, tmp_path)


def test_pcldm_starts_as_the_unconditional_unet_and_its_condition_then_changes_the_output():
    network = model_of("pcldm").network.unet
    plain = model_of("ldm").network.unet
    plain.load_state_dict({k.replace(".block.", "."): v for k, v in network.unet.state_dict().items()
                           if "cond_proj" not in k})  # the same MONAI UNet without the AdaGN maps
    blocks = [m for m in network.modules() if isinstance(m, AdaGNResnetBlock)]
    assert len(blocks) == 2 * 1 + 2 + 2 * 2  # every ResnetBlock: down levels, middle, up levels
    gen = torch.Generator().manual_seed(0)
    z_t, t = torch.randn((2, 3, 8, 8), generator=gen), torch.tensor([10, 400])
    z_a, z_b = torch.randn((2, 3, 8, 8), generator=gen), torch.randn((2, 3, 8, 8), generator=gen)
    with torch.no_grad():
        c_a, c_b = network.encode_condition(z_a), network.encode_condition(z_b)
        assert c_a.shape == (2, 16) and not torch.allclose(c_a, c_b)
        # designed so: the AdaGN maps start at zero, so at initialisation c_p has no effect at all
        torch.testing.assert_close(network(z_t, t, c_a), plain(z_t, timesteps=t), rtol=0, atol=1e-6)
        torch.testing.assert_close(network(z_t, t, c_a), network(z_t, t, c_b), rtol=0, atol=0)
    # ... and learns to use it: MONAI zero-initialises each ResnetBlock's conv2 too, so the maps get
    # gradients from the second step, the auxiliary encoder from the third
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    target = torch.randn((2, 3, 8, 8), generator=gen)
    for step in range(4):
        optimizer.zero_grad()
        z_p = z_a if step % 2 else z_b
        (network(z_t, t, network.encode_condition(z_p)) - target * (1 if step % 2 else -1)).pow(2).mean().backward()
        optimizer.step()
    assert all(b.cond_proj.weight.abs().sum() > 0 for b in blocks)
    assert any(p.grad.abs().sum() > 0 for p in network.encoder.parameters() if p.grad is not None)
    with torch.no_grad():
        c_a, c_b = network.encode_condition(z_a), network.encode_condition(z_b)
        assert (network(z_t, t, c_a) - network(z_t, t, c_b)).abs().max() > 1e-4


def test_cldm_sees_the_condition_as_extra_channels():
    net = model_of("cldm").network
    assert net.unet.conv_in.conv.in_channels == 6 and net.unet.out[-1].conv.out_channels == 3
    torch.nn.init.normal_(net.unet.out[-1].conv.weight)  # MONAI starts its output convolution at zero
    z = torch.randn((2, 3, 8, 8))
    with torch.no_grad():
        assert not torch.allclose(net(z, torch.tensor([5, 5]), z), net(z, torch.tensor([5, 5]), torch.zeros_like(z)))


def test_ldm_tavg_averages_the_residual_maps_over_its_t_ints():
    tavg = model_of("ldm-tavg", inference_batch=3)  # the 4 brain slices in two batches, encoded once for all levels
    assert tavg.levels(250) == [75, 150, 250] and tavg.levels(100) == [25, 50, 100] and tavg.levels(30) == [30]
    ldm = LatentDiffusionModel(validate_card(card("ldm", inference_batch=3)), "cpu", network=tavg.network)
    image, mask = volume()
    recon = tavg.reconstruct(image, mask, t_int=100, seed=3)
    each = [ldm.reconstruct(image, mask, t_int=t, seed=3) for t in (25, 50, 100)]
    assert len(recon.each) == 3
    for got, want in zip(recon.each, each):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(recon, np.mean(each, axis=0), atol=1e-6)
    config = ScoringConfig(shift=1, median_size=0, erode=0)
    expected = score_residual(np.mean([residual_map(image, r, mask, config) for r in each], axis=0), mask, config)
    got = tavg.anomaly_map(image, recon, mask, config)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert not np.allclose(got, ldm.anomaly_map(image, each[-1], mask, config))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return healthy_cache(tmp_path_factory.mktemp("cache"), pseudo_per_scan=2)


def recipe_of(family: str, **training_changes) -> dict:
    name = {"ldm-ae": "ldm-ae-t1"}.get(family, f"{family}-t1")
    recipe = json.loads((ROOT / "training" / "recipes" / f"{name}.json").read_text())
    recipe["name"] = f"tiny-{family}"
    recipe["architecture"].update(TINY[family], inference_batch=48)
    recipe["training"].update({"steps": 3, "batch_size": 2, "checkpoint_minutes": 60, **training_changes})
    recipe["scoring"]["lpips"] = family == "pcldm"  # the perceptual weighting once; it is slow on a CPU
    if recipe.get("t_int"):
        recipe["t_int"]["steps"] = 125  # DDIM steps of 125: few network calls on the full model grid
    return recipe


def test_the_adversarial_first_stage_resumes_to_the_same_weights(cache, tmp_path):
    data = SliceData.from_cache(cache, "train")
    recipe = lambda steps: recipe_of("ldm-ae", steps=steps, adv_start=1)  # noqa: E731  (the GAN from step 1)
    fit(recipe(4), data, tmp_path / "a", "cpu")
    fit(recipe(2), data, tmp_path / "b", "cpu")  # "killed" after its checkpoint at step 2
    fit(recipe(4), data, tmp_path / "b", "cpu", resume=True)
    a = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)
    assert a["step"] == b["step"] == 4 and set(a["train_step"]) == {"discriminator", "optimizer"}
    for key in a["network"]:
        torch.testing.assert_close(a["network"][key], b["network"][key], rtol=0, atol=1e-6)
    for key, value in a["train_step"]["discriminator"].items():
        torch.testing.assert_close(value, b["train_step"]["discriminator"][key], rtol=0, atol=1e-6)


def fit_and_export(family: str, cache: Path, tmp: Path, **training_changes) -> Path:
    recipe = recipe_of(family, **training_changes)
    (tmp / f"{family}.json").write_text(json.dumps(recipe))
    run, folder = tmp / f"run-{family}", tmp / f"model-{family}"
    assert training(["fit", str(tmp / f"{family}.json"), "--data", str(cache), "--out", str(run), "--device", "cpu"]) == 0
    export_run(run, folder, cache)
    return folder


@pytest.fixture(scope="module")
def autoencoder(cache, tmp_path_factory):
    return fit_and_export("ldm-ae", cache, tmp_path_factory.mktemp("ldm-ae"), adv_start=1)


@pytest.fixture(scope="module")
def ldm_run(cache, autoencoder, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ldm")
    fit_and_export("ldm", cache, tmp, autoencoder=str(autoencoder))
    return tmp / "run-ldm"


def detects(folder: Path, tmp: Path, t_int: int | None) -> np.ndarray:
    scan = tmp / "scan.nii.gz"
    nib.save(phantom_scan(step=2), scan)
    out = tmp / f"out-{t_int}"
    args = ["detect", str(scan), "--model", str(folder), "--out", str(out), "--no-register", "--device", "cpu"]
    assert cli(args + (["--t-int", str(t_int)] if t_int else [])) == 0
    anomaly = nib.load(out / "scan_anomaly.nii.gz")
    assert anomaly.shape == nib.load(scan).shape and np.isfinite(anomaly.get_fdata()).all()
    return nib.load(out / "scan_reconstruction.nii.gz").get_fdata()


@pytest.mark.parametrize("family", list(TINY))
def test_three_training_steps_per_stage_export_models_that_detect(family, cache, autoencoder, ldm_run, tmp_path):
    if family == "ldm-ae":
        folder = autoencoder
    elif family == "ldm":
        folder = ldm_run.parent / "model-ldm"
    elif family == "ldm-tavg":  # no training of its own: the ldm run under the ldm-tavg recipe's card
        other = tmp_path / "tavg.json"
        other.write_text(json.dumps(recipe_of("ldm-tavg")))
        folder = tmp_path / "model-ldm-tavg"
        assert training(["export", str(ldm_run), "--recipe", str(other), "--to", str(folder), "--cache", str(cache),
                         "--device", "cpu"]) == 0
    else:
        folder = fit_and_export(family, cache, tmp_path, autoencoder=str(autoencoder))
    stored = json.loads((folder / "card.json").read_text())
    assert stored["family"] == family and stored["training"]["steps"] == 3
    assert stored["metrics"]["calibration"]["threshold"] > 0
    if family == "ldm-tavg":
        assert "tiny-ldm (ldm)" in stored["training"]["trained_as"] and stored["architecture"]["t_avg"] == 3
    if family != "ldm-ae":  # the first stage was loaded and stayed frozen; the latent scale was measured
        first, network = load_model(autoencoder, "cpu").network, load_model(folder, "cpu").network
        for key, value in first.state_dict().items():
            torch.testing.assert_close(network.autoencoder.state_dict()[key], value, rtol=0, atol=0)
        trained = getattr(torch, recipe_of(family).get("weights_dtype", "float32"))  # the frozen part stays float32
        dtypes = {(k.startswith("autoencoder."), v.dtype) for k, v in load_file(folder / "weights.safetensors").items()
                  if v.is_floating_point()}
        assert dtypes == {(True, torch.float32), (False, trained)}
        assert float(network.scale_factor) != 1.0
        assert stored["t_int"]["default"] == 250
        low, high = detects(folder, tmp_path, 50), detects(folder, tmp_path, 400)
        assert not np.allclose(low, high)
    else:
        detects(folder, tmp_path, None)


def test_a_second_stage_refuses_a_first_stage_of_another_kind(cache, autoencoder, tmp_path):
    data = SliceData.from_cache(cache, "train")
    with pytest.raises(ModelError, match="differs from the recipe's in ae_channels"):
        recipe = recipe_of("ldm", autoencoder=str(autoencoder))
        recipe["architecture"]["ae_channels"] = [4, 8, 16]
        fit(recipe, data, tmp_path / "x", "cpu")


def test_ldm_tavg_export_refuses_a_network_that_does_not_match(ldm_run, tmp_path):
    other = recipe_of("pcldm")
    with pytest.raises(ModelError, match="does not match the run's 'ldm' weights"):
        export.as_recipe(json.loads((ldm_run / "recipe.json").read_text()), other,
                         torch.load(ldm_run / CHECKPOINT, weights_only=True)["network"])
