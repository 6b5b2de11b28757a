"""The vqvae, vqvae-tr, rae and mae families on tiny models: built from a card, slice-wise
reconstruction, 3-step training from the command line into a loadable model folder, hostile
architecture numbers refused, vqvae-tr's resampling and mae's masks checked on controlled inputs."""
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_hostile_card_refused, export_run, healthy_cache, phantom_scan
from napari_brainuad.cli import main as cli
from napari_brainuad.models import load_model, validate_card
from napari_brainuad.models.families import learned_family
from napari_brainuad.models.families.mae import MaskedAutoEncoderModel, inference_masks
from napari_brainuad.models.families.vqvae_tr import VQVAETransformer, resample_unlikely
from training.__main__ import main as training

ROOT = Path(__file__).resolve().parents[1]
VQ = {"channels": [4, 8], "num_res_layers": 1, "num_res_channels": [4, 8], "num_embeddings": 16, "embedding_dim": 4}
TINY = {
    "vqvae": VQ,
    "vqvae-tr": {**VQ, "attn_layers_dim": 16, "attn_layers_depth": 1, "attn_layers_heads": 2, "resample_p": 0.005},
    "rae": {"latent_size": 8, "channels": [4, 8, 8], "strides": [2, 2, 2], "num_res_units": 1},
    "mae": {"patch_size": [16, 16], "hidden_size": 16, "mlp_dim": 32, "num_layers": 1, "num_heads": 2,
            "decoder_hidden_size": 16, "decoder_mlp_dim": 32, "decoder_num_layers": 1, "decoder_num_heads": 2,
            "masking_ratio": 0.75, "masks": 4},
}


def card(family: str, grid=(32, 32, 6), **arch) -> dict:
    return {"name": f"tiny-{family}", "family": family, "modality": "T1", "spatial_dims": 2, "template": "t",
            "grid_shape": list(grid), "spacing_mm": 2.0, "normalisation": "x",
            "architecture": {"slice_shape": list(grid[:2]), **TINY[family], **arch}, "scoring": {},
            "threshold": 1.0, "training": {}, "metrics": {}}


@pytest.mark.parametrize("family", list(TINY))
def test_family_builds_from_a_card_and_reconstructs_every_brain_slice(family):
    data = validate_card(card(family))
    cls = learned_family(family)
    model = cls(data, "cpu", network=cls.build_network(data.architecture))
    rng = np.random.default_rng(0)
    image = rng.random((32, 32, 6), dtype=np.float32)
    mask = np.zeros(image.shape, bool)
    mask[4:28, 4:28, 1:5] = True
    recon = model.reconstruct(image * mask, mask, seed=1)
    assert recon.shape == image.shape and recon.dtype == np.float32
    assert np.all(recon[~mask] == 0) and np.all((recon >= 0) & (recon <= 1))
    np.testing.assert_array_equal(recon, model.reconstruct(image * mask, mask, seed=1))  # seeded


@pytest.mark.parametrize("family, change, message", [
    ("vqvae", {"slice_shape": [32, 30]}, "must divide by 2 \\*\\* len\\(channels\\)"),
    ("vqvae", {"num_embeddings": 10**7}, "num_embeddings"),
    ("vqvae", {"context": 1}, "context must be 0"),
    ("vqvae-tr", {"slice_shape": [512, 512], "channels": [4], "num_res_channels": [4]}, "65536 codes per slice exceed"),
    ("vqvae-tr", {"attn_layers_heads": 3}, "vqvae-tr.*invalid"),
    ("vqvae-tr", {"resample_p": 0.9}, "resample_p"),
    ("vqvae-tr", {"resample_p": None}, "resample_p"),
    ("rae", {"latent_size": 10**7}, "latent_size"),
    ("mae", {"slice_shape": [1024, 1024], "patch_size": [2, 2]}, "262144 patches per slice exceed"),
    ("mae", {"masks": 1}, "cannot cover every patch"),
    ("mae", {"masking_ratio": 1.0}, "masking_ratio"),
    ("mae", {"hidden_size": 15}, "mae.*invalid"),
    ("mae", {"decoder_num_layers": 1000}, "decoder_num_layers"),
])
def test_hostile_architecture_numbers_are_one_model_error(family, change, message, tmp_path):
    assert_hostile_card_refused(card(family), change, message, tmp_path)


class NextCode(torch.nn.Module):
    """A stand-in transformer that is sure the next code is the previous one plus 1 (code 0 after BOS)."""

    def __init__(self, codes: int):
        super().__init__()
        self.codes = codes

    def forward(self, x):
        nxt = torch.where(x == self.codes, 0, (x + 1) % self.codes)
        return 12.0 * F.one_hot(nxt, self.codes + 1).float()


def test_vqvae_tr_resamples_only_the_codes_the_transformer_finds_unlikely():
    network = VQVAETransformer({"slice_shape": [32, 32], **TINY["vqvae-tr"]})  # 8x8 codes of 16
    network.transformer = NextCode(16)
    order = torch.as_tensor(network.ordering.get_sequence_ordering())
    revert = torch.as_tensor(network.ordering.get_revert_sequence_ordering())
    healthy = (torch.arange(64) % 16).repeat(3, 1)  # in the transformer's order: every code likely
    codes = healthy.clone()
    codes[0, 5], codes[1, 20], codes[1, 40] = 9, 3, 0  # three anomalous codes; slice 2 untouched
    prefix = F.pad(codes, (1, 0), value=16)[:, :-1]
    log_likelihood = torch.log_softmax(network.transformer(prefix), -1).gather(2, codes[..., None])[..., 0]
    unlikely = log_likelihood < np.log(0.005)
    assert unlikely.sum() == 6  # each anomalous code, and the code after it (its context is wrong)
    spatial = lambda seq: seq[:, revert].reshape(3, 8, 8)  # noqa: E731
    healed = resample_unlikely(spatial(codes), spatial(log_likelihood), network, 0.005, torch.Generator().manual_seed(0))
    healed = healed.reshape(3, -1)[:, order]
    torch.testing.assert_close(healed, healthy)  # the anomalous codes replaced, the likely ones kept
    assert torch.equal(healed[~unlikely], codes[~unlikely])


@pytest.mark.parametrize("n, ratio, count", [(4, 0.75, 4), (168, 0.75, 4), (168, 0.5, 2), (169, 0.75, 2), (30, 0.1, 10)])
def test_mae_inference_masks_together_hide_every_patch(n, ratio, count):
    masks = inference_masks(n, ratio, count, torch.Generator().manual_seed(3))
    assert masks.shape == (count, n) and masks.any(dim=0).all()
    assert (masks.sum(dim=1) == n - int((1 - ratio) * n)).all()  # each mask hides what training hid


def test_mae_reconstruction_comes_only_from_hidden_patches():
    class Flags(torch.nn.Module):
        def forward(self, x, keep):  # predicts 1 for every visible patch, 0 for every hidden one
            out = torch.zeros((x.shape[0], 4, 256))
            out[torch.arange(x.shape[0])[:, None], keep] = 1.0
            return out
    model = MaskedAutoEncoderModel(validate_card(card("mae")), "cpu", network=Flags())
    image = np.ones((32, 32, 6), np.float32)
    mask = np.ones(image.shape, bool)
    assert model.reconstruct(image, mask).max() == 0.0


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return healthy_cache(tmp_path_factory.mktemp("cache"))


def fit_and_export(family: str, cache: Path, tmp: Path, **training_changes) -> Path:
    recipe = json.loads((ROOT / "training" / "recipes" / f"{family}-t1.json").read_text())
    recipe["name"] = f"tiny-{family}"
    recipe["architecture"].update(TINY[family], inference_batch=48)
    recipe["training"].update(steps=3, batch_size=2, checkpoint_minutes=60, **training_changes)
    recipe["scoring"]["lpips"] = family == "mae"  # the perceptual weighting once; it is slow on a CPU
    (tmp / f"{family}.json").write_text(json.dumps(recipe))
    run, folder = tmp / f"run-{family}", tmp / f"model-{family}"
    assert training(["fit", str(tmp / f"{family}.json"), "--data", str(cache), "--out", str(run), "--device", "cpu"]) == 0
    export_run(run, folder, cache)
    return folder


@pytest.fixture(scope="module")
def vqvae_folder(cache, tmp_path_factory):
    return fit_and_export("vqvae", cache, tmp_path_factory.mktemp("vqvae"))


@pytest.mark.parametrize("family", list(TINY))
def test_three_training_steps_export_a_model_that_detects(family, cache, vqvae_folder, tmp_path):
    if family == "vqvae":
        folder = vqvae_folder
    else:
        first_stage = {"vqvae": str(vqvae_folder)} if family == "vqvae-tr" else {}
        folder = fit_and_export(family, cache, tmp_path, **first_stage)
    stored = json.loads((folder / "card.json").read_text())
    assert stored["family"] == family and stored["training"]["steps"] == 3
    assert stored["metrics"]["calibration"]["scoring"] == "normative"
    if family == "vqvae-tr":  # the first stage was loaded and stayed frozen
        first, second = load_model(vqvae_folder, "cpu").network, load_model(folder, "cpu").network.vqvae
        for key, value in first.state_dict().items():
            torch.testing.assert_close(second.state_dict()[key], value, rtol=0, atol=0)
    scan = tmp_path / "scan.nii.gz"
    nib.save(phantom_scan(step=2), scan)
    assert cli(["detect", str(scan), "--model", str(folder), "--out", str(tmp_path / "out"), "--no-register",
                "--device", "cpu"]) == 0
    anomaly = nib.load(tmp_path / "out" / "scan_anomaly.nii.gz")
    assert anomaly.shape == nib.load(scan).shape and np.isfinite(anomaly.get_fdata()).all()
