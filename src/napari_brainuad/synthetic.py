"""Synthetic anomalies for evaluation and for (healthy, anomalous) training pairs.

Plain functions on numpy arrays in the scikit-image style: explicit parameters, no state. Images
are 3D volumes ``(X, Y, Z)`` on the 2 mm model grid (or 2D slices ``(X, Y)``), float in [0, 1];
brain masks are bool arrays of the same shape. All lengths are in voxels of the array they act on.
Every random function takes ``rng``: a :class:`numpy.random.Generator` (used and advanced) or an
int seed; the same seed gives the same output.

Two families:

* **Shapes** (Malé et al.): a box or an ellipsoid (rectangle / ellipse on a slice) of side or
  diameter 20-30 mm, i.e. 10-15 voxels on the 2 mm grid, centred in the brain, clipped to the
  brain mask, filled with one uniform random intensity. :func:`shape_anomaly`,
  :func:`shape_anomalies`, :func:`shape_mask`.
* **Fluid-driven anomaly randomization** (Liu, Aguila and Iglesias, "Unraveling Normal Anatomy via
  Fluid-Driven Anomaly Randomization", CVPR 2025): a pathology probability map ``P0`` (a given
  lesion mask or :func:`random_blobs`) is advected by a random divergence-free velocity and
  diffused with a random non-negative diffusivity for a random time,
  ``dP/dt = -(curl Psi) . grad P + div(Phi^2 grad P)`` (:func:`fluid_pathology`), then encoded
  into a healthy image as ``x + delta * P`` (:func:`encode_pathology`); :func:`fluid_anomaly`
  does all three.

Discretisation of the fluid model (finite volumes on the voxel grid, spacing 1 voxel):

* ``Psi`` (a stream function in 2D, a 3-component vector potential in 3D) lives on the cell
  corners (nodes). The velocity is its discrete curl evaluated as normal components on the cell
  faces (:func:`curl`), so the discrete divergence (:func:`divergence`, the sum of outgoing face
  velocities of each voxel) vanishes identically, up to floating-point rounding.
* The brain mask is made a no-flux wall: ``Psi`` is multiplied by a taper that is zero on every
  node touching a voxel outside the mask (and rises linearly over ``boundary_ramp_vox``), so the
  velocity through every face between an inside and an outside voxel is exactly 0 while staying
  divergence-free; the diffusive fluxes through those faces are zeroed as well.
* ``Psi`` and ``Phi`` are *fractal B-spline value noise* (:func:`smooth_noise`): Gaussian random
  values on a few coarse lattices, interpolated with the cubic B-spline kernel and summed with
  amplitude ``persistence ** octave``. This is a cheap, smooth stand-in for Perlin noise, not
  gradient (Perlin) noise.
* Time stepping is explicit Euler with first-order upwind advective fluxes and two-point diffusive
  fluxes in conservative (flux) form. With ``dt * max_voxel(sum of outgoing rates) <= cfl <= 1``
  (the combined advection + diffusion CFL bound) every update is a convex combination of
  neighbouring values, so ``P`` stays in [0, 1], stays exactly 0 outside the mask, and its sum
  inside the mask is conserved (up to rounding). Time is in units where ``velocity_scale`` (the
  99th percentile of the face speeds) is in voxels per unit time and ``diffusion_max`` (the
  largest diffusivity) in voxels^2 per unit time.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import ndimage

ShapeKind = Literal["rectangle", "ellipse"]
SHAPE_KINDS: tuple[str, str] = ("rectangle", "ellipse")
SPEED_PERCENTILE = 99.0
"""Random velocities are scaled so that this percentile of the non-zero face speeds is ``velocity_scale``."""

__all__ = [
    "SHAPE_KINDS",
    "curl",
    "divergence",
    "encode_pathology",
    "fluid_anomaly",
    "fluid_pathology",
    "random_blobs",
    "random_velocity",
    "shape_anomalies",
    "shape_anomaly",
    "shape_mask",
    "smooth_noise",
    "white_matter_mean",
]


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return np.random.default_rng(rng)


def _float_image(image: np.ndarray) -> np.ndarray:
    """A float copy of ``image`` (float32 for integer or float32 input, otherwise its own float dtype)."""
    image = np.asarray(image)
    return image.astype(np.result_type(image.dtype, np.float32), copy=True)


def _check_mask(brain_mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.asarray(brain_mask, dtype=bool)
    if mask.shape != tuple(shape):
        raise ValueError(f"brain_mask shape {mask.shape} does not match image shape {tuple(shape)}")
    if mask.ndim not in (2, 3):
        raise ValueError(f"expected a 2D slice or a 3D volume, got {mask.ndim} dimensions")
    if not mask.any():
        raise ValueError("brain_mask is empty")
    return mask


# --------------------------------------------------------------------------------------------
# Shapes (Malé et al.)
# --------------------------------------------------------------------------------------------


def shape_mask(
    shape: Sequence[int], start: Sequence[int], size: Sequence[int], kind: ShapeKind = "rectangle"
) -> np.ndarray:
    """Bool mask of an axis-aligned box or ellipsoid, clipped to the array.

    Parameters
    ----------
    shape : array shape ``(X, Y[, Z])``.
    start : first voxel index of the shape's bounding box along each axis (may lie outside).
    size : side (rectangle) or diameter (ellipse) in voxels along each axis, integers >= 1. The
        bounding box covers voxels ``start .. start + size - 1``; the shape's centre is
        ``start + (size - 1) / 2``.
    kind : ``"rectangle"`` (box in 3D) or ``"ellipse"`` (ellipsoid in 3D): voxel centres with
        ``sum(((i - centre) / (size / 2)) ** 2) <= 1``, whose bounding box is exactly ``size``.
    """
    if kind not in SHAPE_KINDS:
        raise ValueError(f"kind must be one of {SHAPE_KINDS}, got {kind!r}")
    shape, start, size = (tuple(int(v) for v in t) for t in (shape, start, size))
    if not len(shape) == len(start) == len(size) or min(size) < 1:
        raise ValueError("shape, start and size need one positive entry per axis")
    if kind == "rectangle":
        mask = np.zeros(shape, dtype=bool)
        mask[tuple(slice(max(a, 0), max(a + s, 0)) for a, s in zip(start, size))] = True
        return mask
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    r2 = sum(((g - (a + (s - 1) / 2)) / (s / 2)) ** 2 for g, a, s in zip(grids, start, size))
    return r2 <= 1.0


def shape_anomaly(
    image: np.ndarray,
    brain_mask: np.ndarray,
    rng: np.random.Generator | int | None = None,
    kind: ShapeKind = "rectangle",
    size_range_vox: tuple[int, int] = (10, 15),
    intensity_range: tuple[float, float] = (0.0, 1.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Paste one box or ellipsoid of uniform random intensity into the brain.

    The side (or diameter) along each axis is drawn independently and uniformly from the integers
    in ``size_range_vox`` (inclusive; the default 10-15 voxels is Malé et al.'s 20-30 mm on the
    2 mm grid). The centre voxel is drawn uniformly among the brain voxels, the shape is clipped to
    the brain mask and filled with one intensity drawn uniformly from ``intensity_range``.

    Parameters
    ----------
    image : ``(X, Y, Z)`` or ``(X, Y)`` float image in [0, 1].
    brain_mask : bool, same shape.
    rng : generator or seed.
    kind : ``"rectangle"`` or ``"ellipse"`` (box / ellipsoid in 3D).
    size_range_vox : (min, max) side or diameter in voxels, inclusive.
    intensity_range : (low, high) of the uniform fill intensity.

    Returns
    -------
    image_with_anomaly : float copy of ``image`` (float32 unless ``image`` is float64).
    anomaly_mask : bool, same shape, True where the intensity was replaced (never outside the
        brain mask, never empty: it contains the centre voxel).
    """
    rng = _rng(rng)
    out = _float_image(image)
    mask = _check_mask(brain_mask, out.shape)
    lo, hi = int(size_range_vox[0]), int(size_range_vox[1])
    if not 1 <= lo <= hi:
        raise ValueError(f"size_range_vox must satisfy 1 <= min <= max, got {size_range_vox}")
    inside = np.flatnonzero(mask)
    centre = np.unravel_index(inside[rng.integers(inside.size)], mask.shape)
    size = rng.integers(lo, hi + 1, size=mask.ndim)
    start = [int(c) - (int(s) - 1) // 2 for c, s in zip(centre, size)]  # centre voxel = floor(centre)
    anomaly = shape_mask(mask.shape, start, size, kind) & mask
    out[anomaly] = rng.uniform(*intensity_range)
    return out, anomaly


def shape_anomalies(
    image: np.ndarray,
    brain_mask: np.ndarray,
    rng: np.random.Generator | int | None = None,
    n: int = 2,
    kinds: Sequence[ShapeKind] = SHAPE_KINDS,
    size_range_vox: tuple[int, int] = (10, 15),
    intensity_range: tuple[float, float] = (0.0, 1.0),
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``n`` independent single-anomaly copies of ``image``, kinds alternating.

    Copy ``i`` gets one :func:`shape_anomaly` of kind ``kinds[i % len(kinds)]``, so with the default
    kinds half are rectangles and half ellipses (the extra one is a rectangle when ``n`` is odd).

    Returns
    -------
    images : ``(n, *image.shape)`` float.
    masks : ``(n, *image.shape)`` bool.
    kinds : the kind of each copy.
    """
    rng = _rng(rng)
    if n < 0:
        raise ValueError("n must be >= 0")
    mask = _check_mask(brain_mask, np.shape(image))
    chosen = [str(kinds[i % len(kinds)]) for i in range(n)]
    images = np.empty((n, *mask.shape), dtype=np.result_type(np.asarray(image).dtype, np.float32))
    masks = np.empty((n, *mask.shape), dtype=bool)
    for i, kind in enumerate(chosen):
        images[i], masks[i] = shape_anomaly(image, mask, rng, kind, size_range_vox, intensity_range)
    return images, masks, chosen


# --------------------------------------------------------------------------------------------
# Smooth noise
# --------------------------------------------------------------------------------------------


def _bspline3(t: np.ndarray) -> np.ndarray:
    """Cubic B-spline kernel (support |t| < 2, partition of unity on the integers)."""
    t = np.abs(t)
    return np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))


def _noise_at(
    coords: Sequence[np.ndarray],
    extent: Sequence[int],
    rng: np.random.Generator,
    scales_vox: Sequence[float],
    persistence: float,
) -> np.ndarray:
    """Fractal B-spline value noise at the grid ``coords[0] x coords[1] x ...`` (voxel units).

    The lattices cover ``[-1, extent]`` along each axis and depend only on ``extent`` and the
    random draws, so evaluating on a sub-grid gives the same values as on the full grid.
    """
    out = 0.0
    for octave, scale in enumerate(scales_vox):
        scale = float(scale)
        offsets = rng.uniform(0.0, scale, size=len(extent))
        counts = [int(math.ceil((n + 2) / scale)) + 4 for n in extent]
        values = rng.standard_normal(counts)
        for axis, (c, off, k) in enumerate(zip(coords, offsets, counts)):
            nodes = -1.0 - 2 * scale + off + scale * np.arange(k)  # lattice positions (voxels)
            weights = _bspline3((np.asarray(c, np.float64)[:, None] - nodes[None, :]) / scale)
            values = np.moveaxis(np.tensordot(weights, values, axes=([1], [axis])), 0, axis)
        out = out + persistence**octave * values
    return np.asarray(out)


def smooth_noise(
    shape: Sequence[int],
    rng: np.random.Generator | int | None = None,
    scales_vox: Sequence[float] = (16.0, 8.0, 4.0),
    persistence: float = 0.5,
) -> np.ndarray:
    """Smooth random field on the voxel centres of ``shape`` (a cheap Perlin-noise stand-in).

    Fractal B-spline value noise: for each scale ``s`` in ``scales_vox`` (voxels), standard normal
    values on a randomly shifted lattice of spacing ``s`` are interpolated with the cubic B-spline
    kernel and added with weight ``persistence ** octave``. Returns float64, mean ~0, unnormalised.
    """
    rng = _rng(rng)
    shape = tuple(int(n) for n in shape)
    return _noise_at([np.arange(n, dtype=np.float64) for n in shape], shape, rng, scales_vox, persistence)


# --------------------------------------------------------------------------------------------
# Staggered-grid velocity
# --------------------------------------------------------------------------------------------


def _diff(a: np.ndarray, axis: int) -> np.ndarray:
    return np.diff(a, axis=axis)


def _mean2(a: np.ndarray, axis: int) -> np.ndarray:
    lo = [slice(None)] * a.ndim
    hi = [slice(None)] * a.ndim
    lo[axis], hi[axis] = slice(None, -1), slice(1, None)
    return 0.5 * (a[tuple(lo)] + a[tuple(hi)])


def curl(potential: np.ndarray) -> tuple[np.ndarray, ...]:
    """Face-normal velocities of the discrete curl of a node-centred potential.

    Parameters
    ----------
    potential : 2D stream function ``psi`` of shape ``(X + 1, Y + 1)`` or 3D vector potential
        ``(3, X + 1, Y + 1, Z + 1)``, sampled on the cell corners (node ``i`` along an axis sits at
        voxel coordinate ``i - 1/2``).

    Returns
    -------
    One array per axis ``a``: the velocity component along ``a`` through the faces normal to
    ``a``, shape ``(X, Y[, Z])`` with ``+1`` along ``a`` (face ``i`` lies between voxels ``i - 1``
    and ``i``). 2D: ``V = (dpsi/dy, -dpsi/dx)``. 3D: ``V = curl A`` with the tangential
    derivatives averaged over the face. :func:`divergence` of the result is zero up to rounding.
    """
    p = np.asarray(potential, dtype=np.float64)
    if p.ndim == 2:
        return _diff(p, 1), -_diff(p, 0)
    if p.ndim == 4 and p.shape[0] == 3:
        a = p
        # u_i = M_k D_j A_k - M_j D_k A_j for (i, j, k) cyclic; differences and averages along
        # different axes commute, so the divergence cancels term by term.
        out = []
        for i in range(3):
            j, k = (i + 1) % 3, (i + 2) % 3
            out.append(_mean2(_diff(a[k], j), k) - _mean2(_diff(a[j], k), j))
        return tuple(out)
    raise ValueError("expected a (X+1, Y+1) stream function or a (3, X+1, Y+1, Z+1) vector potential, "
                     f"got {p.shape}")


def divergence(velocity: Sequence[np.ndarray]) -> np.ndarray:
    """Discrete divergence per voxel of face-normal velocities (net outflow, voxels^-1 x speed).

    ``velocity`` is as returned by :func:`curl`: component ``a`` has one more entry along axis
    ``a`` than the voxel grid. Returns an array of the voxel grid's shape.
    """
    return sum(np.diff(np.asarray(u), axis=a) for a, u in enumerate(velocity))


def _node_inside(mask: np.ndarray) -> np.ndarray:
    """Nodes (cell corners, shape ``+1`` per axis) all of whose adjacent voxels are in ``mask``."""
    padded = np.pad(mask, 1)
    out = np.ones(tuple(n + 1 for n in mask.shape), dtype=bool)
    for offs in itertools.product((0, 1), repeat=mask.ndim):
        out &= padded[tuple(slice(o, o + n + 1) for o, n in zip(offs, mask.shape))]
    return out


def _open_faces(mask: np.ndarray, axis: int) -> np.ndarray:
    """Interior faces normal to ``axis`` (shape ``n - 1`` along it) with both voxels in ``mask``."""
    lo = [slice(None)] * mask.ndim
    hi = [slice(None)] * mask.ndim
    lo[axis], hi[axis] = slice(None, -1), slice(1, None)
    return mask[tuple(lo)] & mask[tuple(hi)]


def _velocity(
    mask: np.ndarray,
    origin: Sequence[int],
    extent: Sequence[int],
    rng: np.random.Generator,
    velocity_scale: float,
    scales_vox: Sequence[float],
    persistence: float,
    boundary_ramp_vox: float,
) -> tuple[np.ndarray, ...]:
    """Random divergence-free face velocities on ``mask`` (a crop at ``origin`` of a grid ``extent``)."""
    d = mask.ndim
    coords = [np.arange(n + 1, dtype=np.float64) - 0.5 + o for n, o in zip(mask.shape, origin)]
    n_comp = 1 if d == 2 else 3
    potential = np.stack([_noise_at(coords, extent, rng, scales_vox, persistence) for _ in range(n_comp)])
    nodes = _node_inside(mask)
    if boundary_ramp_vox > 0:
        taper = np.minimum(ndimage.distance_transform_edt(nodes) / float(boundary_ramp_vox), 1.0)
    else:
        taper = nodes.astype(np.float64)
    potential *= taper  # zero on every node touching an outside voxel: no flux through the wall
    velocity = curl(potential[0] if d == 2 else potential)
    speeds = np.concatenate([np.abs(u).ravel() for u in velocity])
    speeds = speeds[speeds > 0]
    if speeds.size:
        velocity = tuple(u * (velocity_scale / np.percentile(speeds, SPEED_PERCENTILE)) for u in velocity)
    return velocity


def random_velocity(
    brain_mask: np.ndarray,
    rng: np.random.Generator | int | None = None,
    velocity_scale: float = 1.0,
    scales_vox: Sequence[float] = (24.0, 12.0),
    persistence: float = 0.5,
    boundary_ramp_vox: float = 6.0,
) -> tuple[np.ndarray, ...]:
    """Random divergence-free velocity ``V = curl Psi`` that never crosses the mask boundary.

    ``Psi`` is :func:`smooth_noise` on the nodes (one stream function in 2D, three components in
    3D), tapered linearly to zero at the mask boundary over ``boundary_ramp_vox`` voxels, so the
    flow turns parallel to the wall (the tapered layer is a shear layer, about twice as fast as
    the interior on the MNI mask). The velocity is its :func:`curl`, rescaled so that the 99th
    percentile of the non-zero face speeds is ``velocity_scale`` voxels per unit time (the
    fastest faces reach about 1.5 times that).

    Returns face-normal components as :func:`curl` does (float64); the components through faces
    between an inside and an outside voxel, and through the array's outer faces, are exactly 0.
    """
    rng = _rng(rng)
    mask = _check_mask(brain_mask, np.shape(brain_mask))
    return _velocity(mask, (0,) * mask.ndim, mask.shape, rng, velocity_scale, scales_vox, persistence,
                     boundary_ramp_vox)


# --------------------------------------------------------------------------------------------
# Fluid-driven anomaly randomization (Liu et al., CVPR 2025)
# --------------------------------------------------------------------------------------------


def random_blobs(
    brain_mask: np.ndarray,
    rng: np.random.Generator | int | None = None,
    volume_fraction_range: tuple[float, float] | None = None,
    scales_vox: Sequence[float] = (8.0, 4.0),
    persistence: float = 0.5,
    max_blobs: int | None = 3,
) -> np.ndarray:
    """Initial pathology ``P0``: thresholded smooth noise inside the brain.

    :func:`smooth_noise` (lattice scales ``scales_vox`` voxels) is thresholded inside the brain
    at the quantile that keeps a fraction ``f ~ U(volume_fraction_range)`` of the brain voxels;
    only the ``max_blobs`` largest connected components are kept (all if None). The default range
    is (0.002, 0.01) in 3D (about 500-2300 voxels, 20-30 mm across, on the 2 mm grid) and
    (0.005, 0.04) in 2D (about the area such lesions cover on a slice through their middle).

    Returns
    -------
    P0 : float32, the brain mask's shape, 1 in the blobs and 0 elsewhere (never empty).
    """
    rng = _rng(rng)
    mask = _check_mask(brain_mask, np.shape(brain_mask))
    if volume_fraction_range is None:
        volume_fraction_range = (0.002, 0.01) if mask.ndim == 3 else (0.005, 0.04)
    fraction = rng.uniform(*volume_fraction_range)
    noise = smooth_noise(mask.shape, rng, scales_vox, persistence)
    values = noise[mask]
    keep = max(1, int(round(fraction * values.size)))
    threshold = np.partition(values, values.size - keep)[values.size - keep]
    blobs = mask & (noise >= threshold)
    if max_blobs is not None:
        labels, n = ndimage.label(blobs)
        if n > max_blobs:
            sizes = np.bincount(labels.ravel())[1:]
            largest = np.argsort(-sizes, kind="stable")[:max_blobs] + 1
            blobs = np.isin(labels, largest)
    return blobs.astype(np.float32)


def fluid_pathology(
    p0: np.ndarray,
    brain_mask: np.ndarray,
    rng: np.random.Generator | int | None = None,
    t_max_range: tuple[float, float] = (2.0, 10.0),
    velocity_scale: float = 1.0,
    diffusion_max: float = 0.5,
    velocity_scales_vox: Sequence[float] = (24.0, 12.0),
    diffusion_scales_vox: Sequence[float] = (16.0, 8.0),
    persistence: float = 0.5,
    boundary_ramp_vox: float = 6.0,
    cfl: float = 0.9,
    dtype: type = np.float32,
) -> np.ndarray:
    """Advect and diffuse a pathology probability map inside the brain for a random time.

    Solves ``dP/dt = -(curl Psi) . grad P + div(Phi^2 grad P)`` from ``P(0) = p0 * brain_mask``
    to ``T_max ~ U(t_max_range)`` with no flux across the brain-mask boundary; see the module
    docstring for the discretisation. ``Psi`` gives :func:`random_velocity` (99th-percentile
    face speed ``velocity_scale`` voxels per unit time, noise scales ``velocity_scales_vox``);
    ``Phi`` is :func:`smooth_noise` (scales ``diffusion_scales_vox``) rescaled to
    ``max |Phi| = sqrt(diffusion_max)``, so the diffusivity ``Phi^2`` lies in
    ``[0, diffusion_max]`` voxels^2 per unit time (face value: mean of the two voxels).
    The explicit time step is ``dt = T_max / ceil(T_max * r / cfl)`` with ``r`` the largest
    total outgoing rate (advective + diffusive) of a voxel, which keeps the scheme monotone.

    Parameters
    ----------
    p0 : float or bool, ``(X, Y, Z)`` or ``(X, Y)``; values are clipped to [0, 1].
    brain_mask : bool, same shape.
    rng : generator or seed. ``T_max`` is drawn first, so seeds give the same fields whatever
        ``t_max_range`` is (``t_max_range=(t, t)`` fixes the time).
    dtype : float type of the time stepping (float32 is about twice as fast as float64).

    Returns
    -------
    P : ``dtype`` array of ``p0``'s shape in [0, 1], 0 outside the mask, with
        ``P.sum() == (p0 * brain_mask).sum()`` up to rounding.
    """
    rng = _rng(rng)
    p0 = np.asarray(p0, dtype=np.float64)
    mask = _check_mask(brain_mask, p0.shape)
    t_max = float(rng.uniform(*t_max_range))
    if t_max < 0:
        raise ValueError("t_max_range must be non-negative")
    out = np.where(mask, np.clip(p0, 0.0, 1.0), 0.0).astype(dtype)
    # Everything happens in the brain's bounding box; the noise is generated on the full grid's
    # coordinates, so the result does not depend on the crop.
    bbox = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(mask))
    origin = tuple(s.start for s in bbox)
    m = mask[bbox]
    velocity = _velocity(m, origin, mask.shape, rng, velocity_scale, velocity_scales_vox, persistence,
                         boundary_ramp_vox)
    coords = [np.arange(n, dtype=np.float64) + o for n, o in zip(m.shape, origin)]
    phi = _noise_at(coords, mask.shape, rng, diffusion_scales_vox, persistence)
    peak = float(np.abs(phi[m]).max())
    diffusivity = np.where(m, (phi / peak) ** 2 * diffusion_max if peak > 0 else 0.0, 0.0)
    if t_max == 0:
        return out

    # Flux through interior face f between voxels L and R (normal to axis a, positive from L to
    # R): F = a_f * P_L + b_f * P_R with a_f = max(u, 0) + D_f >= 0 and b_f = min(u, 0) - D_f <= 0.
    coef_a, coef_b = [], []
    rate = np.zeros(m.shape)
    for axis, u in enumerate(velocity):
        inner = [slice(None)] * m.ndim
        inner[axis] = slice(1, -1)
        u = u[tuple(inner)]  # the array's outer faces carry no flux
        open_ = _open_faces(m, axis)
        d_face = np.where(open_, _mean2(diffusivity, axis), 0.0)
        u = np.where(open_, u, 0.0)
        a = np.maximum(u, 0.0) + d_face
        b = np.minimum(u, 0.0) - d_face
        lo = [slice(None)] * m.ndim
        hi = [slice(None)] * m.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        rate[tuple(lo)] += a
        rate[tuple(hi)] -= b
        coef_a.append(a)
        coef_b.append(b)
    peak_rate = float(rate.max())
    if peak_rate == 0:
        return out
    n_steps = max(1, int(math.ceil(t_max * peak_rate / cfl)))
    dt = t_max / n_steps
    coef_a = [(dt * a).astype(dtype) for a in coef_a]
    coef_b = [(dt * b).astype(dtype) for b in coef_b]

    p = np.ascontiguousarray(out[bbox])
    change = np.empty_like(p)
    flux = [np.empty_like(a) for a in coef_a]
    tmp = [np.empty_like(a) for a in coef_a]
    sides = []
    for axis in range(m.ndim):
        lo = [slice(None)] * m.ndim
        hi = [slice(None)] * m.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        sides.append((tuple(lo), tuple(hi)))
    for _ in range(n_steps):
        change.fill(0)
        for (lo, hi), a, b, f, t in zip(sides, coef_a, coef_b, flux, tmp):
            np.multiply(a, p[lo], out=f)
            np.multiply(b, p[hi], out=t)
            f += t
            change[lo] -= f
            change[hi] += f
        p += change
    # Rounding (the velocity is divergence-free only to ~1e-7 in float32) can leave values a few
    # ulps outside [0, 1]; clipping them changes the mass by a negligible amount.
    np.clip(p, 0.0, 1.0, out=p)
    out[bbox] = p
    return out


def white_matter_mean(image: np.ndarray, brain_mask: np.ndarray, percentile: float = 60.0) -> float:
    """Mean intensity of the brightest tissue class in the brain (white matter on a T1).

    Estimated as the mean of the brain voxels above the ``percentile``-th percentile of the brain
    intensities.
    """
    image = np.asarray(image)
    values = image[_check_mask(brain_mask, image.shape)].astype(np.float64)
    cut = np.percentile(values, percentile)
    above = values[values > cut]
    return float(above.mean() if above.size else values.mean())


def encode_pathology(
    image: np.ndarray,
    P: np.ndarray,
    brain_mask: np.ndarray,
    rng: np.random.Generator | int | None = None,
    mu_w: float | None = None,
    delta_mean: float = -0.5,
    delta_std: float = 0.5,
    flip_prob: float = 0.2,
    per_component: bool = True,
    return_delta: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Encode a pathology probability map into a healthy image: ``x_p = x_h + delta * P``.

    For each lesion, ``delta ~ N(delta_mean * mu_w, (delta_std * mu_w)^2)`` (defaults: mean
    ``-mu_w / 2``, standard deviation ``mu_w / 2``, i.e. mostly darker, as T1 lesions), then its
    sign is flipped with probability ``flip_prob``. A lesion is a connected component (face
    connectivity) of the support ``(P > 0) & brain_mask`` when ``per_component``, otherwise the
    whole support gets one ``delta``. After :func:`fluid_pathology` the support includes the
    faint diffusion tails, so blobs that came close usually share one component and one ``delta``.
    Only support voxels change; they are clipped to [0, 1].

    With the defaults the chance that a lesion is brighter than the tissue is
    ``0.8 * Phi(-1) + 0.2 * Phi(1) ~ 0.295`` (the normal draw is itself positive with probability
    ``Phi(-1) ~ 0.16``); with ``delta_std=0`` it is exactly ``flip_prob``.

    Parameters
    ----------
    image : healthy ``(X, Y, Z)`` or ``(X, Y)`` float image in [0, 1].
    P : pathology probability map in [0, 1], same shape.
    brain_mask : bool, same shape.
    mu_w : mean white-matter intensity; :func:`white_matter_mean` of ``image`` when None.
    return_delta : also return the per-voxel ``delta`` map (0 outside the support).

    Returns
    -------
    image : float copy of ``image`` with the pathology (and ``delta`` map if asked).
    """
    rng = _rng(rng)
    out = _float_image(image)
    mask = _check_mask(brain_mask, out.shape)
    P = np.asarray(P)
    if P.shape != out.shape:
        raise ValueError(f"P shape {P.shape} does not match image shape {out.shape}")
    if mu_w is None:
        mu_w = white_matter_mean(out, mask)
    support = mask & (P > 0)
    if per_component:
        labels, n = ndimage.label(support)
    else:
        labels, n = support.astype(np.int32), int(support.any())
    deltas = rng.normal(delta_mean * mu_w, abs(delta_std * mu_w), size=n)
    deltas[rng.random(n) < flip_prob] *= -1
    delta_map = np.zeros(out.shape, dtype=out.dtype)
    delta_map[support] = deltas[labels[support] - 1]
    out[support] = np.clip(out[support] + delta_map[support] * P[support], 0.0, 1.0)
    return (out, delta_map) if return_delta else out


def fluid_anomaly(
    image: np.ndarray,
    brain_mask: np.ndarray,
    rng: np.random.Generator | int | None = None,
    p0: np.ndarray | None = None,
    t_max_range: tuple[float, float] = (2.0, 10.0),
    velocity_scale: float = 1.0,
    diffusion_max: float = 0.5,
    volume_fraction_range: tuple[float, float] | None = None,
    mu_w: float | None = None,
    delta_mean: float = -0.5,
    delta_std: float = 0.5,
    flip_prob: float = 0.2,
    mask_threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One fluid-driven synthetic lesion: :func:`random_blobs` (unless ``p0`` is given), then
    :func:`fluid_pathology`, then :func:`encode_pathology` (``delta_mean``, ``delta_std`` and
    ``flip_prob`` are its lesion-contrast parameters; other parameters at their defaults).

    Parameters
    ----------
    image : healthy ``(X, Y, Z)`` or ``(X, Y)`` float image in [0, 1].
    brain_mask : bool, same shape.
    p0 : initial pathology (a lesion mask or probability map); random blobs when None.
    mask_threshold : the returned lesion mask is ``P > mask_threshold``. It can be empty when
        diffusion spreads a small lesion below the threshold (about 1 in 150 on 2D slices with
        the defaults); ``P`` and the image change are still returned.

    Returns
    -------
    image : the image with the lesion (float, [0, 1]).
    P : the evolved pathology probability map (float32, [0, 1]).
    lesion_mask : bool, ``P > mask_threshold``.
    """
    rng = _rng(rng)
    mask = _check_mask(brain_mask, np.shape(image))
    if p0 is None:
        p0 = random_blobs(mask, rng, volume_fraction_range)
    P = fluid_pathology(p0, mask, rng, t_max_range, velocity_scale, diffusion_max)
    out = encode_pathology(image, P, mask, rng, mu_w=mu_w, delta_mean=delta_mean, delta_std=delta_std,
                           flip_prob=flip_prob)
    return out, P, P > mask_threshold
