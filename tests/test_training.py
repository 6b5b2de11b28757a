"""The training package on tiny data: every family fits, exports, reloads and detects; resume; torchrun;
scanner-robust slabs and pseudo-pathology pairs."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import export_run, healthy_cache, phantom_scan
from napari_brainuad.io import read_volume
from napari_brainuad.models import ModelError, load_model
from napari_brainuad.pipeline import detect
from training import export
from training.data import SliceData
from training.fit import CHECKPOINT, fit

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "ae": {"channels": [4, 8, 8, 4], "strides": [2, 2, 2, 2], "num_res_units": 1},
    "vae": {"latent_size": 16, "channels": [4, 8, 8, 8], "strides": [2, 2, 2, 2], "num_res_units": 1},
    "dae": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
    "restore": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
    "ddpm": {"channels": [8, 8, 8], "attention_levels": [False, False, True], "num_res_blocks": 1,
             "num_head_channels": 8, "norm_groups": 4},
}


def tiny_recipe(family: str, steps: int = 3) -> dict:
    recipe = json.loads((ROOT / "training" / "recipes" / f"{family}-t1.json").read_text())
    recipe["name"] = f"tiny-{family}"
    recipe["architecture"].update(TINY[family])
    recipe["architecture"]["inference_batch"] = 48
    recipe["training"].update(steps=steps, batch_size=4, checkpoint_minutes=60)
    return recipe


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The tiny healthy cache, with two pseudo-pathological copies of each train scan (blobs and shapes only)."""
    return healthy_cache(tmp_path_factory.mktemp("cache"), pseudo_per_scan=2)


@pytest.mark.parametrize("family", ["ae", "vae", "dae", "restore", "ddpm"])
def test_family_trains_exports_reloads_and_detects(family, cache, tmp_path):
    recipe = tiny_recipe(family)
    run = tmp_path / "run"
    data = SliceData.from_cache(cache, "train", pseudo=recipe["training"].get("pseudo_prob", 0) > 0)
    state = fit(recipe, data, run, "cpu")
    assert state["step"] == 3 and np.isfinite(state["loss"])
    folder = tmp_path / "model"
    export_run(run, folder, cache)
    card = json.loads((folder / "card.json").read_text())
    assert card["training"]["steps"] == 3 and card["metrics"]["calibration"]["data"].startswith("val splits of")
    if family == "restore":  # its recipe pools the train scans into the normative statistics, and says so
        assert card["metrics"]["calibration"]["normative"]["splits"] == ["val", "train"]
        assert card["metrics"]["calibration"]["command"].endswith("--normative-train")
        # trained on a cache prepared its own way: the card says how to make it
        assert card["training"]["prepare"].endswith("--cache cache-big --pseudo-per-scan 8 --blob-fraction 0.002 0.1")
    else:
        assert "prepare" not in card["training"]
    model = load_model(folder, "cpu")
    path = tmp_path / "scan.nii.gz"
    nib.save(phantom_scan(step=2), path)
    volume = read_volume(path)
    result = detect(volume, model, register=False)
    assert result.anomaly_map.shape == volume.shape and result.reconstruction.shape == volume.shape
    if family == "ddpm":
        low = detect(volume, model, register=False, t_int=50)
        assert not np.allclose(low.template_arrays["reconstruction"], result.template_arrays["reconstruction"])


def test_export_publishes_the_model_folder_only_once_calibrated(cache, tmp_path, monkeypatch):
    recipe = tiny_recipe("ae")
    run, folder = tmp_path / "run", tmp_path / "model"
    fit(recipe, SliceData.from_cache(cache, "train"), run, "cpu")
    folder.mkdir()
    (folder / "card.json").write_text("{}")  # a previous export, replaced whole
    calibrate = export.calibrate_folder

    def check_then_calibrate(staged, *args, **kwargs):
        assert json.loads((folder / "card.json").read_text()) == {}  # not yet replaced while calibrating
        return calibrate(staged, *args, **kwargs)

    monkeypatch.setattr(export, "calibrate_folder", check_then_calibrate)
    export_run(run, folder, cache)
    assert "calibration" in json.loads((folder / "card.json").read_text())["metrics"]
    assert not (run / ".export").exists() and not (tmp_path / ".model.old").exists()


def test_resume_after_interruption_reaches_the_same_weights(cache, tmp_path):
    data = SliceData.from_cache(cache, "train")
    straight = fit(tiny_recipe("ae", steps=6), data, tmp_path / "a", "cpu")
    fit(tiny_recipe("ae", steps=3), data, tmp_path / "b", "cpu")  # "killed" after its checkpoint at step 3
    torn = tmp_path / "b" / f".{CHECKPOINT}.k1ll3d.pt"
    torn.write_bytes(b"half a checkpoint")  # left by a kill during the next checkpoint write
    resumed = fit(tiny_recipe("ae", steps=6), data, tmp_path / "b", "cpu", resume=True)
    assert resumed["step"] == straight["step"] == 6
    assert not torn.exists()
    a = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=True)["network"]
    b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)["network"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_torchrun_two_cpu_processes(cache, tmp_path):
    recipe = tmp_path / "tiny-ae.json"
    recipe.write_text(json.dumps(tiny_recipe("ae", steps=2)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "training", "fit", str(recipe), "--data", str(cache), "--out", str(tmp_path / "ddp"),
           "--device", "cpu", "--threads", "1"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = torch.load(tmp_path / "ddp" / CHECKPOINT, weights_only=True)
    assert saved["step"] == 2


def test_fit_refuses_a_cache_whose_blobs_are_not_the_recipes(cache, tmp_path):
    recipe = tmp_path / "tiny-restore.json"
    recipe.write_text(json.dumps(tiny_recipe("restore")))  # restore-t1's recipe asks for blobs up to 10 %
    cmd = [sys.executable, "-m", "training", "fit", str(recipe), "--data", str(cache), "--out", str(tmp_path / "run"),
           "--device", "cpu", "--threads", "1"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "--blob-fraction 0.002 0.1" in done.stderr
    assert not (tmp_path / "run" / CHECKPOINT).exists()


def test_float16_weights_are_exported_and_loaded(cache, tmp_path):
    from safetensors.torch import load_file

    recipe = tiny_recipe("ae")
    recipe["weights_dtype"] = "float16"
    fit(recipe, SliceData.from_cache(cache, "train"), tmp_path / "run", "cpu")
    folder = tmp_path / "model"
    export_run(tmp_path / "run", folder, cache)
    stored = load_file(str(folder / "weights.safetensors"))
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
    model = load_model(folder, "cpu")
    assert all(p.dtype == torch.float32 for p in model.network.parameters())
    trained = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)["network"]
    for key, value in model.network.state_dict().items():
        expected = trained[key].half().float() if trained[key].is_floating_point() else trained[key]
        torch.testing.assert_close(value, expected)


def test_fine_tuning_starts_from_a_model_folder(cache, tmp_path):
    """``training.init``: the run starts from that folder's weights (lr 0 keeps them); a wrong family or
    architecture is one clear error; the card says where it started."""
    data = SliceData.from_cache(cache, "train")
    fit(tiny_recipe("ae"), data, tmp_path / "run", "cpu")
    base = tmp_path / "base"
    export_run(tmp_path / "run", base, cache)
    recipe = tiny_recipe("ae", steps=1)
    recipe["training"].update(init=str(base), lr=0.0)
    recipe["training"].pop("lr_min", None)
    fit(recipe, data, tmp_path / "tuned", "cpu")
    tuned = torch.load(tmp_path / "tuned" / CHECKPOINT, weights_only=True)["network"]
    start = dict(load_model(base, "cpu").network.named_parameters())  # not the norms' running statistics
    for key, value in start.items():
        torch.testing.assert_close(tuned[key], value.detach())
    export_run(tmp_path / "tuned", tmp_path / "tuned-model", cache)
    card = json.loads((tmp_path / "tuned-model" / "card.json").read_text())
    assert card["training"]["init"] == f"fine-tuned from the weights of {base}"
    other = tiny_recipe("dae", steps=1)
    other["training"]["init"] = str(base)
    with pytest.raises(ModelError, match="must be a 'dae' model, not 'ae'"):
        fit(other, data, tmp_path / "other", "cpu")
    wider = tiny_recipe("ae", steps=1)
    wider["architecture"]["channels"] = [8, 8, 8, 4]
    wider["training"]["init"] = str(base)
    with pytest.raises(ModelError, match="does not match the recipe's architecture"):
        fit(wider, data, tmp_path / "wider", "cpu")


def test_a_card_names_its_recipe_file_where_it_lives():
    """Shipped recipes sit in ``training/recipes/``, experiments below it; a card's recipe path and command name
    the file that exists, from the repository root."""
    repo = Path(export.__file__).parents[1]
    assert export.recipe_file("restore-t1") == "training/recipes/restore-t1.json"
    assert export.recipe_file("restore-t1-large") == "training/recipes/experiments/restore-t1-large.json"
    for name in ("restore-t1", "restore-t1-large"):
        assert (repo / export.recipe_file(name)).is_file()


def test_bench_speed_times_full_detections_and_writes_its_table(tmp_path):
    from training import bench_speed
    from training.__main__ import main as training_main

    scan = tmp_path / "data" / bench_speed.LESION_CASES[bench_speed.SCAN][0]
    scan.parent.mkdir(parents=True)
    nib.save(phantom_scan(), scan)
    out = tmp_path / "out"
    assert training_main(["bench-speed", "--data", str(tmp_path / "data"), "--models", "intensity-t1", "--repeats", "2",
                          "--threads", "1", "--device", "cpu", "--out", str(out)]) == 0
    (row,) = list(csv.DictReader(open(out / "speed.csv")))
    assert row["model"] == "intensity-t1" and row["device"] == "cpu"
    assert 0 < float(row["min s"]) <= float(row["median s"]) <= float(row["max s"])
    report = (out / "speed.md").read_text()
    assert "--models intensity-t1 --repeats 2" in report and "| intensity-t1 |" in report
    with pytest.raises(ValueError, match="repeats"):
        bench_speed.time_detect(None, None, 0)
