"""The model grid: MNI152 (2009 symmetric, from nilearn) at 2 mm, RAS.

Every bundled model works on this one grid; its card records ``template``, ``grid_shape`` and
``spacing_mm``. Tests build small synthetic :class:`Template` objects instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

MNI_NAME = "MNI152NLin2009cSym"
MNI_SHAPE = (96, 112, 96)
"""Grid shape (voxels): the nilearn 2 mm template (99, 117, 95) cropped/padded to multiples of 16."""
MNI_START = (2, 3, 0)
"""Template voxel at grid voxel (0, 0, 0); keeps the whole brain mask inside the grid."""


class AffineGrid:
    """Geometry read off an ``affine`` attribute ((4, 4) voxel-to-world matrix, mm)."""

    affine: np.ndarray

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along each array axis, mm."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])) / 1000.0)


@dataclass(frozen=True, eq=False)
class Template(AffineGrid):
    """A fixed image grid that preprocessing registers to and models run on.

    Attributes
    ----------
    image : (X, Y, Z) float32 skull-stripped template in [0, 1].
    mask : (X, Y, Z) bool brain mask.
    affine : (4, 4) voxel-to-world RAS matrix (mm).
    name : identifier written in model cards.
    """

    image: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    name: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape)


@lru_cache(maxsize=1)
def mni152() -> Template:
    """The MNI152 2 mm template and brain mask, loaded offline from nilearn's bundled files."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    img = load_mni152_template(resolution=2)
    mask = load_mni152_brain_mask(resolution=2)
    image = _crop(np.asarray(img.get_fdata(dtype=np.float32)))
    brain = _crop(np.asarray(mask.dataobj) > 0)
    affine = img.affine.copy()
    affine[:3, 3] = (img.affine @ np.array([*MNI_START, 1.0]))[:3]
    return Template(image=image * brain, mask=brain, affine=affine, name=MNI_NAME)


@lru_cache(maxsize=1)
def mni152_tissue_priors() -> np.ndarray:
    """(3, X, Y, Z) float32 CSF, grey and white matter probabilities on the model grid (MNI152 2009, 2 mm).

    Grey and white matter are nilearn's bundled MNI152 tissue templates (offline, same grid as the
    template); CSF is what the brain mask leaves: ``mask - GM - WM`` clipped to [0, 1]. Zero outside the mask.
    """
    from nilearn.datasets import load_mni152_gm_template, load_mni152_wm_template

    brain = mni152().mask.astype(np.float32)
    gm = _crop(np.asarray(load_mni152_gm_template(resolution=2).get_fdata(dtype=np.float32))) * brain
    wm = _crop(np.asarray(load_mni152_wm_template(resolution=2).get_fdata(dtype=np.float32))) * brain
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    return np.stack([csf, gm, wm]).astype(np.float32)


def _crop(a: np.ndarray) -> np.ndarray:
    out = np.zeros(MNI_SHAPE, dtype=a.dtype)
    src = tuple(slice(s, min(s + n, d)) for s, n, d in zip(MNI_START, MNI_SHAPE, a.shape))
    dst = tuple(slice(0, sl.stop - sl.start) for sl in src)
    out[dst] = a[src]
    return out
