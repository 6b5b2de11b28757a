"""Shared fixtures: tiny synthetic scans made from nilearn's bundled MNI template (offline)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_brainuad.models import ModelError, load_model
from napari_brainuad.template import mni152

LESION_CENTRE_MM = np.array([28.0, -16.0, 42.0])
"""World position (RAS mm) of the dark lesion implanted in :func:`phantom_scan`."""


def phantom_scan(step: int = 2, lesion: bool = True) -> nib.Nifti1Image:
    """The skull-stripped MNI template at ``2 * step`` mm with an optional dark 10 mm-radius lesion.

    Stored in LPS voxel order (axes 0 and 1 flipped) so that orientation handling is exercised.
    """
    tpl = mni152()
    data = tpl.image[::step, ::step, ::step].astype(np.float32) * 1000.0
    affine = tpl.affine.copy()
    affine[:3, :3] *= step
    if lesion:
        ijk = np.indices(data.shape).reshape(3, -1).T
        world = ijk @ affine[:3, :3].T + affine[:3, 3]
        inside = (np.linalg.norm(world - LESION_CENTRE_MM, axis=1) < 10.0).reshape(data.shape)
        data[inside & (data > 0)] = 50.0
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = np.array(data.shape[:2]) - 1
    return nib.Nifti1Image(data[::-1, ::-1, :].copy(), affine @ flip)


def healthy_cache(folder: Path, pseudo_per_scan: int = 0) -> Path:
    """A training cache of five noisy copies of the template on the model grid (train 2, val 2, test 1),
    with ``pseudo_per_scan`` pseudo-pathological copies of each train scan (blobs and shapes only)."""
    tpl = mni152()
    rows = []
    for i, split in enumerate(["train", "train", "val", "val", "test"]):
        rng = np.random.default_rng(i)
        image = np.clip(tpl.image * (1 + 0.05 * rng.standard_normal(tpl.shape)), 0, 1).astype(np.float32)
        np.savez_compressed(folder / f"sub{i}.npz", image=image * tpl.mask, mask=tpl.mask)
        rows.append({"subject": f"sub{i}", "file": f"sub{i}.nii.gz", "split": split})
    with open(folder / "splits.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["subject", "file", "split"])
        writer.writeheader()
        writer.writerows(rows)
    if pseudo_per_scan:
        from training.prepare import write_pseudo

        for i, row in enumerate(r for r in rows if r["split"] == "train"):
            write_pseudo(folder, row["subject"], pseudo_per_scan, [], [0, i])
    return folder


def labelled_cache(folder: Path) -> Path:
    """:func:`healthy_cache` with tissue and anatomical label maps beside each scan (by template intensity)."""
    healthy_cache(folder)
    tpl = mni152()
    q = np.quantile(tpl.image[tpl.mask], [0.2, 0.6])
    tissues = (np.digitize(tpl.image, q) + 1) * tpl.mask
    labels = tissues * 10 + (np.indices(tpl.shape)[0] > 48) * tpl.mask
    for path in folder.glob("sub*.npz"):
        with np.load(path) as z:
            image, mask = z["image"], z["mask"]
        np.savez_compressed(path, image=image, mask=mask, labels=labels.astype(np.int16),
                            tissues=tissues.astype(np.int16))
    return folder


def export_run(run: Path, folder: Path, cache: Path) -> None:
    """``python -m training export RUN --to FOLDER --cache CACHE`` on the CPU, every calibration option at its default."""
    from training.__main__ import main as training

    assert training(["export", str(run), "--to", str(folder), "--cache", str(cache), "--device", "cpu"]) == 0


def near_lesion(findings, tolerance_mm: float = 6.0):
    """The findings whose centroid lies within ``tolerance_mm`` of the implanted lesion."""
    return [f for f in findings if np.linalg.norm(np.array(f.centroid_mm) - LESION_CENTRE_MM) < tolerance_mm]


@pytest.fixture
def phantom_path(tmp_path):
    path = tmp_path / "in" / "sub-01_T1w.nii.gz"
    path.parent.mkdir()
    nib.save(phantom_scan(), path)
    return path


def assert_hostile_card_refused(data: dict, change: dict, message: str, folder: Path) -> None:
    """A card whose ``architecture`` gets ``change`` (None deletes a key) is refused on loading with one
    sentence matching ``message``."""
    data["architecture"].update(change)
    data["architecture"] = {k: v for k, v in data["architecture"].items() if v is not None}
    data["weights"] = "weights.safetensors"
    (folder / "card.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match=message) as error:
        load_model(folder, "cpu")
    assert "\n" not in str(error.value) and str(error.value).endswith(".")
