"""Synthetic scenes whose true answer is known: spots paired at a known distance.

Used by the demo, the tests and the benchmarks. Distances and PSF widths are in
physical units; spacing is per axis in ``(z,) y, x`` order, so anisotropic 3D is
handled the way a microscope produces it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class PairedSpots:
    """A two-channel scene and its ground truth.

    Attributes
    ----------
    image1, image2 : numpy.ndarray
        float32 frames, shape ``shape``.
    mask : numpy.ndarray
        bool frame: the region spots were placed in.
    distances : tuple of float
        True distance between paired spots (physical units), one per population of
        pairs (pair i has ``distances[i % len(distances)]``).
    psf_sigma : float
        Gaussian PSF standard deviation (physical units, every axis).
    spacing : tuple of float
        Voxel size per axis.
    """

    image1: np.ndarray
    image2: np.ndarray
    mask: np.ndarray
    distances: tuple[float, ...]
    psf_sigma: float
    spacing: tuple[float, ...]

    @property
    def distance(self) -> float:
        """The distance of a one-population scene."""
        if len(self.distances) != 1:
            raise ValueError(f"this scene has {len(self.distances)} populations; use .distances.")
        return self.distances[0]

    @property
    def correlation_sigma(self) -> float:
        """Width of the cross-correlation peak of two PSF-blurred points: sqrt(2) PSF sigma."""
        return float(np.sqrt(2.0) * self.psf_sigma)

    @property
    def expected_peaks(self) -> tuple[float, ...]:
        """Where a radial profile of the correlation peaks: d - s^2/(2d) in 2D, d - s^2/d in 3D.

        Averaging a Gaussian peak of width s over a ring (2D) or shell (3D) of radius d
        moves its maximum inwards by this much (to second order in s/d). One per
        population, in the order of ``distances``.
        """
        s2 = self.correlation_sigma**2
        factor = 0.5 if len(self.spacing) == 2 else 1.0
        return tuple(float(d - factor * s2 / d) for d in self.distances)

    @property
    def expected_peak(self) -> float:
        """:attr:`expected_peaks` of a one-population scene."""
        self.distance  # noqa: B018 - raises for a scene of several populations
        return self.expected_peaks[0]


def _random_directions(rng: np.random.Generator, n: int, ndim: int) -> np.ndarray:
    v = rng.normal(size=(n, ndim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _render(points: np.ndarray, shape: tuple[int, ...], spacing: np.ndarray, psf_sigma: float,
            amplitude: float) -> np.ndarray:
    """Gaussian spots of peak ``amplitude`` centred exactly at physical ``points``.

    Each spot is the outer product of 1D Gaussians sampled at voxel centres over
    +-4 sigma, so positions are not rounded to the grid.
    """
    image = np.zeros(shape, dtype=np.float64)
    sigma_vox = psf_sigma / spacing
    half = np.ceil(4 * sigma_vox).astype(int)
    for point in points / spacing:
        centre = np.round(point).astype(int)
        lo = np.maximum(centre - half, 0)
        hi = np.minimum(centre + half + 1, shape)
        if np.any(hi <= lo):
            continue
        spot = amplitude
        for axis in range(len(shape)):
            grid = np.arange(lo[axis], hi[axis]) - point[axis]
            profile = np.exp(-0.5 * (grid / sigma_vox[axis]) ** 2)
            spot = np.multiply.outer(spot, profile) if axis else amplitude * profile
        image[tuple(slice(a, b) for a, b in zip(lo, hi))] += spot
    return image


def paired_spots(
    shape: tuple[int, ...] = (256, 256),
    spacing: tuple[float, ...] | None = None,
    distance: float | Sequence[float] = 1.0,
    psf_sigma: float = 0.1,
    n_pairs: int = 200,
    n_decoys: int = 50,
    noise: float = 0.02,
    amplitude: float = 1.0,
    independent: bool = False,
    margin: float | None = None,
    min_separation: float | None = None,
    seed: int = 0,
) -> PairedSpots:
    """Spots in channel 1, each paired with a channel-2 spot at ``distance`` in a random direction.

    Parameters
    ----------
    shape : tuple of int
        Frame shape, 2D ``(y, x)`` or 3D ``(z, y, x)``.
    spacing : tuple of float, optional
        Voxel size per axis (physical units); default 0.05 in 2D, (0.15, 0.05, 0.05) in 3D.
    distance : float or sequence of float
        Distance between the spots of a pair (physical units). A sequence makes one
        population of pairs per distance: pair i has ``distance[i % len(distance)]``.
    psf_sigma : float
        Gaussian PSF standard deviation (physical units).
    n_pairs, n_decoys : int
        Paired spots; unpaired spots added to each channel independently.
    noise : float
        Standard deviation of additive Gaussian noise (relative to ``amplitude``).
    independent : bool
        Place channel 2's spots independently of channel 1 (no true colocalization).
    margin : float, optional
        Keep channel-1 spots this far from the border (physical units); default 4 psf.
        The mask is exactly the region channel-1 spots are placed in (uniformly), as
        the method assumes; paired channel-2 spots that fall outside are masked out.
    min_separation : float, optional
        Keep every spot at least this far (physical units) from every other spot of
        either channel except its own partner (a hard-core process: no chance
        coincidences). Default: spots placed independently.
    seed : int
        Seed of the random generator (the scene is a pure function of its arguments).
    """
    ndim = len(shape)
    if spacing is None:
        spacing = (0.05, 0.05) if ndim == 2 else (0.15, 0.05, 0.05)
    sp = np.asarray(spacing, dtype=float)
    distances = tuple(float(d) for d in np.atleast_1d(np.asarray(distance, dtype=float)))
    pair_distance = np.resize(np.asarray(distances), n_pairs)
    rng = np.random.default_rng(seed)
    extent = np.asarray(shape) * sp
    margin = 4 * psf_sigma if margin is None else margin
    lo, hi = np.full(ndim, margin), extent - margin
    if np.any(hi <= lo):
        raise ValueError(f"shape {shape} at spacing {spacing} is too small for distance {distance}.")

    def uniform(n):
        return lo + rng.random((n, ndim)) * (hi - lo)

    def place_pair(partner: float | None):
        a = uniform(1)[0]
        if partner is None:
            return a, None
        b = uniform(1)[0] if independent else a + partner * _random_directions(rng, 1, ndim)[0]
        return a, b

    if min_separation is None:
        p1 = uniform(n_pairs)
        p2 = uniform(n_pairs) if independent else p1 + pair_distance[:, None] * _random_directions(rng, n_pairs, ndim)
        p1 = np.vstack([p1, uniform(n_decoys)])
        p2 = np.vstack([p2, uniform(n_decoys)])
    else:
        placed: list[np.ndarray] = []
        p1, p2 = [], []
        wanted = [(d, None) for d in pair_distance] + [(None, 1)] * n_decoys + [(None, 2)] * n_decoys
        for partner, channel in wanted:
            for _ in range(10000):
                a, b = place_pair(partner)
                new = [a] if b is None else [a, b]
                if not placed or all(
                    np.min(np.linalg.norm(np.asarray(placed) - q, axis=1)) >= min_separation for q in new
                ):
                    break
            else:
                raise ValueError(f"cannot place {n_pairs} pairs {min_separation} apart in shape {shape}.")
            placed.extend(new)
            if partner is not None:
                p1.append(a)
                p2.append(b)
            else:
                (p1 if channel == 1 else p2).append(a)
        p1, p2 = np.asarray(p1).reshape(-1, ndim), np.asarray(p2).reshape(-1, ndim)
    image1 = _render(p1, shape, sp, psf_sigma, amplitude)
    image2 = _render(p2, shape, sp, psf_sigma, amplitude)
    image1 += rng.normal(scale=noise * amplitude, size=shape)
    image2 += rng.normal(scale=noise * amplitude, size=shape)

    grid = np.indices(shape, dtype=float)
    mask = np.ones(shape, dtype=bool)
    for axis in range(ndim):
        pos = grid[axis] * sp[axis]
        mask &= (pos >= lo[axis]) & (pos <= hi[axis])
    return PairedSpots(
        image1=image1.astype(np.float32),
        image2=image2.astype(np.float32),
        mask=mask,
        distances=distances,
        psf_sigma=float(psf_sigma),
        spacing=tuple(float(s) for s in sp),
    )


def paired_spots_series(
    n_frames: int,
    distances: np.ndarray | list[float] | None = None,
    **kwargs,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A time series of :func:`paired_spots` frames.

    Returns
    -------
    image1, image2 : numpy.ndarray
        float32, shape ``(n_frames, *shape)``.
    mask : numpy.ndarray
        bool, one per frame.
    distances : numpy.ndarray
        The true distance of each frame.
    """
    if distances is None:
        distances = np.full(n_frames, kwargs.pop("distance", 1.0))
    distances = np.asarray(distances, dtype=float)
    seed = kwargs.pop("seed", 0)
    scenes = [paired_spots(distance=float(d), seed=seed + i, **kwargs) for i, d in enumerate(distances)]
    return (
        np.stack([s.image1 for s in scenes]),
        np.stack([s.image2 for s in scenes]),
        np.stack([s.mask for s in scenes]),
        distances,
    )
