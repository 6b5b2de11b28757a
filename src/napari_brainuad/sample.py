"""The bundled sample: MSLUB patient26 (multiple sclerosis), T1 and consensus lesion mask, CC BY."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

SAMPLE_MODEL = "dae-t1"
"""Model the demo runs by default."""
_FILES = {"T1": "mslub_patient26_T1.nii.gz", "lesions": "mslub_patient26_lesions.nii.gz"}


def sample_path(kind: str = "T1") -> Path:
    """Path of the bundled sample ``"T1"`` scan or its ``"lesions"`` mask."""
    return Path(str(files("napari_brainuad") / "data" / _FILES[kind]))
