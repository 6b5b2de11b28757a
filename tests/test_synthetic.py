"""Synthetic anomalies: shapes (Malé et al.) and fluid-driven anomaly randomization (Liu et al.)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.stats import norm

from napari_brainuad import synthetic as S


def ellipsoid_brain(shape=(36, 40, 34), notch=True) -> np.ndarray:
    """A non-convex toy brain: an ellipsoid with a slab cut into one side (2D when ``shape`` is)."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    r2 = sum(((g - (n - 1) / 2) / (0.45 * n)) ** 2 for g, n in zip(grids, shape))
    mask = r2 <= 1.0
    if notch:
        mask[: shape[0] // 2, shape[1] // 2 - 2: shape[1] // 2 + 2] = False
    return mask


def toy_image(mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """Grey (0.4) and white (0.8) 'tissue' inside the mask, 0 outside."""
    noise = S.smooth_noise(mask.shape, seed, scales_vox=(6.0,))
    return np.where(mask, np.where(noise > 0, 0.8, 0.4), 0.0).astype(np.float32)


def bbox_extent(mask: np.ndarray) -> np.ndarray:
    idx = np.nonzero(mask)
    return np.array([i.max() - i.min() + 1 for i in idx])


def touches_edge(mask: np.ndarray) -> bool:
    idx = np.nonzero(mask)
    return any(i.min() == 0 or i.max() == n - 1 for i, n in zip(idx, mask.shape))


# ------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("kind", S.SHAPE_KINDS)
@pytest.mark.parametrize("size", [(10, 13, 15), (11, 11, 11), (12, 14)])
def test_shape_mask_bounding_box_is_size(kind, size):
    shape = (40,) * len(size)
    mask = S.shape_mask(shape, (5,) * len(size), size, kind)
    assert tuple(bbox_extent(mask)) == size
    fill = mask.sum() / np.prod(size)
    if kind == "rectangle":
        assert fill == 1.0
    else:
        assert 0.4 < fill < 0.85  # pi/6 ~ 0.52 in 3D, pi/4 ~ 0.79 in 2D


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("kind", S.SHAPE_KINDS)
def test_shape_anomaly_inside_brain_and_filled(ndim, kind):
    brain = ellipsoid_brain((36, 40, 34)[:ndim])
    image = toy_image(brain)
    for seed in range(15):
        out, anomaly = S.shape_anomaly(image, brain, seed, kind=kind)
        assert anomaly.any() and not (anomaly & ~brain).any()
        np.testing.assert_array_equal(out[~anomaly], image[~anomaly])
        values = np.unique(out[anomaly])
        assert values.size == 1 and 0.0 <= values[0] <= 1.0
        assert np.all(bbox_extent(anomaly) <= 15)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("kind", S.SHAPE_KINDS)
def test_shape_anomaly_size_range(ndim, kind):
    brain = np.ones((48,) * ndim, bool)  # no clipping by the brain, only by the array
    seen = set()
    for seed in range(40):
        _, anomaly = S.shape_anomaly(np.zeros(brain.shape, np.float32), brain, seed, kind=kind,
                                     size_range_vox=(10, 15))
        extent = bbox_extent(anomaly)
        assert np.all(extent <= 15)
        if not touches_edge(anomaly):
            assert np.all(extent >= 10)
            seen.update(extent.tolist())
    assert {10, 15} <= seen  # both ends of the range are reachable


def test_shape_anomalies_half_each_kind():
    brain = np.ones((40, 40, 40), bool)
    images, masks, kinds = S.shape_anomalies(np.zeros(brain.shape, np.float32), brain, 3, n=10)
    assert images.shape == masks.shape == (10, 40, 40, 40)
    assert kinds.count("rectangle") == kinds.count("ellipse") == 5
    for mask, kind in zip(masks, kinds):
        idx = np.nonzero(mask)
        box = mask[tuple(slice(i.min(), i.max() + 1) for i in idx)]
        if kind == "rectangle":
            assert box.all()
        elif not touches_edge(mask):
            assert 0.4 < box.mean() < 0.7  # an ellipsoid fills pi/6 of its bounding box
    _, _, odd = S.shape_anomalies(np.zeros((20, 20), np.float32), np.ones((20, 20), bool), 0, n=3)
    assert odd == ["rectangle", "ellipse", "rectangle"]


def test_shape_anomaly_seeding():
    brain = ellipsoid_brain()
    image = toy_image(brain)
    a = S.shape_anomaly(image, brain, 7, kind="ellipse")
    b = S.shape_anomaly(image, brain, np.random.default_rng(7), kind="ellipse")
    c = S.shape_anomaly(image, brain, 8, kind="ellipse")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    x = S.shape_anomalies(image, brain, 1, n=4)
    y = S.shape_anomalies(image, brain, 1, n=4)
    np.testing.assert_array_equal(x[0], y[0])


def test_shape_anomaly_rejects_bad_input():
    brain = ellipsoid_brain((20, 20))
    with pytest.raises(ValueError):
        S.shape_anomaly(np.zeros((20, 20)), brain, 0, kind="triangle")
    with pytest.raises(ValueError):
        S.shape_anomaly(np.zeros((20, 21)), brain, 0)
    with pytest.raises(ValueError):
        S.shape_anomaly(np.zeros((20, 20)), np.zeros((20, 20), bool), 0)


# ------------------------------------------------------------------------------------ velocity


@pytest.mark.parametrize("shape", [(9, 11), (3, 9, 10, 8)])
def test_curl_is_divergence_free(shape):
    potential = np.random.default_rng(0).standard_normal(shape) * 10
    velocity = S.curl(potential)
    grid = shape[-2:] if len(shape) == 2 else shape[1:]
    for a, u in enumerate(velocity):
        expected = [n - 1 for n in grid]
        expected[a] += 1
        assert u.shape == tuple(expected)
    scale = max(np.abs(u).max() for u in velocity)
    assert scale > 1
    assert np.abs(S.divergence(velocity)).max() < 1e-13 * scale


@pytest.mark.parametrize("ndim", [2, 3])
def test_random_velocity_divergence_free_and_walled(ndim):
    brain = ellipsoid_brain((36, 40, 34)[:ndim])
    velocity = S.random_velocity(brain, 0, velocity_scale=2.0)
    speeds = np.concatenate([np.abs(u).ravel() for u in velocity])
    assert np.percentile(speeds[speeds > 0], S.SPEED_PERCENTILE) == pytest.approx(2.0)
    assert np.abs(S.divergence(velocity)).max() < 1e-12
    for axis, u in enumerate(velocity):
        padded = np.pad(brain, [(1, 1) if a == axis else (0, 0) for a in range(ndim)])
        lo = np.take(padded, np.arange(padded.shape[axis] - 1), axis=axis)
        hi = np.take(padded, np.arange(1, padded.shape[axis]), axis=axis)
        wall = lo != hi  # faces between an inside and an outside voxel (or the array's edge)
        assert wall.any() and np.all(u[wall] == 0.0)
        assert np.all(u[~lo & ~hi] == 0.0)
        assert np.abs(u[lo & hi]).max() > 0.1


# ------------------------------------------------------------------------------------ fluid


@pytest.mark.parametrize("ndim", [2, 3])
def test_fluid_pathology_bounds_mass_and_wall(ndim):
    brain = ellipsoid_brain((30, 34, 28)[:ndim])
    p0 = S.random_blobs(brain, 0, volume_fraction_range=(0.05, 0.05))
    assert p0.sum() > 0 and not p0[~brain].any()
    for dtype, tol in [(np.float32, 1e-5), (np.float64, 1e-11)]:
        P = S.fluid_pathology(p0, brain, 1, t_max_range=(8.0, 8.0), velocity_scale=1.5, diffusion_max=1.0,
                              dtype=dtype)
        assert P.dtype == dtype
        assert P.min() >= 0.0 and P.max() <= 1.0
        assert np.all(P[~brain] == 0.0)
        assert abs(P.sum(dtype=np.float64) - p0.sum(dtype=np.float64)) <= tol * p0.sum()
        assert np.abs(P - p0).sum() > 0.2 * p0.sum()  # it did move


def test_fluid_pathology_zero_flux_at_long_times():
    """With strong diffusion for a long time, P fills its own brain component evenly and nothing leaks."""
    brain = np.zeros((24, 24), bool)
    brain[2:12, 2:22] = True
    brain[14:22, 2:22] = True  # a second component that the lesion must never reach
    p0 = np.zeros(brain.shape)
    p0[3:6, 3:6] = 1.0
    P = S.fluid_pathology(p0, brain, 0, t_max_range=(400.0, 400.0), diffusion_max=1.0, dtype=np.float64)
    top = brain.copy()
    top[12:] = False
    assert np.all(P[14:22] == 0.0) and np.all(P[~brain] == 0.0)
    assert P.sum() == pytest.approx(9.0, rel=1e-12)
    np.testing.assert_allclose(P[top], 9.0 / top.sum(), rtol=0.05)


@pytest.mark.parametrize("ndim", [2, 3])
def test_fluid_pathology_zero_time_is_identity(ndim):
    brain = ellipsoid_brain((30, 34, 28)[:ndim])
    p0 = S.random_blobs(brain, 2)
    P = S.fluid_pathology(p0, brain, 3, t_max_range=(0.0, 0.0))
    np.testing.assert_array_equal(P, p0)
    lesion = np.zeros(brain.shape, bool)
    lesion[tuple(slice(n // 2 - 2, n // 2 + 3) for n in brain.shape)] = True
    np.testing.assert_array_equal(S.fluid_pathology(lesion, brain, 3, t_max_range=(0.0, 0.0)),
                                  lesion & brain)


def test_fluid_pathology_spreads_and_moves_with_time():
    brain = ellipsoid_brain()
    p0 = S.random_blobs(brain, 4, volume_fraction_range=(0.02, 0.02))
    centroid0 = np.array(ndimage.center_of_mass(p0))
    distance, support, shift = [], [], []
    for t in (0.0, 1.0, 3.0, 6.0):
        P = S.fluid_pathology(p0, brain, 5, t_max_range=(t, t))
        distance.append(np.abs(P - p0).sum())
        support.append(int((P > 1e-3).sum()))
        shift.append(np.linalg.norm(np.array(ndimage.center_of_mass(P)) - centroid0))
    assert distance[0] == 0 and np.all(np.diff(distance) > 0)
    assert support[0] == p0.sum() and np.all(np.diff(support) > 0)
    assert shift[-1] > 0.3  # voxels


def test_fluid_seeding():
    brain = ellipsoid_brain((30, 34, 28))
    p0 = S.random_blobs(brain, 0)
    np.testing.assert_array_equal(S.random_blobs(brain, 0), p0)
    assert not np.array_equal(S.random_blobs(brain, 1), p0)
    a = S.fluid_pathology(p0, brain, 11)
    np.testing.assert_array_equal(a, S.fluid_pathology(p0, brain, np.random.default_rng(11)))
    assert not np.array_equal(a, S.fluid_pathology(p0, brain, 12))
    image = toy_image(brain)
    x = S.fluid_anomaly(image, brain, 3)
    y = S.fluid_anomaly(image, brain, 3)
    z = S.fluid_anomaly(image, brain, 4)
    for u, v in zip(x, y):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(x[0], z[0])


def test_random_blobs_volume_and_count():
    brain = ellipsoid_brain()
    for seed in range(5):
        p0 = S.random_blobs(brain, seed, volume_fraction_range=(0.01, 0.03), max_blobs=2)
        assert set(np.unique(p0)) <= {0.0, 1.0}
        assert not p0[~brain].any()
        assert p0.sum() <= 0.03 * brain.sum() + 1
        assert ndimage.label(p0 > 0)[1] <= 2


# ------------------------------------------------------------------------------------ encoding


def test_white_matter_mean():
    brain = np.ones((10, 10), bool)
    image = np.full((10, 10), 0.3)
    image[:4] = 0.8  # 40 % of the brain is 'white matter'
    assert S.white_matter_mean(image, brain) == pytest.approx(0.8)


@pytest.mark.parametrize("ndim", [2, 3])
def test_encode_changes_only_the_support(ndim):
    brain = ellipsoid_brain((30, 34, 28)[:ndim])
    image = toy_image(brain)
    P = S.fluid_pathology(S.random_blobs(brain, 1), brain, 2, t_max_range=(3.0, 3.0))
    for seed in range(5):
        out, delta = S.encode_pathology(image, P, brain, seed, return_delta=True)
        assert out.shape == image.shape and out.min() >= 0.0 and out.max() <= 1.0
        np.testing.assert_array_equal(out[P == 0], image[P == 0])
        np.testing.assert_allclose(out, np.clip(image + delta * P, 0.0, 1.0), atol=1e-6)
    np.testing.assert_array_equal(S.encode_pathology(image, np.zeros_like(P), brain, 0), image)


def test_encode_sign_rule():
    brain = ellipsoid_brain((16, 16))
    image = np.where(brain, 0.5, 0.0).astype(np.float32)
    P = np.zeros(brain.shape, np.float32)
    P[6:10, 6:10] = 1.0
    n = 2000

    def brighter(**kwargs):
        signs = [np.sign(S.encode_pathology(image, P, brain, seed, mu_w=0.6, **kwargs)[8, 8] - 0.5)
                 for seed in range(n)]
        return np.mean(np.array(signs) > 0)

    binomial_tol = 4 * np.sqrt(0.25 / n)
    # the flip alone: exactly flip_prob of the lesions are brighter
    assert brighter(delta_std=0.0) == pytest.approx(0.2, abs=binomial_tol)
    # with the N(-mu_w/2, mu_w/2) draw, positive draws add Phi(-1) of the unflipped ones
    expected = 0.8 * norm.cdf(-1) + 0.2 * norm.cdf(1)
    assert brighter() == pytest.approx(expected, abs=binomial_tol)
    assert brighter(flip_prob=0.0) == pytest.approx(norm.cdf(-1), abs=binomial_tol)
    # magnitude: without flips, delta ~ N(-mu_w / 2, mu_w / 2)
    deltas = np.array([S.encode_pathology(image, P, brain, seed, mu_w=0.6, flip_prob=0.0,
                                          return_delta=True)[1][8, 8] for seed in range(n)])
    assert deltas.mean() == pytest.approx(-0.3, abs=4 * 0.3 / np.sqrt(n))
    assert deltas.std() == pytest.approx(0.3, rel=0.15)


def test_encode_one_delta_per_lesion():
    brain = np.ones((20, 20), bool)
    image = np.full(brain.shape, 0.5, np.float32)
    P = np.zeros(brain.shape)
    P[2:5, 2:5] = 1.0
    P[12:15, 12:15] = 0.5
    differ = 0
    for seed in range(10):
        _, delta = S.encode_pathology(image, P, brain, seed, return_delta=True)
        assert np.unique(delta[2:5, 2:5]).size == 1 and np.unique(delta[12:15, 12:15]).size == 1
        differ += delta[3, 3] != delta[13, 13]
        _, one = S.encode_pathology(image, P, brain, seed, per_component=False, return_delta=True)
        assert np.unique(one[P > 0]).size == 1
    assert differ == 10


@pytest.mark.parametrize("ndim", [2, 3])
def test_fluid_anomaly(ndim):
    brain = ellipsoid_brain((30, 34, 28)[:ndim])
    image = toy_image(brain)
    out, P, lesion = S.fluid_anomaly(image, brain, 0, t_max_range=(2.0, 4.0), mask_threshold=0.4,
                                     volume_fraction_range=(0.03, 0.05))
    assert out.shape == P.shape == lesion.shape == image.shape
    assert lesion.any() and not lesion[~brain].any()
    np.testing.assert_array_equal(lesion, P > 0.4)
    np.testing.assert_array_equal(out[P == 0], image[P == 0])
    assert not np.array_equal(out[lesion], image[lesion])
    given = np.zeros(brain.shape, bool)
    given[tuple(slice(n // 2 - 3, n // 2 + 3) for n in brain.shape)] = True
    _, P2, _ = S.fluid_anomaly(image, brain, 0, p0=given, t_max_range=(0.0, 0.0))
    np.testing.assert_array_equal(P2, given & brain)
