"""The engine and the CLI work without napari, Qt or magicgui installed (issue: headless cluster nodes)."""
from __future__ import annotations

import subprocess
import sys

import nibabel as nib

from conftest import phantom_scan

BLOCK_GUI = """
import sys
class _NoGui:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'napari', 'qtpy', 'magicgui', 'superqt', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'vispy'}:
            raise ImportError(f'{name} is not installed (headless test)')
sys.meta_path.insert(0, _NoGui())
from napari_brainuad.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_cli_detect_runs_without_any_gui_package(tmp_path):
    scan = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(phantom_scan(), scan)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", BLOCK_GUI, "detect", str(scan), "--model", "intensity-t1",
                           "--out", str(out), "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (out / "sub-01_T1w_mask.nii.gz").exists()
