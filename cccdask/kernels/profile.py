"""Correlogram geometry and the radial profile in calibrated units.

A shift's distance depends on each axis only through ``|offset|``, so the profile
folds the correlogram onto its non-negative quadrant (octant in 3D) first and groups
that by distance: the geometry and the work are a quarter (an eighth) of the
correlogram's size.

The geometry of a correlogram (which shifts it holds, their physical distances, the
distinct distance keys and the voxel-to-key index) depends only on the frame shape,
the spacing, the maximum distance and the centre convention. It is computed once per
geometry (:func:`profile_geometry` is cached) and reused for every frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# Distances are grouped on squared distance quantised to this fraction of the
# smallest squared voxel size: equal distances that float rounding split (e.g.
# 3 * 0.05 vs 0.15) fall into one key, distinct ones never merge. With fiji_compat
# the keys are instead the plugin's exact float64 distances (see profile_geometry).
_QUANTUM = 1e-9


@dataclass(frozen=True, eq=False)
class ProfileGeometry:
    """Which shifts a correlogram holds and how its voxels map to distance keys.

    Attributes
    ----------
    frame_shape : tuple of int
        Shape of the frame (voxels).
    spacing : tuple of float
        Physical voxel size per axis.
    max_distance : float or None
        Largest distance profiled (physical units); None = out to the corner.
    fiji_compat : bool
        Reproduce the Fiji plugin's keys: distances from (N - 1) / 2 instead of the
        true zero shift, and one key per distinct float64 value of its expression.
    shift_lo, shift_hi : tuple of int
        Smallest and largest integer shift held per axis (voxels); the zero shift
        sits at index ``-shift_lo``.
    offsets : tuple of numpy.ndarray
        Physical distance component per axis of every correlogram index.
    distances : numpy.ndarray
        The distinct distances (float64, ascending): the profile's ``distance`` axis.
    folds : tuple of (numpy.ndarray, numpy.ndarray, numpy.ndarray)
        Per axis, how the correlogram folds onto ``|offset|`` (distance depends on
        each axis only through it): for every distinct ``|offset|`` the position of
        its first member, then the bins with a second member (the mirrored shift)
        and that member's position.
    index : numpy.ndarray
        For every voxel of the folded correlogram (flattened), its key's position in
        ``distances``; ``len(distances)`` beyond ``max_distance``. A quarter (2D) or an
        eighth (3D) of the correlogram's size.
    counts : numpy.ndarray
        Number of correlogram voxels per key.
    """

    frame_shape: tuple[int, ...]
    spacing: tuple[float, ...]
    max_distance: float | None
    fiji_compat: bool
    shift_lo: tuple[int, ...]
    shift_hi: tuple[int, ...]
    offsets: tuple[np.ndarray, ...]
    distances: np.ndarray
    folds: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]
    index: np.ndarray
    counts: np.ndarray

    @property
    def ccf_shape(self) -> tuple[int, ...]:
        """Shape of the correlogram (number of shifts per axis)."""
        return tuple(h - lo + 1 for lo, h in zip(self.shift_lo, self.shift_hi))

    @property
    def max_shift(self) -> tuple[int, ...]:
        """Largest absolute shift held per axis (voxels)."""
        return tuple(max(-lo, h) for lo, h in zip(self.shift_lo, self.shift_hi))

    @property
    def shift_coords(self) -> tuple[np.ndarray, ...]:
        """Physical shift coordinate per correlogram axis (signed)."""
        return self.offsets

    def distance_grid(self) -> np.ndarray:
        """Physical distance of every correlogram voxel (float64, ``ccf_shape``).

        With ``fiji_compat`` the squares are summed x first, as the plugin does.
        """
        d2 = np.zeros(self.ccf_shape)
        axes = list(enumerate(self.offsets))
        for axis, off in reversed(axes) if self.fiji_compat else axes:
            shape = [1] * len(self.offsets)
            shape[axis] = -1
            d2 = d2 + (off**2).reshape(shape)
        return np.sqrt(d2)

    def _key(self):
        return (self.frame_shape, self.spacing, self.max_distance, self.fiji_compat)

    def __dask_tokenize__(self):
        return ("ProfileGeometry",) + self._key()

    def __reduce__(self):
        # Pickle as the key only: a Dask graph carries a few numbers, and each worker
        # builds (and caches) the index once.
        return (profile_geometry, self._key())


def shift_range(frame_shape, spacing, max_distance=None):
    """The integer shifts a correlogram holds per axis.

    Parameters
    ----------
    frame_shape : tuple of int
        Frame shape (voxels).
    spacing : tuple of float
        Voxel size per axis (physical units).
    max_distance : float, optional
        Keep only shifts with ``|s_d| * spacing_d <= max_distance``.

    Returns
    -------
    lo, hi : tuple of int
        Per axis, the shifts ``lo..hi`` (zero shift at index ``-lo``). Without a
        maximum distance, the frame's own shape with zero at ``floor(N/2)``.
    """
    lo, hi = [], []
    for n, s in zip(frame_shape, spacing):
        a, b = -(n // 2), n - 1 - n // 2
        if max_distance is not None:
            k = int(np.floor(max_distance / s + 1e-9))
            a, b = max(a, -k), min(b, k)
        lo.append(a)
        hi.append(b)
    return tuple(lo), tuple(hi)


def profile_geometry(
    frame_shape: tuple[int, ...],
    spacing: tuple[float, ...],
    max_distance: float | None = None,
    fiji_compat: bool = False,
) -> ProfileGeometry:
    """Distance keys and the voxel-to-key index of a correlogram (cached per geometry).

    Parameters
    ----------
    frame_shape : tuple of int
        Frame shape, 2D or 3D (voxels).
    spacing : tuple of float
        Physical voxel size per axis, same order as ``frame_shape``.
    max_distance : float, optional
        Profile only out to this distance (physical units); None = to the corner.
    fiji_compat : bool
        The Fiji plugin's keys: distances measured from ``(N - 1) / 2`` (for even N
        every distance is then off by half a voxel on that axis), each the float64
        value of ``sqrt(sum ((p_d - c_d) * s_d)**2)`` summed over the axes x first,
        and every distinct such value its own key (equal distances that round
        differently stay apart: 6196 keys instead of 5473 for 256 x 256 at spacing
        0.1). Default: from the true zero shift, equal distances merged.

    Returns
    -------
    ProfileGeometry
    """
    return _cached_geometry(
        tuple(int(n) for n in frame_shape),
        tuple(float(s) for s in spacing),
        None if max_distance is None else float(max_distance),
        bool(fiji_compat),
    )


def _fold(offsets: np.ndarray):
    """How one axis folds onto its distinct |offset| values (see ProfileGeometry.folds)."""
    magnitudes, inverse = np.unique(np.abs(offsets), return_inverse=True)
    members = np.bincount(inverse, minlength=len(magnitudes))
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(members)[:-1]])
    paired = np.nonzero(members == 2)[0]
    return magnitudes, members, (order[starts], paired, order[starts[paired] + 1])


def _outer(arrays, combine):
    """Combine 1D arrays over a grid (``combine`` is np.add or np.multiply)."""
    grid = arrays[0]
    for a in arrays[1:]:
        grid = combine.outer(grid, a)
    return grid


@lru_cache(maxsize=16)
def _cached_geometry(frame_shape, spacing, max_distance, fiji_compat) -> ProfileGeometry:
    lo, hi = shift_range(frame_shape, spacing, max_distance)
    offsets = []
    for n, s, a, b in zip(frame_shape, spacing, lo, hi):
        centre_shift = (n // 2 - (n - 1) / 2) if fiji_compat else 0.0
        offsets.append((np.arange(a, b + 1) + centre_shift) * s)
    folded = [_fold(off) for off in offsets]
    # distances over the folded correlogram: |offset| per axis ((-a)**2 == a**2 exactly)
    squares = [m * m for m, _, _ in folded]
    multiplicity = _outer([members for _, members, _ in folded], np.multiply).ravel()
    if fiji_compat:
        # the plugin's running sum x first: outer over (x, y, z), back to (z, y, x)
        distance = np.sqrt(_outer(squares[::-1], np.add).transpose().ravel())
        distances, index = np.unique(distance, return_inverse=True)
    else:
        d2 = _outer(squares, np.add).ravel()
        quantum = _QUANTUM * min(spacing) ** 2
        _, first, index = np.unique(np.rint(d2 / quantum).astype(np.int64), return_index=True,
                                    return_inverse=True)
        distances = np.sqrt(d2[first])
    index = index.astype(np.intp).ravel()
    n_keys = len(distances)
    if max_distance is not None:
        n_keys = int(np.searchsorted(distances, max_distance * (1 + 1e-12), side="right"))
        distances = distances[:n_keys]
        index[index >= n_keys] = n_keys
    counts = np.bincount(index, weights=multiplicity, minlength=n_keys + 1)[:n_keys].astype(np.int64)
    folds = tuple(f for _, _, f in folded)
    for a in (*offsets, distances, index, counts, *[x for f in folds for x in f]):
        a.setflags(write=False)
    return ProfileGeometry(
        frame_shape=frame_shape,
        spacing=spacing,
        max_distance=max_distance,
        fiji_compat=fiji_compat,
        shift_lo=lo,
        shift_hi=hi,
        offsets=tuple(offsets),
        distances=distances,
        folds=folds,
        index=index,
        counts=counts,
    )


def radial_profile(correlogram: np.ndarray, geometry: ProfileGeometry) -> np.ndarray:
    """Mean of the correlogram voxels at each distinct distance.

    Parameters
    ----------
    correlogram : numpy.ndarray
        Shape ``geometry.ccf_shape``.
    geometry : ProfileGeometry

    Returns
    -------
    numpy.ndarray
        float64, one value per ``geometry.distances`` entry.
    """
    if correlogram.shape != geometry.ccf_shape:
        raise ValueError(f"correlogram shape {correlogram.shape} != geometry {geometry.ccf_shape}")
    folded = correlogram
    for axis, (first, paired_bins, second) in enumerate(geometry.folds):
        # sum each shift with its mirror: the first fold halves the data and turns it
        # into float64, so the sums keep double precision at half the memory
        out = np.take(folded, first, axis=axis).astype(np.float64, copy=False)
        index = [slice(None)] * folded.ndim
        index[axis] = paired_bins
        out[tuple(index)] += np.take(folded, second, axis=axis)
        folded = out
    n = len(geometry.distances)
    sums = np.bincount(geometry.index, weights=folded.ravel(), minlength=n + 1)[:n]
    return sums / geometry.counts
