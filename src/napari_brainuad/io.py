"""Reading and writing brain volumes (NIfTI, MGZ) with nibabel.

A :class:`Volume` is a 3D float32 array with the 4x4 voxel-to-world (RAS, mm) affine and the
source header. Every reader check ends in one :class:`InputError` sentence that names the file.
"""
from __future__ import annotations

import errno
import gzip
import glob
import os
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from .template import AffineGrid

SUFFIXES = (".nii", ".nii.gz", ".mgz")
MAX_VOXELS = 600**3
"""Largest volume accepted (voxels); refused from the header, before any allocation."""
MIN_SIDE = 8
"""Smallest accepted side length (voxels); thinner images are treated as 2D."""


class InputError(ValueError):
    """A bad input file; ``str(error)`` is one sentence naming the file and the problem."""


class OutputError(ValueError):
    """Outputs that cannot be written; ``str(error)`` is one sentence naming the folder or file and the problem."""


@dataclass
class Volume(AffineGrid):
    """A 3D image on its own grid.

    Attributes
    ----------
    data : (X, Y, Z) float32 array in the file's voxel order.
    affine : (4, 4) float64 voxel-to-world matrix, RAS+ millimetres.
    header : the source nibabel header (None for arrays made in memory).
    path : where it was read from, if anywhere.
    """

    data: np.ndarray
    affine: np.ndarray
    header: object = None
    path: Path | None = None
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)

    @property
    def name(self) -> str:
        return stem(self.path) if self.path is not None else "volume"


def stem(path: str | os.PathLike) -> str:
    """File name without its image suffix (``sub-01_T1w.nii.gz`` -> ``sub-01_T1w``)."""
    name = Path(path).name
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def is_image_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(SUFFIXES)


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a 3D NIfTI or MGZ file into a validated :class:`Volume`.

    A 4D file with a single volume is accepted and squeezed. Raises :class:`InputError` for a
    missing, unreadable, truncated, non-3D, oversized, empty, constant or non-finite image, or
    one whose affine is singular or sheared.
    """
    path = Path(path)
    _check_exists(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an image file.")
    if not is_image_path(path):
        raise InputError(f"{path}: not a NIfTI or MGZ file (expected {', '.join(SUFFIXES)}).")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for corrupt headers
        raise InputError(f"{path}: cannot be read as an image ({_reason(exc)}).") from None
    shape = tuple(int(s) for s in img.shape)
    _check_shape(path, shape)
    dtype = img.get_data_dtype()
    if dtype.names is not None:
        raise InputError(f"{path}: is an RGB (colour) image; a greyscale 3D scan is needed.")
    if dtype.kind == "c":
        raise InputError(f"{path}: holds complex values; give the magnitude image.")
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:
        raise InputError(f"{path}: image data is truncated or unreadable ({_reason(exc)}).") from None
    data = data.reshape(shape[:3])
    affine = np.asarray(img.affine, dtype=np.float64)
    check_volume(data, affine, path)
    return Volume(data=data, affine=affine, header=img.header, path=path)


def _check_exists(path: Path) -> None:
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{path}: is a symbolic link loop.") from None
        if os.path.islink(path):
            raise InputError(f"{path}: is a broken symbolic link (its target does not exist).") from None
        if exc.errno == errno.ENOENT:
            raise InputError(f"{path}: no such file.") from None
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc}).") from None


def has_orientation(volume: Volume) -> bool:
    """False for a NIfTI whose qform and sform codes are both 0 (its left-right is a guess)."""
    header = volume.header
    if not isinstance(header, nib.Nifti1Header):
        return True
    return bool(int(header["qform_code"]) or int(header["sform_code"]))


def _reason(exc: Exception) -> str:
    if isinstance(exc, (EOFError, gzip.BadGzipFile, zlib.error)):
        return "compressed stream is truncated or corrupt"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160].rstrip(".")


def _check_shape(path: Path, shape: tuple[int, ...]) -> None:
    if any(s == 0 for s in shape):
        raise InputError(f"{path}: is empty (shape {shape}).")
    if len(shape) < 3 or (sum(s == 1 for s in shape[:3]) == 1 and len(shape) == 3):
        raise InputError(f"{path}: is a 2D image (shape {shape}); a 3D volume is needed.")
    if len(shape) > 3 and int(np.prod(shape[3:])) != 1:
        raise InputError(
            f"{path}: holds {int(np.prod(shape[3:]))} volumes (shape {shape}); give one 3D volume."
        )
    if min(shape[:3]) < MIN_SIDE:
        raise InputError(f"{path}: is too small (shape {shape[:3]}; each side needs >= {MIN_SIDE} voxels).")
    n = int(np.prod(shape[:3], dtype=np.int64))
    if n > MAX_VOXELS:
        raise InputError(f"{path}: is too large ({n:,} voxels, shape {shape[:3]}; limit {MAX_VOXELS:,}).")


def check_volume(data: np.ndarray, affine: np.ndarray, path: object = "volume") -> None:
    """Raise :class:`InputError` unless ``data`` is a finite, non-constant 3D image with a usable affine."""
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3D array, got shape {data.shape}.")
    _check_shape(Path(str(path)), data.shape)
    finite = np.isfinite(data)
    if not finite.all():
        raise InputError(f"{path}: contains {int((~finite).sum()):,} NaN or infinite voxels.")
    if float(data.max()) == float(data.min()):
        raise InputError(f"{path}: is constant (every voxel is {float(data.min()):g}); nothing to analyse.")
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise InputError(f"{path}: has a missing or non-finite affine.")
    lin = affine[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    if abs(np.linalg.det(lin)) < 1e-6 or spacing.min() < 1e-3:
        raise InputError(f"{path}: has a singular affine (zero voxel size or collapsed axes).")
    cosines = (lin / spacing).T @ (lin / spacing)
    if np.abs(cosines - np.eye(3)).max() > 1e-3:
        raise InputError(f"{path}: has a sheared affine (voxel axes not orthogonal); resample it first.")


def write_volume(path: str | os.PathLike, data: np.ndarray, like: Volume, dtype=np.float32) -> Path:
    """Write ``data`` as NIfTI on the grid of ``like`` (same affine), atomically.

    The file appears complete or not at all: it is written to a temporary name in the target
    folder and renamed. Refuses to overwrite the file ``like`` was read from.
    """
    path = Path(path)
    if data.shape != like.shape:
        raise ValueError(f"{path}: data shape {data.shape} differs from the reference grid {like.shape}.")
    if like.path is not None and path.resolve() == Path(like.path).resolve():
        raise InputError(f"{path}: refusing to overwrite the input file.")
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), like.affine)
    img.header.set_xyzt_units("mm", "sec")
    # Keep the input's orientation codes (0 too: an image without orientation stays without one).
    nifti = isinstance(like.header, nib.Nifti1Header)
    img.set_qform(like.affine, code=int(like.header["qform_code"]) if nifti else 1)
    img.set_sform(like.affine, code=int(like.header["sform_code"]) if nifti else 1)
    atomic_write(path, lambda tmp: nib.save(img, tmp))
    return path


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` to ``path``; no partial file survives."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(Path(path).suffixes[-2:]) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: Path, names) -> list[Path]:
    """Delete what :func:`atomic_write` left in ``folder`` for the given final file names when a
    process was killed mid-write (``.<name>.<random><suffix>``); returns the removed paths."""
    removed = []
    for name in names:
        for path in Path(folder).glob(f".{glob.escape(name)}.*"):
            if path.is_file() and path.name.endswith("".join(Path(name).suffixes[-2:]) or ".tmp"):
                path.unlink()
                removed.append(path)
    return removed


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
