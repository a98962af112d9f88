"""The classic colocalization coefficients of two channels, per frame, exact at any size.

:func:`coefficients` builds a Dask graph around the pure kernels of
:mod:`cccdask.kernels.coefficients`: one small statistics object per chunk, merged in a
tree per frame, then finalised into coefficients. NumPy inputs are computed at once;
Dask (or Dask-backed xarray) inputs give a lazy :class:`xarray.Dataset`.
"""

from __future__ import annotations

import itertools
import sys
import types
from numbers import Real
from typing import Any, Sequence

import dask
import dask.array as da
import numpy as np
import xarray as xr

from cccdask.frames import Frames, frame_time_coords, prepare_inputs
from cccdask.kernels.coefficients import (
    COEFFICIENT_NAMES,
    MAP_NAMES,
    ChannelThreshold,
    MapConstants,
    Moments,
    PartStatistics,
    Thresholds,
    coefficient_maps,
    finalize,
    part_statistics,
    shifted_moments,
)

__all__ = ["coefficients"]

REASON_DTYPE = "<U96"
MERGE_FAN_IN = 8

THRESHOLD_SEMANTICS = (
    "Huygens conventions (spec/coefficients.md). Per channel a threshold T and a range rho. "
    "Background-corrected value v' = max(v - T, 0) (v itself when T is 'none'), used by "
    "pearson, object_pearson, overlap, k1, k2, m1, m2, icq, van_steensel and the ranks of "
    "spearman, object_spearman and kendall_tau (values at or below T share one tied rank). "
    "Weight w = 1 if v > T else 0 (rho = 0), or linear from 0 at T - rho/2 to 1 at "
    "T + rho/2; with T 'none' the weight uses T = 0. m1 = sum R' wG / sum R', "
    "m2 = sum G' wR / sum G'; intersection, i1, i2 from the weights. Object voxels "
    "(object_pearson, object_spearman): R > T_R or G > T_G on the raw values (hard, rho "
    "ignored). rho changes only the weights."
)


# ---------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------
def _per_channel(value: Any, name: str) -> tuple[Any, Any]:
    """One value for both channels, or a pair (channel 1, channel 2)."""
    if isinstance(value, (str, bytes)) or value is None or isinstance(value, Real):
        return value, value
    try:
        pair = tuple(value)
    except TypeError:
        raise ValueError(
            f"{name} must be a number, None, or a pair (channel 1, channel 2); got {value!r}."
        ) from None
    if len(pair) != 2:
        raise ValueError(f"{name} must be one value or a pair (channel 1, channel 2); got {len(pair)} values.")
    return pair


def resolve_thresholds(threshold: Any = None, threshold_range: Any = 0.0) -> Thresholds:
    """Turn the user's ``threshold`` / ``threshold_range`` into :class:`Thresholds`.

    Raises
    ------
    ValueError
        A threshold that is not a finite number or None, a range that is negative or not
        a number.
    """
    levels = _per_channel(threshold, "threshold")
    ranges = _per_channel(threshold_range, "threshold_range")
    channels = []
    for channel, (level, soft_range) in enumerate(zip(levels, ranges), start=1):
        if isinstance(level, str):
            raise ValueError(
                f"threshold {level!r} for channel {channel} is not supported; give a number in "
                f"intensity units or None (no threshold)."
            )
        if level is not None and not isinstance(level, Real):
            raise ValueError(f"threshold for channel {channel} must be a number or None; got {level!r}.")
        if soft_range is None:
            soft_range = 0.0
        if not isinstance(soft_range, Real) or not np.isfinite(soft_range) or soft_range < 0:
            raise ValueError(
                f"threshold_range for channel {channel} is {soft_range!r}; it must be a finite "
                f"number >= 0 in intensity units (0 = hard threshold)."
            )
        channels.append(ChannelThreshold(None if level is None else float(level), float(soft_range)))
    return Thresholds(*channels)


def _shift_values(van_steensel_shifts: Any) -> np.ndarray | None:
    if van_steensel_shifts is None:
        return None
    if not isinstance(van_steensel_shifts, (int, np.integer)) or isinstance(van_steensel_shifts, bool) \
            or van_steensel_shifts < 0:
        raise ValueError(
            f"van_steensel_shifts is {van_steensel_shifts!r}; give the largest shift S as an "
            f"integer >= 0 (voxels; shifts -S..S are computed), or None to skip Van Steensel."
        )
    return np.arange(-int(van_steensel_shifts), int(van_steensel_shifts) + 1)


# ---------------------------------------------------------------------------------------
# Graph
# ---------------------------------------------------------------------------------------
def _as_dask(array: Any, chunks: Any = "auto") -> da.Array:
    if isinstance(array, da.Array):
        return array
    return da.from_array(np.asarray(array), chunks=chunks)


def _frame_arrays(frames: Frames, index: int) -> tuple[da.Array, da.Array, da.Array | None]:
    """The three arrays of one frame as Dask arrays on the chunk grid of channel 1."""
    image1 = _as_dask(frames.image1.data[index])
    image2 = _as_dask(frames.image2.data[index], chunks=image1.chunks).rechunk(image1.chunks)
    mask_frame = frames.mask_frame(index)
    mask = None
    if mask_frame is not None:
        mask = _as_dask(mask_frame.data, chunks=image1.chunks).rechunk(image1.chunks)
    return image1, image2, mask


def _merge_all(parts: Sequence[Any]) -> Any:
    merged = parts[0]
    for part in parts[1:]:
        merged = merged.merge(part)
    return merged


def _tree_merge(parts: list[Any]) -> Any:
    """Merge delayed statistics in a tree of fan-in :data:`MERGE_FAN_IN`."""
    while len(parts) > 1:
        parts = [
            dask.delayed(_merge_all, pure=True)(parts[i : i + MERGE_FAN_IN])
            for i in range(0, len(parts), MERGE_FAN_IN)
        ]
    return parts[0]


def _frame_statistics(image1: da.Array, image2: da.Array, mask: da.Array | None, thresholds: Thresholds):
    blocks1 = image1.to_delayed().ravel()
    blocks2 = image2.to_delayed().ravel()
    blocks_mask = mask.to_delayed().ravel() if mask is not None else [None] * len(blocks1)
    parts = [
        dask.delayed(part_statistics, pure=True)(b1, b2, bm, thresholds)
        for b1, b2, bm in zip(blocks1, blocks2, blocks_mask)
    ]
    return _tree_merge(parts)


def _frame_shifted_moments(
    image1: da.Array, image2: da.Array, mask: da.Array | None, thresholds: Thresholds,
    shifts: np.ndarray, axis: int,
):
    """Van Steensel moments of one frame: one task per chunk, its neighbours' halo attached."""
    halo = int(np.abs(shifts).max()) if shifts.size else 0
    length = image1.shape[axis]
    bounds = [np.cumsum((0,) + c) for c in image1.chunks]
    parts = []
    for block in itertools.product(*(range(len(c)) for c in image1.chunks)):
        index = [slice(int(b[i]), int(b[i + 1])) for b, i in zip(bounds, block)]
        start, stop = index[axis].start, index[axis].stop
        ext_start, ext_stop = max(0, start - halo), min(length, stop + halo)
        index[axis] = slice(ext_start, ext_stop)
        region = tuple(index)
        parts.append(
            dask.delayed(shifted_moments, pure=True)(
                image1[region], image2[region], None if mask is None else mask[region],
                thresholds, shifts, (start - ext_start, stop - ext_start), axis,
            )
        )
    return _tree_merge(parts)


def _finalize_frame(stats: PartStatistics, shifted: Moments | None, thresholds: Thresholds,
                    n_shifts: int) -> tuple[np.ndarray, np.ndarray]:
    """Values and NaN reasons of one frame: the coefficients, then Van Steensel per shift."""
    results = finalize(stats, thresholds)
    values = [results[name][0] for name in COEFFICIENT_NAMES]
    reasons = [results[name][1] for name in COEFFICIENT_NAMES]
    if shifted is not None:
        r, why = shifted.pearson()
        if stats.n_nonfinite:
            r = np.full(n_shifts, np.nan)
            why = np.full(n_shifts, results["pearson"][1])
        values.extend(np.atleast_1d(r).tolist())
        undefined = [w for w in np.atleast_1d(why).tolist() if w]
        summary = ""
        if undefined:
            summary = f"undefined at {len(undefined)} of {n_shifts} shifts: {sorted(set(undefined))[0]}"
        reasons.append(summary)
    return np.asarray(values, dtype=np.float64), np.asarray(reasons, dtype=REASON_DTYPE)


def _map_block(image1, image2, mask, thresholds, constants):
    return coefficient_maps(image1, image2, mask, thresholds, constants)


def _map_block_unmasked(image1, image2, thresholds, constants):
    return coefficient_maps(image1, image2, None, thresholds, constants)


def _frame_maps(image1, image2, mask, thresholds, stats) -> da.Array:
    constants = dask.delayed(MapConstants.from_statistics, pure=True)(stats, thresholds)
    chunks = ((len(MAP_NAMES),),) + image1.chunks
    if mask is None:
        return da.map_blocks(_map_block_unmasked, image1, image2, thresholds, constants,
                             new_axis=0, chunks=chunks, dtype=np.float64)
    return da.map_blocks(_map_block, image1, image2, mask, thresholds, constants,
                         new_axis=0, chunks=chunks, dtype=np.float64)


# ---------------------------------------------------------------------------------------
# Public function
# ---------------------------------------------------------------------------------------
def coefficients(
    image1: Any,
    image2: Any,
    mask: Any = None,
    *,
    threshold: float | Sequence[float | None] | None = None,
    threshold_range: float | Sequence[float] = 0.0,
    maps: bool = False,
    van_steensel_shifts: int | None = 20,
    van_steensel_axis: str = "x",
    spacing: float | Sequence[float] | None = None,
) -> xr.Dataset:
    """The classic colocalization coefficients of two channels, per frame.

    Definitions follow the Huygens Colocalization Analyzer (``spec/coefficients.md``);
    the Dataset's ``threshold_semantics`` attribute states them.

    Parameters
    ----------
    image1, image2 : numpy.ndarray, dask.array.Array or xarray.DataArray
        The channels R (1) and G (2): one 2D/3D frame, or a DataArray with dims from
        ``t, z, y, x`` (a ``t`` dim gives per-frame results). Any real dtype.
    mask : array-like, optional
        Non-zero = inside. One frame shared by every frame, or one per frame.
    threshold : float, None or pair, optional
        Threshold T in intensity units, for both channels or as ``(T1, T2)`` (an entry
        may be None). None: no background subtraction.
    threshold_range : float or pair, optional
        Soft-threshold range rho >= 0 in intensity units (both channels or a pair).
    maps : bool, optional
        Add the per-voxel maps ``<name>_map`` for pearson, spearman, overlap, k1, k2,
        m1, m2, intersection (float64, image-sized, lazy for Dask input; 0 outside the
        mask; each sums over a frame to its coefficient).
    van_steensel_shifts : int or None, optional
        Largest shift S in voxels: Van Steensel's CCF is computed for shifts -S..S.
        None skips it (it is the costliest coefficient: 2S+1 products per voxel).
    van_steensel_axis : {"x", "y", "z"}, optional
        The frame axis to shift along.
    spacing : float or sequence of float, optional
        Voxel size (only recorded; the coefficients do not depend on it).

    Returns
    -------
    xarray.Dataset
        One variable per coefficient (scalars, or over ``t`` for a time series);
        ``van_steensel`` over ``shift`` (voxels: channel 1 shifted by +dx along the
        axis, pairs R(x - dx), G(x), no wrap-around, both voxels inside the mask);
        ``nan_reason`` (str over ``coefficient``): why a value is NaN, ``""`` where it
        is defined; maps when asked for. ``attrs`` record the thresholds and semantics.

    Raises
    ------
    ValueError
        Inputs that cannot be valid: shapes that differ, non-numeric dtypes, a negative
        threshold range, an unknown shift axis. Frames that merely have no defined
        coefficient (empty mask, zero variance, NaN voxels) give NaN with a reason.
    """
    frames = prepare_inputs(image1, image2, mask, spacing)
    thresholds = resolve_thresholds(threshold, threshold_range)
    shifts = _shift_values(van_steensel_shifts)
    if van_steensel_axis not in frames.spatial_dims:
        raise ValueError(
            f"van_steensel_axis {van_steensel_axis!r} is not a frame axis; choose one of "
            f"{frames.spatial_dims}."
        )
    axis = frames.spatial_dims.index(van_steensel_axis)
    n_shifts = 0 if shifts is None else len(shifts)
    n_values = len(COEFFICIENT_NAMES) + n_shifts
    n_reasons = len(COEFFICIENT_NAMES) + (shifts is not None)

    values, reasons, frame_maps = [], [], []
    for index in range(frames.n_frames):
        image1_frame, image2_frame, mask_frame = _frame_arrays(frames, index)
        stats = _frame_statistics(image1_frame, image2_frame, mask_frame, thresholds)
        shifted = None
        if shifts is not None:
            shifted = _frame_shifted_moments(image1_frame, image2_frame, mask_frame, thresholds, shifts, axis)
        result = dask.delayed(_finalize_frame, pure=True, nout=2)(stats, shifted, thresholds, n_shifts)
        values.append(da.from_delayed(result[0], shape=(n_values,), dtype=np.float64))
        reasons.append(da.from_delayed(result[1], shape=(n_reasons,), dtype=REASON_DTYPE))
        if maps:
            frame_maps.append(_frame_maps(image1_frame, image2_frame, mask_frame, thresholds, stats))

    value_table = da.stack(values)
    data_vars: dict[str, Any] = {
        name: (("t",), value_table[:, k]) for k, name in enumerate(COEFFICIENT_NAMES)
    }
    reason_names = list(COEFFICIENT_NAMES)
    coords: dict[str, Any] = dict(frame_time_coords(frames))
    if shifts is not None:
        data_vars["van_steensel"] = (("t", "shift"), value_table[:, len(COEFFICIENT_NAMES):])
        coords["shift"] = ("shift", shifts, {"units": "voxel", "axis": van_steensel_axis})
        reason_names.append("van_steensel")
    data_vars["nan_reason"] = (("t", "coefficient"), da.stack(reasons))
    coords["coefficient"] = ("coefficient", reason_names)
    if maps:
        stacked = da.stack(frame_maps)  # (t, map, *spatial)
        for k, name in enumerate(MAP_NAMES):
            data_vars[f"{name}_map"] = (("t", *frames.spatial_dims), stacked[:, k])
        for dim in frames.spatial_dims:
            if dim in frames.image1.coords:
                coords[dim] = frames.image1.coords[dim]

    dataset = xr.Dataset(data_vars, coords=coords, attrs=_attrs(frames, thresholds, van_steensel_axis, shifts))
    if not frames.time_series:
        dataset = dataset.isel(t=0, drop=True)
    if not frames.lazy:
        dataset = dataset.compute(scheduler="threads")
    return dataset


def _attrs(frames: Frames, thresholds: Thresholds, axis_name: str, shifts: np.ndarray | None) -> dict[str, Any]:
    def level(channel: ChannelThreshold) -> Any:
        return "none" if channel.level is None else channel.level

    return {
        "threshold_channel1": level(thresholds.channel1),
        "threshold_channel2": level(thresholds.channel2),
        "threshold_range_channel1": thresholds.channel1.soft_range,
        "threshold_range_channel2": thresholds.channel2.soft_range,
        "threshold_method": "manual" if (thresholds.channel1.level is not None
                                         or thresholds.channel2.level is not None) else "none",
        "threshold_semantics": THRESHOLD_SEMANTICS,
        "rank_method": (
            "exact average ranks from the joint histogram of the frame inside the mask "
            "(distinct value pairs with counts, merged over chunks; no global sort)"
        ),
        "van_steensel": (
            "none" if shifts is None else
            f"Pearson r of R'(x - dx) against G'(x) along {axis_name}, dx in voxels, over "
            f"voxel pairs both inside the mask and the image (no wrap-around)"
        ),
        "nan_reason": "per frame and coefficient, why the value is NaN; empty where it is defined",
        "spacing": list(frames.spacing),
        "units": frames.units,
        "definitions": "Huygens Colocalization Analyzer (spec/coefficients.md)",
    }


class _CallableModule(types.ModuleType):
    """This module, callable as :func:`coefficients`.

    The package exposes the function as ``cccdask.coefficients``, but Python's import
    system binds the package attribute of that name to this submodule once it has been
    imported; making the module callable keeps ``cccdask.coefficients(...)`` working
    whichever of the two the name resolves to.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> xr.Dataset:
        return coefficients(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
