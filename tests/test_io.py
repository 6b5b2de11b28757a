"""Reading, validating and writing volumes (napari_brainuad.io) on tiny synthetic files."""
from __future__ import annotations

import gzip
import os
import stat
import time

import nibabel as nib
import numpy as np
import pytest

from napari_brainuad.io import (
    MAX_VOXELS,
    InputError,
    Volume,
    atomic_write,
    read_volume,
    stem,
    write_volume,
)

SHAPE = (12, 10, 9)


def oblique_affine() -> np.ndarray:
    """Rotation (about z and x) + a flip + non-isotropic spacing + an offset."""
    cz, sz = np.cos(np.deg2rad(20)), np.sin(np.deg2rad(20))
    cx, sx = np.cos(np.deg2rad(10)), np.sin(np.deg2rad(10))
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    flip = np.diag([-1.0, 1.0, 1.0])
    spacing = np.diag([0.9, 1.2, 2.5])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ flip @ spacing
    affine[:3, 3] = [-80.0, 12.5, 30.0]
    return affine


def random_data(shape=SHAPE, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(100.0, 20.0, shape).astype(np.float32)


def save_nifti(path, data, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return path


def files_in(folder) -> set[str]:
    return {p.name for p in folder.iterdir()}


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_round_trip(tmp_path, suffix):
    data, affine = random_data(), oblique_affine()
    src = save_nifti(tmp_path / f"in{suffix}", data, affine)

    vol = read_volume(src)
    assert vol.shape == SHAPE and vol.data.dtype == np.float32
    np.testing.assert_array_equal(vol.data, data)
    assert np.allclose(vol.affine, affine, atol=1e-4)
    assert np.allclose(vol.spacing, [0.9, 1.2, 2.5], atol=1e-5)
    assert vol.voxel_volume_ml == pytest.approx(0.9 * 1.2 * 2.5 / 1000, rel=1e-5)
    assert vol.name == "in" and vol.path == src

    out = write_volume(tmp_path / "out.nii.gz", vol.data, like=vol)
    back = read_volume(out)
    np.testing.assert_array_equal(back.data, vol.data)
    assert np.allclose(back.affine, vol.affine, atol=1e-5)
    # the qform (used by readers that ignore the sform) describes the same grid
    assert np.allclose(nib.load(str(out)).get_qform(), vol.affine, atol=1e-4)
    assert files_in(tmp_path) == {f"in{suffix}", "out.nii.gz"}


def test_mgz_read_and_write_as_nifti(tmp_path):
    data, affine = random_data(seed=1), oblique_affine()
    src = tmp_path / "brain.mgz"
    nib.save(nib.MGHImage(data, affine), str(src))

    vol = read_volume(src)
    np.testing.assert_array_equal(vol.data, data)
    assert np.allclose(vol.affine, affine, atol=1e-4)
    assert vol.name == "brain"

    out = write_volume(tmp_path / "map.nii.gz", vol.data * 2, like=vol)
    back = read_volume(out)
    np.testing.assert_array_equal(back.data, data * 2)
    assert np.allclose(back.affine, vol.affine, atol=1e-5)


def test_write_volume_for_in_memory_volume(tmp_path):
    vol = Volume(random_data(), oblique_affine())
    out = write_volume(tmp_path / "sub" / "mask.nii.gz", (vol.data > 100).astype(np.uint8), like=vol, dtype=np.uint8)
    img = nib.load(str(out))
    assert img.get_data_dtype() == np.uint8
    assert np.allclose(img.affine, vol.affine, atol=1e-5)


def test_stem():
    assert stem("a/sub-01_T1w.nii.gz") == "sub-01_T1w"
    assert stem("x.NII") == "x"
    assert stem("brain.mgz") == "brain"


# --- writing safely -----------------------------------------------------------------------------


def test_write_refuses_to_overwrite_input(tmp_path):
    src = save_nifti(tmp_path / "scan.nii.gz", random_data(), oblique_affine())
    before = src.read_bytes()
    vol = read_volume(src)
    (tmp_path / "sub").mkdir()
    for target in (src, tmp_path / "sub" / ".." / "scan.nii.gz"):
        with pytest.raises(InputError, match="overwrite"):
            write_volume(target, vol.data + 1, like=vol)
    assert src.read_bytes() == before
    assert files_in(tmp_path) == {"scan.nii.gz", "sub"}


def test_write_shape_mismatch(tmp_path):
    vol = Volume(random_data(), np.eye(4))
    with pytest.raises(ValueError, match="shape"):
        write_volume(tmp_path / "x.nii.gz", np.zeros((3, 3, 3), np.float32), like=vol)
    assert files_in(tmp_path) == set()


def test_written_file_has_normal_permissions(tmp_path):
    out = write_volume(tmp_path / "x.nii.gz", random_data(), like=Volume(random_data(), np.eye(4)))
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask


def test_atomic_write_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out.nii.gz"

    def fail(tmp):
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, fail)
    assert files_in(tmp_path) == set()

    # an existing file survives a failed rewrite untouched
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert files_in(tmp_path) == {"out.nii.gz"}

    # interrupted (KeyboardInterrupt is a BaseException) cleans up too
    def interrupt(tmp):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(tmp_path / "other.nii"), interrupt)
    assert files_in(tmp_path) == {"out.nii.gz"}


def test_atomic_write_success(tmp_path):
    atomic_write(tmp_path / "a.txt", lambda tmp: open(tmp, "w").write("hello"))
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert files_in(tmp_path) == {"a.txt"}


# --- bad inputs ---------------------------------------------------------------------------------


def assert_input_error(path, match: str | None = None) -> InputError:
    with pytest.raises(InputError) as info:
        read_volume(path)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message and message.endswith(".")
    if match is not None:
        assert match in message.lower(), message
    return info.value


def _missing(tmp_path):
    return tmp_path / "missing.nii.gz"


def _directory(tmp_path):
    path = tmp_path / "folder.nii.gz"
    path.mkdir()
    return path


def _txt(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    return path


def _random_bytes(suffix):
    def make(tmp_path):
        path = tmp_path / f"noise{suffix}"
        path.write_bytes(np.random.default_rng(3).bytes(2000))
        return path

    return make


def _empty_file(tmp_path):
    path = tmp_path / "empty.nii.gz"
    path.write_bytes(b"")
    return path


def _truncated_gzip(fraction):
    def make(tmp_path):
        good = save_nifti(tmp_path / "good.nii.gz", random_data((16, 16, 16)))
        raw = good.read_bytes()
        path = tmp_path / "cut.nii.gz"
        path.write_bytes(raw[: int(len(raw) * fraction)])
        return path

    return make


def _short_nii(tmp_path):
    good = save_nifti(tmp_path / "good.nii", random_data((16, 16, 16)))
    raw = good.read_bytes()
    path = tmp_path / "short.nii"
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _array(name, data, affine=None):
    def make(tmp_path):
        return save_nifti(tmp_path / name, data, affine)

    return make


def _with_voxel(value):
    data = random_data()
    data[3, 4, 5] = value
    return data


def _singular(tmp_path):
    """A zero column in the sform (nibabel cannot even build a qform from it)."""
    affine = np.diag([2.0, 0.0, 2.0, 1.0])
    img = nib.Nifti1Image(random_data(), np.eye(4))
    img.header.set_sform(affine, code=2)
    img.header.set_qform(None, code=0)
    path = tmp_path / "singular.nii.gz"
    nib.Nifti1Image(img.get_fdata(dtype=np.float32), None, img.header).to_filename(str(path))
    assert np.allclose(nib.load(str(path)).affine, affine)
    return path


def _sheared(tmp_path):
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[0, 1] = 0.5
    return save_nifti(tmp_path / "sheared.nii.gz", random_data(), affine)


BAD_INPUTS = {
    "missing": (_missing, "no such file"),
    "directory": (_directory, "directory"),
    "wrong extension": (_txt, "not a nifti or mgz"),
    "random bytes .nii.gz": (_random_bytes(".nii.gz"), "cannot be read"),
    "random bytes .nii": (_random_bytes(".nii"), "cannot be read"),
    "random bytes .mgz": (_random_bytes(".mgz"), "cannot be read"),
    "empty file": (_empty_file, None),
    "truncated gzip (half)": (_truncated_gzip(0.5), "truncated"),
    "truncated gzip (inside header)": (_truncated_gzip(0.01), None),
    "short data": (_short_nii, "truncated"),
    "2D": (_array("flat.nii.gz", random_data((32, 32))), "2d"),
    "2D with a singleton axis": (_array("flat1.nii.gz", random_data((32, 32, 1))), "2d"),
    "4D, 3 volumes": (_array("series.nii.gz", random_data((12, 10, 9, 3))), "3 volumes"),
    "0-sized": (_array("zero.nii.gz", np.zeros((0, 10, 9), np.float32)), "empty"),
    "1 voxel": (_array("one.nii.gz", np.ones((1, 1, 1), np.float32)), "too small"),
    "thin slab": (_array("slab.nii.gz", random_data((32, 32, 3))), "too small"),
    "all zero": (_array("zeros.nii.gz", np.zeros(SHAPE, np.float32)), "constant"),
    "constant": (_array("sevens.nii.gz", np.full(SHAPE, 7, np.int16)), "constant"),
    "NaN": (_array("nan.nii.gz", _with_voxel(np.nan)), "nan"),
    "Inf": (_array("inf.nii.gz", _with_voxel(-np.inf)), "infinite"),
    "singular affine": (_singular, "singular"),
    "sheared affine": (_sheared, "sheared"),
}


@pytest.mark.parametrize("make, match", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input(tmp_path, make, match):
    assert_input_error(make(tmp_path), match)


def test_4d_single_volume_is_squeezed(tmp_path):
    data = random_data((12, 10, 9, 1))
    vol = read_volume(save_nifti(tmp_path / "one.nii.gz", data, oblique_affine()))
    assert vol.shape == (12, 10, 9) and vol.data.ndim == 3
    np.testing.assert_array_equal(vol.data, data[..., 0])


def test_integer_data_with_scaling_is_read_as_float(tmp_path):
    img = nib.Nifti1Image(np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE), np.eye(4))
    img.header.set_slope_inter(0.5, 10.0)
    path = tmp_path / "scaled.nii"
    img.to_filename(str(path))
    vol = read_volume(path)
    assert vol.data.dtype == np.float32
    assert vol.data[0, 0, 0] == 10.0 and vol.data[0, 0, 1] == 10.5


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_huge_header_refused_without_allocating(tmp_path, suffix):
    header = nib.Nifti1Header()
    header.set_data_shape((1024, 1024, 1024))
    header.set_data_dtype(np.float32)
    header.set_sform(np.eye(4), code=1)
    payload = header.binaryblock + b"\0" * 4 + b"\0" * 64  # header, extension flag, a few data bytes
    path = tmp_path / f"huge{suffix}"
    if suffix.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    assert 1024**3 > MAX_VOXELS
    start = time.perf_counter()
    error = assert_input_error(path, "too large")
    assert time.perf_counter() - start < 1.0
    assert "1,073,741,824" in str(error)
