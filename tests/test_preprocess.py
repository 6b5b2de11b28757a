"""Preprocessing into the model grid and back (napari_brainuad.preprocess) on a synthetic template."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from napari_brainuad import preprocess as pp
from napari_brainuad.io import InputError, Volume
from napari_brainuad.preprocess import normalise_intensity, preprocess
from napari_brainuad.progress import Step, run
from napari_brainuad.template import Template

TPL_SHAPE = (32, 40, 32)
SPACING = 2.0


def grid_affine(shape, spacing=SPACING) -> np.ndarray:
    """RAS affine of a grid centred on the world origin."""
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2 * spacing
    return affine


def world_coords(shape, affine) -> np.ndarray:
    """(3, X, Y, Z) world (RAS mm) position of every voxel."""
    idx = np.indices(shape).reshape(3, -1).astype(np.float64)
    return (affine[:3, :3] @ idx + affine[:3, 3:]).reshape(3, *shape)


def ellipsoid(xyz, centre, radii) -> np.ndarray:
    d = [(xyz[i] - centre[i]) / radii[i] for i in range(3)]
    return d[0] ** 2 + d[1] ** 2 + d[2] ** 2 <= 1.0


def phantom(xyz) -> tuple[np.ndarray, np.ndarray]:
    """Brain-like image and mask at world positions ``xyz``: an ellipsoid with asymmetric inner parts."""
    mask = ellipsoid(xyz, (0, 0, 0), (25, 33, 25))
    image = np.where(mask, 0.6, 0.0)
    image = np.where(ellipsoid(xyz, (9, 8, 3), (7, 10, 6)), 0.25, image)  # dark, right-anterior
    image = np.where(ellipsoid(xyz, (-8, -12, -5), (6, 7, 9)), 1.0, image)  # bright, left-posterior
    image = np.where(ellipsoid(xyz, (2, 18, 12), (4, 5, 4)), 0.85, image)  # small, anterior-superior
    return image, mask


@pytest.fixture(scope="module")
def tpl() -> Template:
    affine = grid_affine(TPL_SHAPE)
    image, mask = phantom(world_coords(TPL_SHAPE, affine))
    # smooth "tissue texture": without it the piecewise-constant phantom has local optima ~2 mm off
    texture = ndimage.gaussian_filter(np.random.default_rng(0).normal(size=TPL_SHAPE), 2.0)
    image = ndimage.gaussian_filter(image, 0.8) + 0.1 * texture / texture.std()
    image = np.clip(image, 0.05, None) * mask  # exact 0 outside the brain, > 0 inside
    return Template(image=image.astype(np.float32), mask=mask, affine=affine, name="phantom")


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def rotation_x(degrees) -> np.ndarray:
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def moved_native(tpl: Template, rotation, shift, shape=(40, 48, 40)):
    """The template phantom moved by ``x -> rotation @ x + shift`` (world, mm), sampled on a 2 mm grid."""
    affine = grid_affine(shape)
    affine[:3, 3] += [1.0, -3.0, 2.0]  # grid not centred on the template
    y = world_coords(shape, affine).reshape(3, -1)
    x = np.linalg.inv(rotation) @ (y - np.asarray(shift, float)[:, None])  # template world point
    inv = np.linalg.inv(tpl.affine)
    idx = (inv[:3, :3] @ x + inv[:3, 3:]).reshape(3, *shape)
    data = ndimage.map_coordinates(tpl.image, idx, order=1, cval=0.0).astype(np.float32)
    truth = ndimage.map_coordinates(tpl.mask.astype(np.float32), idx, order=1, cval=0.0) > 0.5
    # skull-stripped: exact 0 outside the moved brain; intensities on another scale than the template
    return Volume(data * truth * 200.0, affine), truth


def reordered_native(tpl: Template):
    """The template image stored in another voxel order and padded, with the affine of that storage.

    Array axis 0 is flipped and axes 1, 2 swapped; the grid is padded unevenly (an integer-voxel
    shift of both the data and the affine), so every voxel keeps its world position.
    """
    n0 = tpl.shape[0]
    data = np.flip(tpl.image, 0).transpose(0, 2, 1)  # native[k] = template[M k + c]
    perm = np.eye(4)
    perm[:3, :3] = [[-1, 0, 0], [0, 0, 1], [0, 1, 0]]
    perm[0, 3] = n0 - 1
    pad = np.array([(3, 5), (2, 4), (6, 1)])
    data = np.pad(data, pad)
    shift = np.eye(4)
    shift[:3, 3] = -pad[:, 0]
    affine = tpl.affine @ perm @ shift
    return Volume((data * 1000.0).astype(np.float32), affine)


def test_phantom_is_asymmetric(tpl):
    # orientation matters: no flip of the phantom matches itself
    for axis in range(3):
        assert not np.allclose(np.flip(tpl.image, axis), tpl.image, atol=0.1)


def test_exact_mapping_without_registration(tpl):
    native = reordered_native(tpl)
    # world positions agree: the native voxel holding template voxel (5, 7, 9) sits where it does
    k = np.linalg.solve(native.affine, tpl.affine @ np.array([5, 7, 9, 1.0]))[:3]
    assert np.allclose(k, np.round(k))
    assert native.data[tuple(np.round(k).astype(int))] == pytest.approx(tpl.image[5, 7, 9] * 1000.0)

    p = preprocess(native, template=tpl, skull_strip="off", register=False)
    assert p.skull_stripped is False
    assert p.image.shape == tpl.shape and p.image.dtype == np.float32
    assert p.native is native
    assert np.array_equal(p.mask, tpl.mask)
    np.testing.assert_allclose(p.image, normalise_intensity(tpl.image, tpl.mask), atol=1e-4)
    assert p.image.min() >= 0.0 and p.image.max() <= 1.0 and not p.image[~p.mask].any()

    native_mask = native.data > 0
    assert np.array_equal(p.native_mask, native_mask)
    back = p.to_native(p.image)
    assert back.shape == native.shape
    expected = normalise_intensity(native.data, native_mask)
    np.testing.assert_allclose(back[native_mask], expected[native_mask], atol=1e-4)

    mask_back = p.to_native(p.mask, "nearest")
    assert np.array_equal(mask_back > 0.5, native_mask)

    # and the other way: an array on the native grid lands on the template grid
    np.testing.assert_allclose(p.to_template(native.data), tpl.image * 1000.0, rtol=1e-5, atol=1e-2)
    assert np.array_equal(p.to_template(native_mask.astype(np.float32), "nearest") > 0.5, tpl.mask)


def test_registration_recovers_rigid_transform(tpl):
    rotation, shift = rotation_x(8.0), np.array([0.0, 6.0, -3.0])
    native, truth = moved_native(tpl, rotation, shift)

    p = preprocess(native, template=tpl, skull_strip="off", register=True)
    assert dice(p.mask, tpl.mask) > 0.9
    assert dice(p.to_native(p.mask, "nearest") > 0.5, p.native_mask) > 0.9
    # the template's own brain mask, carried to the native grid, lands on the moved brain
    assert dice(p.to_native(tpl.mask, "nearest") > 0.5, truth) > 0.9
    assert np.corrcoef(p.image[tpl.mask], normalise_intensity(tpl.image, tpl.mask)[tpl.mask])[0, 1] > 0.9

    # the transform (template -> native, LPS) matches the known one to well under a voxel in the brain
    lps = np.diag([-1.0, -1.0, 1.0])
    points = world_coords(tpl.shape, tpl.affine)[:, tpl.mask][:, ::20].T
    errors = [
        np.linalg.norm(np.array(p.transform.TransformPoint([float(v) for v in lps @ x])) - lps @ (rotation @ x + shift))
        for x in points
    ]
    assert np.mean(errors) < 0.5 * SPACING and np.max(errors) < SPACING, (np.mean(errors), np.max(errors))


def test_same_seed_repeats_exactly(tpl):
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    native, _ = moved_native(tpl, rotation_x(-5.0), [3.0, 0.0, 4.0])
    for kwargs in ({}, {"seed": 7}):  # the default seed (0) included
        first = preprocess(native, template=tpl, skull_strip="off", **kwargs)
        second = preprocess(native, template=tpl, skull_strip="off", **kwargs)
        assert first.transform.GetParameters() == second.transform.GetParameters()
        assert np.array_equal(first.image, second.image)
        assert np.array_equal(first.mask, second.mask)
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == threads  # restored after registering


def head_volume(tpl: Template, noise: bool, spacing: float = 2.0) -> Volume:
    """A whole head (> 3000 ml): the phantom brain inside soft tissue and a bright scalp shell."""
    shape = tuple(int(round(n)) for n in np.array([192, 232, 200]) / spacing)
    affine = grid_affine(shape, spacing)
    xyz = world_coords(shape, affine)
    brain, mask = phantom(xyz)
    head = ellipsoid(xyz, (0, 0, 0), (85, 105, 90))
    inner = ellipsoid(xyz, (0, 0, 0), (78, 98, 83))
    image = np.where(head, 0.9, 0.0)  # scalp / fat: bright
    image = np.where(inner, 0.3, image)  # soft tissue and skull
    image = np.where(mask, brain, image)
    if noise:
        rng = np.random.default_rng(7)
        sigma = 0.03
        image = np.hypot(image + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape))  # Rician
    head_ml = head.sum() * spacing**3 / 1000
    assert head_ml > 3000, head_ml
    return Volume((image * 1000).astype(np.float32), affine)


def test_looks_skull_stripped(tpl):
    stripped = Volume(tpl.image * 500.0, tpl.affine)
    assert pp.looks_skull_stripped(stripped)
    # a non-zero exact background (e.g. after a shift of intensities) is still a stripped scan
    assert pp.looks_skull_stripped(Volume(tpl.image * 500.0 + 20.0, tpl.affine))
    # the phantom moved onto another grid with linear interpolation keeps its exact-zero background
    native, _ = moved_native(tpl, rotation_x(8.0), [0.0, 6.0, 0.0])
    assert pp.looks_skull_stripped(native)


@pytest.mark.parametrize(
    "noise, spacing, rounded",
    [(True, 2.0, False), (True, 2.0, True), (False, 2.0, False), (True, 1.5, False)],
    ids=["rician", "rician-int", "clean-background", "rician-1.5mm"],
)
def test_head_does_not_look_skull_stripped(tpl, noise, spacing, rounded):
    head = head_volume(tpl, noise, spacing)
    if rounded:  # integer-valued scans: the background is a few repeated small values
        head = Volume(np.round(head.data), head.affine)
    assert not pp.looks_skull_stripped(head)


def test_skull_strip_on_uses_deepbet_mask(tpl, monkeypatch):
    native = reordered_native(tpl)
    fake = np.zeros(native.shape, bool)
    fake[8:28, 8:30, 6:38] = True  # a box: clearly not the foreground mask
    calls = []

    def fake_strip(volume, device="cpu"):
        calls.append((volume, device))
        return fake

    monkeypatch.setattr(pp, "strip_skull", fake_strip)
    steps = []
    p = run(pp.iter_preprocess(native, template=tpl, skull_strip="on", register=False, device="cpu"), steps.append)
    assert len(calls) == 1 and calls[0][0] is native and calls[0][1] == "cpu"
    assert p.skull_stripped is True
    assert np.array_equal(p.native_mask, fake)
    assert not p.image[~p.mask].any()
    assert any("skull" in s.stage for s in steps)
    assert all(isinstance(s, Step) for s in steps)
    fractions = [s.fraction for s in steps]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0

    # "off" and an explicit brain mask never call it
    calls.clear()
    assert preprocess(native, template=tpl, skull_strip="off", register=False).skull_stripped is False
    p = preprocess(native, template=tpl, skull_strip="on", register=False, brain_mask=fake)
    assert p.skull_stripped is False and np.array_equal(p.native_mask, fake)
    assert calls == []


def test_skull_strip_auto(tpl, monkeypatch):
    calls = []

    def fake_strip(volume, device="cpu"):
        calls.append(volume)
        return volume.data > 0  # never reached for a stripped scan

    monkeypatch.setattr(pp, "strip_skull", fake_strip)
    p = preprocess(reordered_native(tpl), template=tpl, skull_strip="auto", register=False)
    assert calls == [] and p.skull_stripped is False

    head = head_volume(tpl, noise=True)
    brain = np.zeros(head.shape, bool)
    brain[ellipsoid(world_coords(head.shape, head.affine), (0, 0, 0), (25, 33, 25))] = True
    monkeypatch.setattr(pp, "strip_skull", lambda volume, device="cpu": calls.append(volume) or brain)
    p = preprocess(head, template=tpl, skull_strip="auto", register=False)
    assert len(calls) == 1 and p.skull_stripped is True
    assert dice(p.mask, tpl.mask) > 0.95


def test_brain_mask_wrong_shape(tpl):
    native = reordered_native(tpl)
    with pytest.raises(InputError, match="brain mask shape"):
        preprocess(native, template=tpl, register=False, brain_mask=np.ones((10, 10, 10), bool))
    with pytest.raises(InputError):
        preprocess(native, template=tpl, register=False, brain_mask=np.ones(native.shape[::-1], bool))


def test_tiny_brain_is_refused(tpl):
    native = reordered_native(tpl)
    small = np.zeros(native.shape, bool)
    small[10:13, 10:13, 10:13] = True
    with pytest.raises(InputError, match="no brain"):
        preprocess(native, template=tpl, register=False, brain_mask=small)
