"""Property-based fuzzing of the reader: any bytes give a Volume or one InputError sentence, nothing else."""
import gzip
import io

import nibabel as nib
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_brainuad.io import InputError, Volume, read_volume


def valid_nifti_bytes() -> bytes:
    img = nib.Nifti1Image(np.arange(10 * 10 * 10, dtype=np.float32).reshape(10, 10, 10), np.eye(4))
    buffer = io.BytesIO()
    file_map = nib.Nifti1Image.make_file_map({"image": buffer, "header": buffer})
    img.to_file_map(file_map)
    return buffer.getvalue()


VALID = valid_nifti_bytes()


def check(path):
    try:
        volume = read_volume(path)
    except InputError as exc:
        text = str(exc)
        assert str(path) in text and "\n" not in text
        return
    assert isinstance(volume, Volume) and volume.data.ndim == 3 and np.isfinite(volume.data).all()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048))
def test_random_bytes(tmp_path, data):
    path = tmp_path / "random.nii.gz"
    path.write_bytes(data)
    check(path)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(0, len(VALID) - 1), value=st.integers(0, 255), cut=st.integers(1, len(VALID)),
       compress=st.booleans())
def test_mutated_valid_file(tmp_path, offset, value, cut, compress):
    data = bytearray(VALID)
    data[offset] = value
    data = bytes(data[:cut])
    path = tmp_path / ("mutated.nii.gz" if compress else "mutated.nii")
    path.write_bytes(gzip.compress(data) if compress else data)
    check(path)
