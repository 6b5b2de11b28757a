"""Issue 16: inputs never overwritten, output-name collisions, concurrent runs, unwritable outputs,
Ctrl-C during registration, hostile model folders, scans that do not suit the model, and smaller cases."""
import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from safetensors.torch import save_file

from conftest import phantom_scan
from napari_brainuad import cli
from napari_brainuad.cli import main
from napari_brainuad.io import InputError, Volume, read_volume
from napari_brainuad.models import ModelError, find_card, load_model
from napari_brainuad.models.families import build_network
from napari_brainuad.outdir import LOCK_FILE
from napari_brainuad.pipeline import batch, detect

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
CLI = [sys.executable, "-c", "import sys; from napari_brainuad.cli import main; sys.exit(main())"]
FAST = ["--model", "intensity-t1", "--device", "cpu", "--no-register"]


def one_sentence(err: str) -> bool:
    """One ``error:`` line besides the progress bar."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]
    return len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err


def save(image: nib.Nifti1Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


@pytest.fixture
def no_read(monkeypatch):
    """Fail the test if the CLI reads a scan: checks must come first."""
    def boom(path):
        raise AssertionError(f"read {path} before checking the options")
    monkeypatch.setattr(cli, "read_volume", boom)


# ---- 1. inputs are never overwritten --------------------------------------------------------

def test_detect_refuses_to_overwrite_a_brain_mask_named_like_an_output(tmp_path, capsys):
    scan = save(phantom_scan(), tmp_path / "d" / "sub_brain.nii.gz")
    mask_img = nib.Nifti1Image((phantom_scan().get_fdata() > 0).astype(np.uint8), phantom_scan().affine)
    mask = save(mask_img, tmp_path / "d" / "sub_brain_mask.nii.gz")  # FSL BET's naming
    before = mask.read_bytes()
    code = main(["detect", str(scan), "--brain-mask", str(mask), "--out", str(tmp_path / "d"), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and one_sentence(err) and str(mask) in err and "overwritten" in err
    assert mask.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["sub_brain.nii.gz", "sub_brain_mask.nii.gz"]


# ---- 2. output-name collisions --------------------------------------------------------------

@pytest.mark.parametrize("names, pattern", [(["a.nii", "a.nii.gz"], "*.nii*"),
                                            (["s1/t1.nii.gz", "s1_t1.nii.gz"], "**/*.nii*"),
                                            (["A.nii.gz", "a.nii.gz"], "*.nii*")])
def test_batch_refuses_inputs_whose_outputs_collide(tmp_path, capsys, names, pattern):
    for name in names:
        save(phantom_scan(step=3), tmp_path / "in" / name)
    out = tmp_path / "out"
    code = main(["batch", str(tmp_path / "in"), "--pattern", pattern, "--out", str(out), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and one_sentence(err) and "named like" in err
    assert not out.exists()  # refused before anything was written


# ---- 3. concurrent runs ---------------------------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from napari_brainuad.outdir import output_lock
with output_lock(Path(sys.argv[1])):
    (Path(sys.argv[1]) / ".a_mask.nii.gz.live123.nii.gz").write_bytes(b"being written")
    print("held", flush=True)
    time.sleep(60)
"""


def test_second_run_into_a_folder_in_use_is_refused_and_deletes_nothing(tmp_path, capsys):
    save(phantom_scan(step=3), tmp_path / "in" / "a.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        code = main(["batch", str(tmp_path / "in"), "--out", str(out), *FAST])
        err = capsys.readouterr().err
        assert code == 2 and one_sentence(err) and f"another brainuad run (pid {holder.pid} on" in err
        code = main(["detect", str(tmp_path / "in" / "a.nii.gz"), "--out", str(out), *FAST])
        assert code == 2 and "another brainuad run" in capsys.readouterr().err
        assert (out / ".a_mask.nii.gz.live123.nii.gz").exists()  # the live run's temporary survives
    finally:
        holder.kill()
        holder.wait()
    # The holder died: its temporary is stale now, and the next run removes it and completes.
    assert main(["batch", str(tmp_path / "in"), "--out", str(out), *FAST]) == 0
    assert not (out / ".a_mask.nii.gz.live123.nii.gz").exists() and (out / "a_findings.csv").exists()


# ---- 4. unwritable or full output -----------------------------------------------------------

def test_output_that_is_a_file_is_one_sentence_before_any_work(tmp_path, capsys, no_read):
    scan = save(phantom_scan(), tmp_path / "scan.nii.gz")
    (tmp_path / "taken").write_text("a file")
    assert main(["detect", str(scan), "--out", str(tmp_path / "taken"), *FAST]) == 2
    err = capsys.readouterr().err
    assert one_sentence(err) and "is a file" in err


def test_unwritable_output_is_one_sentence_before_any_work(tmp_path, capsys, monkeypatch, no_read):
    import napari_brainuad.outdir as outdir

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(outdir.tempfile, "TemporaryFile", denied)  # a read-only folder, also for root
    scan = save(phantom_scan(), tmp_path / "scan.nii.gz")
    assert main(["detect", str(scan), "--out", str(tmp_path / "ro"), *FAST]) == 2
    err = capsys.readouterr().err
    assert one_sentence(err) and "not writable (Permission denied)" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder(tmp_path, capsys):
    scan = save(phantom_scan(), tmp_path / "scan.nii.gz")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    assert main(["detect", str(scan), "--out", str(ro), *FAST]) == 2
    assert "not writable" in capsys.readouterr().err


def full_disk_for(name_part: str):
    import napari_brainuad.pipeline as pipeline

    real = pipeline.write_volume

    def write(path, *args, **kwargs):
        if name_part in Path(path).name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *args, **kwargs)
    return write


def test_full_disk_detect_is_one_sentence(tmp_path, capsys, monkeypatch):
    import napari_brainuad.pipeline as pipeline

    monkeypatch.setattr(pipeline, "write_volume", full_disk_for("scan"))
    scan = save(phantom_scan(step=3), tmp_path / "scan.nii.gz")
    assert main(["detect", str(scan), "--out", str(tmp_path / "o"), *FAST]) == 2
    err = capsys.readouterr().err
    assert one_sentence(err) and "No space left on device" in err
    assert not [p for p in (tmp_path / "o").iterdir() if p.name != LOCK_FILE]


def test_full_disk_in_a_batch_is_an_error_row_and_the_batch_goes_on(tmp_path, monkeypatch):
    import napari_brainuad.pipeline as pipeline

    for name in "abc":
        save(phantom_scan(step=3), tmp_path / "in" / f"{name}.nii.gz")
    monkeypatch.setattr(pipeline, "write_volume", full_disk_for("b_"))
    items = batch(tmp_path / "in", tmp_path / "out", load_model("intensity-t1", "cpu"), register=False)
    assert [it.status for it in items] == ["ok", "error", "ok"]
    assert "No space left on device" in items[1].message
    monkeypatch.setattr(pipeline, "write_summary", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")))
    shutil.rmtree(tmp_path / "out")
    with pytest.raises(pipeline.OutputError, match="batch stopped after 1 of 3 files"):
        batch(tmp_path / "in", tmp_path / "out", load_model("intensity-t1", "cpu"), register=False)


# ---- 5. Ctrl-C during registration ----------------------------------------------------------

def _default_sigint() -> None:
    """In the child before exec: SIGINT at its default, as an interactive shell starts a job. A child inherits
    an ignored SIGINT (Python then installs no KeyboardInterrupt handler), and a test run started in the
    background by a non-interactive shell (``pytest &``, ``nohup``) has SIGINT ignored: there the CLI ran to
    the end and exited 0."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_during_registration(cmd: list[str]) -> tuple[int, str]:
    """Run ``cmd`` in its own session with SIGINT not ignored (job control), SIGINT its process group once
    registration has started."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT,
                            start_new_session=True, preexec_fn=_default_sigint)
    seen = b""
    while b"registration" not in seen:
        chunk = os.read(proc.stdout.fileno(), 4096)
        assert chunk, seen.decode(errors="replace")[-2000:]
        seen += chunk
    time.sleep(0.05)  # inside the registration (about a second); later risks missing it on a loaded machine
    os.killpg(proc.pid, signal.SIGINT)
    seen += proc.stdout.read()
    return proc.wait(timeout=120), seen.decode(errors="replace")


@pytest.mark.parametrize("command", ["detect", "batch"])
def test_ctrl_c_during_registration_exits_130_cleanly(tmp_path, command):
    scan = save(phantom_scan(step=1), tmp_path / "in" / "scan.nii.gz")
    target = str(scan) if command == "detect" else str(scan.parent)
    code, output = interrupt_during_registration(
        [*CLI, command, target, "--model", "intensity-t1", "--device", "cpu", "--out", str(tmp_path / "out")])
    assert code == 130, output[-2000:]
    assert "interrupted" in output and "terminate called" not in output and "Traceback" not in output


# ---- 6. hostile model folders ---------------------------------------------------------------

def card_folder(tmp_path: Path, base: str = "ae-t1", **changes) -> Path:
    data = json.loads(json.dumps(find_card(base).data))
    data["name"] = "stranger"
    for key, value in changes.items():
        target = data
        *parents, last = key.split("__")
        for p in parents:
            target = target[p]
        if value is None:
            target.pop(last, None)
        else:
            target[last] = value
    folder = tmp_path / "stranger"
    folder.mkdir()
    (folder / "card.json").write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize("changes, message", [
    ({"architecture__channels": [16000, 16000]}, "architecture/channels"),
    ({"architecture__inference_batch": 0}, "inference_batch"),
    ({"architecture__context": 10**9}, "context"),
    ({"architecture__num_res_units": 1e11}, "num_res_units"),
    ({"architecture__unknown": 1}, "unknown"),
    ({"grid_shape": [96, 112, 10**7]}, "grid_shape"),
])
def test_architecture_numbers_are_bounded(tmp_path, changes, message):
    with pytest.raises(ModelError, match=message):
        load_model(card_folder(tmp_path, **changes), "cpu")


@pytest.mark.parametrize("changes, message", [
    ({"architecture__scheduler__num_train_timesteps": 1e11}, "num_train_timesteps"),
    ({"t_int__steps": 0}, "steps"),
    ({"architecture__scheduler": None}, "scheduler"),
    ({"t_int": None}, "t_int"),
    ({"t_int__max": 2000, "t_int__steps": 25}, "below the scheduler"),
    ({"architecture__scheduler__schedule_args": {"beta_start": 5}}, "beta_start"),
])
def test_diffusion_card_numbers_are_bounded(tmp_path, changes, message):
    with pytest.raises(ModelError, match=message):
        load_model(card_folder(tmp_path, "ddpm-t1", **changes), "cpu")


def test_deeply_nested_or_non_finite_cards(tmp_path):
    folder = card_folder(tmp_path)
    (folder / "card.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ModelError, match="not readable JSON \\(nested too deeply\\)"):
        load_model(folder, "cpu")
    (folder / "card.json").write_text('{"training": {"a": ' + "[" * 40 + "]" * 40 + "}}")
    with pytest.raises(ModelError, match="nested deeper"):
        load_model(folder, "cpu")
    data = find_card("intensity-t1").data
    (folder / "card.json").write_text(json.dumps(dict(data, threshold=float("nan"))))
    with pytest.raises(ModelError, match="NaN is not a number"):
        load_model(folder, "cpu")


@pytest.mark.parametrize("target", ["/dev/urandom", "/dev/zero", "fifo", "huge"])
def test_card_must_be_a_small_regular_file(tmp_path, target):
    folder = tmp_path / "m"
    folder.mkdir()
    card = folder / "card.json"
    if target == "fifo":
        os.mkfifo(card)  # nobody writes: reading it would hang
    elif target == "huge":
        card.write_text(" " * (2 << 20) + "{}")
    else:
        card.symlink_to(target)
    start = time.monotonic()
    with pytest.raises(ModelError, match="not a regular file|larger than"):
        load_model(folder, "cpu")
    assert time.monotonic() - start < 5


def test_weights_must_be_a_regular_file(tmp_path):
    folder = card_folder(tmp_path, architecture={"channels": [4, 8], "strides": [2, 2], "num_res_units": 1})
    os.mkfifo(folder / "weights.safetensors")
    with pytest.raises(ModelError, match="weights file is not a regular file"):
        load_model(folder, "cpu")


def test_any_error_while_building_becomes_one_model_error(tmp_path, monkeypatch, capsys):
    from napari_brainuad.models.families.ae import AutoEncoderModel

    def no_memory(*args):
        raise MemoryError()
    monkeypatch.setattr(AutoEncoderModel, "make_network", staticmethod(no_memory))
    folder = card_folder(tmp_path)
    with pytest.raises(ModelError, match="cannot be built \\(MemoryError\\)"):
        load_model(folder, "cpu")
    assert main(["detect", str(tmp_path / "x.nii.gz"), "--model", str(folder), "--out", str(tmp_path / "o")]) == 2
    assert one_sentence(capsys.readouterr().err)


# ---- 7. scans that do not suit the model ----------------------------------------------------

def phantom_volume(data=None, **header) -> Volume:
    img = phantom_scan()
    for key, code in header.items():
        getattr(img, f"set_{key}")(img.affine, code=code)
    vol = Volume(img.get_fdata().astype(np.float32) if data is None else data, img.affine, img.header, Path("p.nii.gz"))
    return vol


def test_a_healthy_looking_t1_gets_no_warning():
    result = detect(phantom_volume(), load_model("intensity-t1", "cpu"), register=False)
    assert result.warnings == []


def test_noise_other_contrast_partial_coverage_and_no_orientation_are_warned(tmp_path):
    model = load_model("intensity-t1", "cpu")
    brain = phantom_volume().data
    rng = np.random.default_rng(0)
    from scipy import ndimage
    noise = ndimage.gaussian_filter(rng.standard_normal(brain.shape), 2).astype(np.float32)
    cases = {
        "does not look like a brain": np.where(brain > 0, noise - noise.min() + 1, 0).astype(np.float32),
        "contrast looks like T2, not the T1": np.where(brain > 0, brain.max() - brain + 50, 0).astype(np.float32),
    }
    for expected, data in cases.items():
        result = detect(phantom_volume(data), model, register=False)
        assert any(expected in w for w in result.warnings), result.warnings
    affine = phantom_volume().affine
    z = (np.indices(brain.shape).reshape(3, -1).T @ affine[:3, :3].T + affine[:3, 3])[:, 2].reshape(brain.shape)
    slab = detect(phantom_volume(np.where(abs(z - 10) < 20, brain, 0).astype(np.float32)), model, register=False)
    assert any("covers only" in w and "of the template brain" in w for w in slab.warnings), slab.warnings
    bare = detect(phantom_volume(qform=0, sform=0), model, register=False)
    assert any("no orientation" in w for w in bare.warnings), bare.warnings


def test_warnings_reach_the_command_line_and_the_summary(tmp_path, capsys):
    brain = phantom_scan()
    data = brain.get_fdata().astype(np.float32)
    save(nib.Nifti1Image(np.where(data > 0, data.max() - data + 50, 0).astype(np.float32), brain.affine),
         tmp_path / "in" / "flairish.nii.gz")
    assert main(["detect", str(tmp_path / "in" / "flairish.nii.gz"), "--out", str(tmp_path / "o1"), *FAST]) == 0
    assert "warning: " in capsys.readouterr().err
    assert main(["batch", str(tmp_path / "in"), "--out", str(tmp_path / "o2"), *FAST]) == 0
    assert "warning: " in capsys.readouterr().err
    with open(tmp_path / "o2" / "summary.csv", newline="") as f:
        assert "looks like T2" in next(csv.DictReader(f))["warnings"]


# ---- 8. smaller ---------------------------------------------------------------------------

@pytest.mark.parametrize("option", [["--threshold", "0"], ["--threshold", "-1"], ["--threshold", "nan"],
                                    ["--threshold", "inf"], ["--t-int", "250"], ["--device", "tpu"],
                                    ["--min-volume", "nan"]])
def test_options_are_refused_before_reading_the_scan(tmp_path, capsys, no_read, option):
    assert main(["detect", str(tmp_path / "x.nii.gz"), "--model", "intensity-t1", "--out", str(tmp_path / "o"),
                 *option]) == 2
    err = capsys.readouterr().err
    assert one_sentence(err) and any(word in err for word in ("threshold", "device", "t_int", "minimum volume"))


def test_misspelt_model_gets_a_suggestion(tmp_path, capsys):
    assert main(["detect", "x.nii.gz", "--model", "intensty-t1", "--out", str(tmp_path / "o")]) == 2
    assert "did you mean intensity-t1?" in capsys.readouterr().err


def test_rgb_complex_and_link_loops_are_named(tmp_path):
    rgb = np.zeros((10, 10, 10), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "rgb.nii")
    nib.save(nib.Nifti1Image((np.random.rand(10, 10, 10) + 1j).astype(np.complex64), np.eye(4)), tmp_path / "c.nii")
    (tmp_path / "loop.nii.gz").symlink_to(tmp_path / "loop.nii.gz")
    (tmp_path / "broken.nii.gz").symlink_to(tmp_path / "gone.nii.gz")
    for name, message in [("rgb.nii", "RGB"), ("c.nii", "complex"), ("loop.nii.gz", "symbolic link loop"),
                          ("broken.nii.gz", "broken symbolic link")]:
        with pytest.raises(InputError, match=message):
            read_volume(tmp_path / name)


@pytest.mark.parametrize("qform, sform", [(0, 0), (1, 4), (2, 0), (0, 3)])
def test_outputs_keep_the_inputs_orientation_codes(tmp_path, qform, sform):
    img = phantom_scan(step=3)
    img.set_qform(img.affine, code=qform)
    img.set_sform(img.affine, code=sform)
    scan = save(img, tmp_path / "scan.nii.gz")
    assert main(["detect", str(scan), "--out", str(tmp_path / "o"), *FAST]) == 0
    out = nib.load(tmp_path / "o" / "scan_anomaly.nii.gz")
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (qform, sform)
    np.testing.assert_allclose(out.affine, nib.load(scan).affine, atol=1e-4)


def test_wrong_shape_brain_mask_names_the_mask(tmp_path, capsys):
    scan = save(phantom_scan(), tmp_path / "scan.nii.gz")
    mask = save(phantom_scan(step=3), tmp_path / "brainmask.nii.gz")
    assert main(["detect", str(scan), "--brain-mask", str(mask), "--out", str(tmp_path / "o"), *FAST]) == 2
    err = capsys.readouterr().err
    assert one_sentence(err) and err.startswith(f"error: {mask}: brain mask shape")


def test_resume_refuses_a_different_model_folder_with_the_same_name(tmp_path):
    save(phantom_scan(step=3), tmp_path / "in" / "a.nii.gz")
    folder = tmp_path / "m"
    folder.mkdir()
    card = dict(find_card("ae-t1").data, name="mine", normative=None,
                architecture={"channels": [4, 8], "strides": [2, 2], "num_res_units": 1},
                scoring={"shift": 0, "normative": False})
    (folder / "card.json").write_text(json.dumps(card))
    net = build_network("ae", card["architecture"])
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, folder / "weights.safetensors")
    batch(tmp_path / "in", tmp_path / "out", load_model(folder, "cpu"), register=False)
    retrained = build_network("ae", card["architecture"])
    save_file({k: v.contiguous() for k, v in retrained.state_dict().items()}, folder / "weights.safetensors")
    with pytest.raises(InputError, match="weights_sha256"):
        batch(tmp_path / "in", tmp_path / "out", load_model(folder, "cpu"), register=False)
    (folder / "card.json").write_text(json.dumps(dict(card, threshold=card["threshold"] * 2)))
    with pytest.raises(InputError, match="card_threshold"):
        batch(tmp_path / "in", tmp_path / "out", load_model(folder, "cpu"), register=False)
