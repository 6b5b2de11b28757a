"""The bundled samples: a chronic stroke T1 (MIT; the demo's scan) and MSLUB patient26 (MS) T1 with its lesion mask (CC BY)."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

SAMPLE_MODEL = "restore-t1"
"""Model the demo and the widgets pick by default."""
_FILES = {"stroke T1": "stroke_T1.nii.gz", "MSLUB T1": "mslub_patient26_T1.nii.gz",
          "MSLUB FLAIR": "mslub_patient26_FLAIR.nii.gz", "MSLUB lesions": "mslub_patient26_lesions.nii.gz"}
DEMO_SAMPLE = "stroke T1"
"""The scan ``brainuad demo`` runs: a chronic stroke in the left hemisphere, T1, brain-extracted."""


def sample_path(kind: str = DEMO_SAMPLE) -> Path:
    """Path of a bundled sample file: ``"stroke T1"``, ``"MSLUB T1"``, ``"MSLUB FLAIR"`` or ``"MSLUB lesions"``."""
    return Path(str(files("napari_brainuad") / "data" / _FILES[kind]))
