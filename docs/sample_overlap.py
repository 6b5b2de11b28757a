"""How a `brainuad detect` mask sits on an expert lesion mask, as the README reports it for the MSLUB samples.

    .venv/bin/python docs/sample_overlap.py src/napari_brainuad/data/mslub_patient26_FLAIR.nii.gz \
        src/napari_brainuad/data/mslub_patient26_lesions.nii.gz --model restore-any --contrast FLAIR

Runs ``brainuad detect`` (the README's command) into a temporary folder, then prints the flagged volume,
its findings (26-connected), how much of it lies on the expert mask, how many findings touch a lesion,
and the Dice of the two masks, all on the scan's own grid.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from napari_brainuad.metrics import dice


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scan", type=Path)
    p.add_argument("truth", type=Path, help="expert lesion mask on the scan's grid")
    p.add_argument("--model", required=True)
    p.add_argument("--contrast")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as out:
        brainuad = Path(sys.executable).with_name("brainuad")  # the console script installed beside this Python
        command = [str(brainuad), "detect", str(args.scan), "--model", args.model, "--out", out] + \
            (["--contrast", args.contrast] if args.contrast else [])
        subprocess.run(command, check=True)
        stem = args.scan.name.split(".")[0]
        image = nib.load(Path(out) / f"{stem}_mask.nii.gz")
        mask = np.asarray(image.dataobj) > 0
    truth = np.asarray(nib.load(args.truth).dataobj) > 0
    ml = abs(np.linalg.det(image.affine[:3, :3])) / 1000
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    touching = len(np.unique(labels[truth & mask]))
    print(f"{mask.sum() * ml:.2f} ml flagged in {n} findings, {(mask & truth).sum() * ml:.2f} ml of it on the expert "
          f"lesions ({truth.sum() * ml:.1f} ml in all), {touching} of the {n} findings touching one, "
          f"Dice {dice(mask, truth):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
