"""The classic colocalization coefficients of two channels, per frame, exact at any size.

:func:`coefficients` builds a Dask graph around the pure kernels of
:mod:`cccdask.kernels.coefficients`: one small statistics object per chunk, merged in a
tree per frame, then finalised into coefficients. NumPy inputs are computed at once;
Dask (or Dask-backed xarray) inputs give a lazy :class:`xarray.Dataset`.
"""

from __future__ import annotations

import itertools
import math
import operator
from dataclasses import dataclass, replace
from numbers import Real
from typing import Any, Sequence

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.utils import parse_bytes

from cccdask.frames import Frames, frame_time_coords, prepare_inputs
from cccdask.graph import TaskLayer, as_dask, output_array
from cccdask.kernels.costes import (
    CURVE_POINTS,
    CostesThreshold,
    block_shape,
    costes_threshold,
    cytofluorogram as cytofluorogram_of_table,
    mask_blocks,
    randomized_pearson,
    significance_summary,
)
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
    statistics_from_table,
)

__all__ = ["coefficients", "costes_significance", "plot_cytofluorogram"]

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
    "ignored). rho changes only the weights. kendall_tau is tau-b over the mask. With "
    "threshold='costes' T is found per frame (variable 'threshold')."
)


PRESET_SEMANTICS = {
    "coloc2": (
        "Fiji Coloc 2 conventions: values are not background-corrected (v' = v); above "
        "threshold means v >= T and v > 0; m1 = sum of R where G is above threshold / sum of "
        "all R in the mask (tM1); ICQ counts zero products as positive; Costes: orthogonal "
        "regression, highest threshold with r-below <= 0. Weights, object set and "
        "intersection use the same above-threshold test."
    ),
    "jacop": (
        "JACoP conventions: values are not background-corrected (v' = v); above threshold "
        "means v > T; m1 = sum of R where R and G are above their thresholds / sum of R above "
        "its own threshold; ICQ counts positive products; Costes: ordinary least squares, "
        "threshold at the global minimum of r-below."
    ),
    "skimage": (
        "scikit-image conventions: values are not background-corrected (v' = v); above "
        "threshold means v > T (the binary masks skimage takes); m1 = "
        "manders_coloc_coeff(R, G > T_G) = sum of R where G > T_G / sum of R."
    ),
}


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


@dataclass(frozen=True)
class Preset:
    """Conventions of one tool, where the tools differ (spec, last section).

    Attributes
    ----------
    subtract : bool
        Background-correct values by the threshold, ``max(v - T, 0)`` (Huygens only).
    inclusive : bool
        Above threshold means ``v >= T and v > 0`` (Coloc 2) rather than ``v > T``.
    manders : {"all", "own"}
        m1's denominator: all of R over the mask, or R above its own threshold (JACoP).
    icq_zero_positive : bool
        ICQ counts zero products as positive (Coloc 2).
    costes_regression : {"orthogonal", "ols"}
    costes_rule : {"first_nonpositive", "minimum"}
        Costes: the highest threshold with r-below <= 0, or the global minimum (JACoP).
    """

    subtract: bool
    inclusive: bool
    manders: str
    icq_zero_positive: bool
    costes_regression: str
    costes_rule: str


PRESETS = {
    "huygens": Preset(True, False, "all", False, "orthogonal", "first_nonpositive"),
    "coloc2": Preset(False, True, "all", True, "orthogonal", "first_nonpositive"),
    "jacop": Preset(False, False, "own", False, "ols", "minimum"),
    "skimage": Preset(False, False, "all", False, "orthogonal", "first_nonpositive"),
}


def _preset(preset: str) -> Preset:
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} is unknown; choose one of {sorted(PRESETS)}.")
    return PRESETS[preset]


def resolve_thresholds(threshold: Any = None, threshold_range: Any = 0.0, preset: str = "huygens") -> Thresholds:
    """Turn the user's ``threshold`` / ``threshold_range`` into :class:`Thresholds`.

    ``threshold="costes"`` gives thresholds without levels (they are found per frame);
    see :func:`is_automatic`.

    Raises
    ------
    ValueError
        A threshold that is not a finite number, None or "costes"; a range that is
        negative or not a number; an unknown preset.
    """
    conventions = _preset(preset)
    automatic = isinstance(threshold, str) and threshold == "costes"
    levels = (None, None) if automatic else _per_channel(threshold, "threshold")
    ranges = _per_channel(threshold_range, "threshold_range")
    channels = []
    for channel, (level, soft_range) in enumerate(zip(levels, ranges), start=1):
        if isinstance(level, str):
            raise ValueError(
                f"threshold {level!r} for channel {channel} is not supported; give a number in "
                f"intensity units, None (no threshold), or 'costes' (for both channels)."
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
        channels.append(ChannelThreshold(None if level is None else float(level), float(soft_range),
                                         subtract=conventions.subtract, inclusive=conventions.inclusive))
    return Thresholds(*channels, manders=conventions.manders, icq_zero_positive=conventions.icq_zero_positive)


def _with_levels(thresholds: Thresholds, level1: float, level2: float) -> Thresholds:
    return replace(
        thresholds,
        channel1=replace(thresholds.channel1, level=float(level1)),
        channel2=replace(thresholds.channel2, level=float(level2)),
    )


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
def _chunked_inputs(frames: Frames, whole_frames: bool = False) -> tuple[da.Array, da.Array, da.Array | None]:
    """The inputs as Dask arrays: channel 1 with one frame per chunk along ``t`` (and one
    chunk per frame with ``whole_frames``), channel 2 and the mask on its chunks (a mask
    shared by every frame on its spatial chunks)."""
    n_spatial = len(frames.spatial_dims)
    spatial = (-1 if whole_frames else "auto",) * n_spatial
    image1 = as_dask(frames.image1.data, chunks=(1, *spatial)).rechunk((1, *spatial))
    image2 = as_dask(frames.image2.data, chunks=image1.chunks).rechunk(image1.chunks)
    mask = None
    if frames.mask is not None:
        chunks = image1.chunks if "t" in frames.mask.dims else image1.chunks[1:]
        mask = as_dask(frames.mask.data, chunks=chunks).rechunk(chunks)
    return image1, image2, mask


def _frames_per_output_chunk(frames: Frames) -> int:
    """Frames per chunk of the per-frame results: as many as hold Dask's chunk size
    (``array.chunk-size``, 128 MiB by default) of input, so that a long series of small
    frames does not make a task per frame and variable."""
    frame_bytes = math.prod(frames.frame_shape) * (frames.image1.dtype.itemsize + frames.image2.dtype.itemsize)
    per_chunk = parse_bytes(dask.config.get("array.chunk-size")) // max(frame_bytes, 1)
    return int(min(max(per_chunk, 1), frames.n_frames))


def _merge_all(parts: Sequence[Any]) -> Any:
    merged = parts[0]
    for part in parts[1:]:
        merged = merged.merge(part)
    return merged


def _join_along(blocks: Sequence[np.ndarray | None], axis: int, cut: slice) -> np.ndarray | None:
    """Neighbouring chunks joined along ``axis``, then cut to the wanted extent."""
    if blocks[0] is None:
        return None
    joined = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=axis)
    index = [slice(None)] * joined.ndim
    index[axis] = cut
    return joined[tuple(index)]


def _shifted_moments_of_blocks(blocks1, blocks2, blocks_mask, axis, cut, thresholds, shifts, core):
    return shifted_moments(
        _join_along(blocks1, axis, cut), _join_along(blocks2, axis, cut),
        _join_along(blocks_mask, axis, cut), thresholds, shifts, core, axis,
    )


class _FrameTasks(TaskLayer):
    """The per-frame tasks of one :func:`coefficients` or :func:`costes_significance` call,
    on the chunks of its inputs (see :func:`_chunked_inputs`)."""

    def __init__(self, prefix: str, image1: da.Array, image2: da.Array, mask: da.Array | None, token: str):
        super().__init__(prefix, token, [image1, image2, mask])
        self.inputs = (image1, image2, mask)
        self.spatial_chunks = image1.chunks[1:]
        self.blocks = list(itertools.product(*(range(len(c)) for c in self.spatial_chunks)))

    def chunks(self, t: int, block: tuple[int, ...]) -> list[tuple | None]:
        """Channel 1, channel 2 and the mask (None: no mask) at spatial block ``block`` of
        frame ``t``: a chunk's key, or a task taking the frame out of a chunk's ``t`` axis."""
        return [None if array is None else
                (array.name, *block) if array.ndim == len(block) else (operator.getitem, (array.name, t, *block), 0)
                for array in self.inputs]

    def merged(self, kind: str, t: int, keys: list[tuple]) -> tuple:
        """The key of the merge of the statistics at ``keys``, by a tree of fan-in
        :data:`MERGE_FAN_IN`."""
        level = 0
        while len(keys) > 1:
            groups = [keys[i:i + MERGE_FAN_IN] for i in range(0, len(keys), MERGE_FAN_IN)]
            keys = [self.add(f"{kind}-merge", (t, level, i), _merge_all, group) for i, group in enumerate(groups)]
            level += 1
        return keys[0]

    def statistics(self, t: int, thresholds: Thresholds) -> tuple:
        """Frame ``t``'s statistics (:func:`part_statistics` per chunk, merged)."""
        parts = [self.add("part", (t, *block), part_statistics, *self.chunks(t, block), thresholds)
                 for block in self.blocks]
        return self.merged("part", t, parts)

    def shifted_moments(self, t: int, thresholds: Any, shifts: np.ndarray, axis: int) -> tuple:
        """Frame ``t``'s Van Steensel moments: one task per chunk, given the neighbouring
        chunks that its halo of ``max|shift|`` voxels along ``axis`` reaches (the chunks
        themselves, the keys the other statistics read: every chunk is read once)."""
        halo = int(np.abs(shifts).max()) if shifts.size else 0
        bounds = np.cumsum((0,) + self.spatial_chunks[axis])
        length = int(bounds[-1])
        parts = []
        for block in self.blocks:
            j = block[axis]
            start, stop = int(bounds[j]), int(bounds[j + 1])
            ext_start, ext_stop = max(0, start - halo), min(length, stop + halo)
            first = int(np.searchsorted(bounds, ext_start, side="right") - 1)
            last = int(np.searchsorted(bounds, ext_stop, side="left"))  # exclusive block index
            along = [self.chunks(t, block[:axis] + (k,) + block[axis + 1:]) for k in range(first, last)]
            neighbours = [list(keys) for keys in zip(*along)]  # per input, along the axis
            offset = int(bounds[first])
            cut = slice(ext_start - offset, ext_stop - offset)
            parts.append(self.add("shifted", (t, *block), _shifted_moments_of_blocks, *neighbours, axis, cut,
                                  thresholds, shifts, (start - ext_start, stop - ext_start)))
        return self.merged("shifted", t, parts)

    def per_frame_output(self, name: str, results: Sequence[tuple], frames_per_chunk: int,
                         width: int, dtype, item: int | None = None) -> da.Array:
        """A ``(t, width)`` Dask array of the frames' results (``results[t]`` is a key; its
        item ``item`` when given), ``frames_per_chunk`` frames per chunk."""
        starts = range(0, len(results), frames_per_chunk)
        outputs = {(name, b, 0): (_stacked, list(results[start:start + frames_per_chunk]), item)
                   for b, start in enumerate(starts)}
        chunks = tuple(min(frames_per_chunk, len(results) - start) for start in starts)
        return output_array(self.graph(), self.name, name, outputs, (chunks, (width,)), dtype)

    def maps(self, t: int, thresholds: Any, constants: tuple, name: str) -> dict:
        """The tasks of frame ``t``'s map chunks, keyed ``(name, t, 0, *block)``."""
        return {(name, t, 0, *block): (np.expand_dims, (coefficient_maps, *self.chunks(t, block), thresholds,
                                                        constants), 0)
                for block in self.blocks}


def _stacked(results: Sequence[Any], item: int | None) -> np.ndarray:
    """Each frame's result (its item ``item`` when given), stacked along a new first axis."""
    return np.stack([result if item is None else result[item] for result in results])


def _automatic_thresholds(stats: PartStatistics, thresholds: Thresholds, preset: Preset):
    """Costes' thresholds of a frame, its thresholds and its statistics restated with them."""
    costes = costes_threshold(stats.table, preset.costes_regression, preset.costes_rule)
    if costes.reason or stats.n_nonfinite:
        return costes, thresholds, stats
    found = _with_levels(thresholds, costes.threshold1, costes.threshold2)
    # the joint histogram is exact: the statistics under the found thresholds follow from it
    return costes, found, statistics_from_table(stats.table, found, stats.n_nonfinite)


def _finalize_frame(stats: PartStatistics, shifted: Moments | None, thresholds: Thresholds,
                    costes: CostesThreshold | None, n_shifts: int,
                    cytofluorogram_bins: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Values and NaN reasons of one frame, packed as :func:`_layout` describes."""
    results = finalize(stats, thresholds)
    if costes is not None and costes.reason:
        results = {name: (np.nan, f"Costes threshold undefined: {costes.reason}") for name in results}
    values = [results[name][0] for name in COEFFICIENT_NAMES]
    reasons = [results[name][1] for name in COEFFICIENT_NAMES]
    for channel in (thresholds.channel1, thresholds.channel2):
        values.append(np.nan if channel.level is None else channel.level)
    if shifted is not None:
        r, why = shifted.pearson()
        if stats.n_nonfinite or (costes is not None and costes.reason):
            r = np.full(n_shifts, np.nan)
            why = np.full(n_shifts, results["pearson"][1])
        values.extend(np.atleast_1d(r).tolist())
        undefined = [w for w in np.atleast_1d(why).tolist() if w]
        summary = ""
        if undefined:
            summary = f"undefined at {len(undefined)} of {n_shifts} shifts: {sorted(set(undefined))[0]}"
        reasons.append(summary)
    if costes is not None:
        values.extend([costes.slope, costes.intercept, costes.resolution])
        values.extend(costes.curve_threshold1.tolist())
        values.extend(costes.curve_r_below.tolist())
        reasons.append(costes.reason)
    if cytofluorogram_bins is not None:
        counts, edges1, edges2 = cytofluorogram_of_table(stats.table, cytofluorogram_bins)
        values.extend(counts.ravel().tolist())
        values.extend(edges1.tolist())
        values.extend(edges2.tolist())
    return np.asarray(values, dtype=np.float64), np.asarray(reasons, dtype=REASON_DTYPE)


def _layout(n_shifts: int | None, automatic: bool,
            cytofluorogram_bins: int | None = None) -> list[tuple[str, tuple[str, ...], int]]:
    """Names, extra dims and lengths of the values :func:`_finalize_frame` packs."""
    layout = [(name, (), 1) for name in COEFFICIENT_NAMES]
    layout.append(("threshold", ("channel",), 2))
    if n_shifts is not None:
        layout.append(("van_steensel", ("shift",), n_shifts))
    if automatic:
        layout += [("costes_slope", (), 1), ("costes_intercept", (), 1), ("costes_resolution", (), 1),
                   ("costes_curve_threshold1", ("costes_candidate",), CURVE_POINTS),
                   ("costes_r_below", ("costes_candidate",), CURVE_POINTS)]
    if cytofluorogram_bins is not None:
        bins = cytofluorogram_bins
        layout += [("cytofluorogram", ("bin1", "bin2"), bins * bins),
                   ("cytofluorogram_edges1", ("edge",), bins + 1),
                   ("cytofluorogram_edges2", ("edge",), bins + 1)]
    return layout


def _map_constants(stats: PartStatistics, thresholds: Thresholds, costes: CostesThreshold | None) -> MapConstants:
    constants = MapConstants.from_statistics(stats, thresholds)
    if costes is not None and costes.reason:  # undefined coefficients: NaN maps
        nan = np.nan
        constants = replace(constants, pearson_denominator=nan, spearman_denominator=nan, sum_rr=nan,
                            sum_gg=nan, manders_denominator1=nan, manders_denominator2=nan,
                            intersection_denominator=nan)
    return constants


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
    preset: str = "huygens",
    cytofluorogram: int | None = None,
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
    threshold : float, None, pair or "costes", optional
        Threshold T in intensity units, for both channels or as ``(T1, T2)`` (an entry
        may be None). None: no background subtraction. ``"costes"``: Costes' automatic
        thresholds, found per frame (see :mod:`cccdask.kernels.costes`); adds the
        ``costes_*`` variables (regression line, resolution, r-below curve).
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
    preset : {"huygens", "coloc2", "jacop", "skimage"}, optional
        Whose conventions to follow where the tools differ (:data:`PRESETS`): background
        subtraction, ``>`` or ``>=``, Manders' denominators, ICQ's zero products, the
        Costes regression and stopping rule. Default: Huygens (``spec/coefficients.md``).
    cytofluorogram : int, optional
        Add the 2D histogram of the raw values in the mask with this many bins per
        channel (``cytofluorogram`` over ``bin1, bin2``, edges in
        ``cytofluorogram_edges1/2``); :func:`plot_cytofluorogram` draws it.

    Returns
    -------
    xarray.Dataset
        One variable per coefficient (scalars, or over ``t`` for a time series);
        ``van_steensel`` over ``shift`` (voxels: channel 1 shifted by +dx along the
        axis, pairs R(x - dx), G(x), no wrap-around, both voxels inside the mask);
        ``nan_reason`` (str over ``coefficient``): why a value is NaN, ``""`` where it
        is defined; ``threshold`` (over ``channel``): the thresholds used (NaN: none);
        maps when asked for. ``attrs`` record the thresholds and their semantics.
        Lazy results hold several frames per chunk along ``t`` (as many as Dask's
        ``array.chunk-size`` of input, at least one), each frame computed by its own
        tasks; the maps one frame per chunk, on the chunks of ``image1``.

    Raises
    ------
    ValueError
        Inputs that cannot be valid: shapes that differ, non-numeric dtypes, a negative
        threshold range, an unknown shift axis. Frames that merely have no defined
        coefficient (empty mask, zero variance, NaN voxels) give NaN with a reason.

    Notes
    -----
    Exact at any chunking: each chunk gives its joint histogram (distinct value pairs
    with counts), moments (merged by Chan et al.'s pairwise update) and sums; Van
    Steensel gives per-chunk shifted moments from the chunk plus a halo of S voxels.
    The tasks are built as one graph layer (:class:`cccdask.graph.TaskLayer`): per chunk
    the statistics and Van Steensel (besides reading both channels), per frame the
    merges and the finalisation, and one per chunk of results and variable.
    Spearman, object Spearman and Kendall's tau-b use exact average ranks from the
    frame's merged histogram: no global sort, but memory of 24 bytes per distinct
    (R, G) pair in the frame's mask (at most 65,536 pairs for 8-bit images; typically
    10-20% of the voxels for 12-16-bit data; up to one pair per voxel for float images,
    i.e. 24 bytes per masked voxel, which bounds the float frame size by memory).
    With ``threshold="costes"`` the thresholds come from that histogram in the same
    pass; Van Steensel and the maps depend on them and read the data a second time.
    """
    frames = prepare_inputs(image1, image2, mask, spacing)
    conventions = _preset(preset)
    thresholds = resolve_thresholds(threshold, threshold_range, preset)
    automatic = isinstance(threshold, str) and threshold == "costes"
    shifts = _shift_values(van_steensel_shifts)
    if van_steensel_axis not in frames.spatial_dims:
        raise ValueError(
            f"van_steensel_axis {van_steensel_axis!r} is not a frame axis; choose one of "
            f"{frames.spatial_dims}."
        )
    axis = frames.spatial_dims.index(van_steensel_axis)
    n_shifts = 0 if shifts is None else len(shifts)
    if cytofluorogram is not None and (not isinstance(cytofluorogram, (int, np.integer))
                                       or isinstance(cytofluorogram, bool) or cytofluorogram < 1):
        raise ValueError(f"cytofluorogram is {cytofluorogram!r}; give the number of bins per channel "
                         f"(e.g. 256), or None for no cytofluorogram.")
    layout = _layout(None if shifts is None else n_shifts, automatic, cytofluorogram)
    n_values = sum(length for _, _, length in layout)
    reason_names = list(COEFFICIENT_NAMES) + ["van_steensel"] * (shifts is not None) + ["costes"] * automatic

    image1_chunked, image2_chunked, mask_chunked = _chunked_inputs(frames)
    token = tokenize(image1_chunked, image2_chunked, mask_chunked, thresholds, conventions, automatic,
                     shifts, axis, maps, cytofluorogram)
    tasks = _FrameTasks("coefficients", image1_chunked, image2_chunked, mask_chunked, token)
    results, map_tasks = [], {}
    for t in range(frames.n_frames):
        stats = tasks.statistics(t, thresholds)
        costes = None
        frame_thresholds: Any = thresholds
        if automatic:
            found = tasks.add("costes", (t,), _automatic_thresholds, stats, thresholds, conventions)
            costes, frame_thresholds, stats = (tasks.add(f"costes-{i}", (t,), operator.getitem, found, i)
                                               for i in range(3))
        shifted = None
        if shifts is not None:
            shifted = tasks.shifted_moments(t, frame_thresholds, shifts, axis)
        results.append(tasks.add("finalize", (t,), _finalize_frame, stats, shifted, frame_thresholds, costes,
                                 n_shifts, cytofluorogram))
        if maps:
            constants = tasks.add("map-constants", (t,), _map_constants, stats, frame_thresholds, costes)
            map_tasks.update(tasks.maps(t, frame_thresholds, constants, f"coefficient-maps-{token}"))

    per_chunk = _frames_per_output_chunk(frames)
    value_table = tasks.per_frame_output(f"coefficient-values-{token}", results, per_chunk, n_values,
                                         np.float64, item=0)
    data_vars: dict[str, Any] = {}
    position = 0
    for name, extra_dims, length in layout:
        column = value_table[:, position] if not extra_dims else value_table[:, position:position + length]
        if len(extra_dims) == 2:
            column = column.reshape((column.shape[0], cytofluorogram, cytofluorogram))
        data_vars[name] = (("t", *extra_dims), column)
        position += length
    coords: dict[str, Any] = dict(frame_time_coords(frames))
    coords["channel"] = ("channel", [1, 2])
    if shifts is not None:
        coords["shift"] = ("shift", shifts, {"units": "voxel", "axis": van_steensel_axis})
    data_vars["nan_reason"] = (("t", "coefficient"), tasks.per_frame_output(
        f"coefficient-reasons-{token}", results, per_chunk, len(reason_names), REASON_DTYPE, item=1))
    coords["coefficient"] = ("coefficient", reason_names)
    if maps:
        stacked = output_array(tasks.graph(), tasks.name, f"coefficient-maps-{token}", map_tasks,
                               ((1,) * frames.n_frames, (len(MAP_NAMES),)) + tasks.spatial_chunks,
                               np.float64)  # (t, map, *spatial)
        for k, name in enumerate(MAP_NAMES):
            data_vars[f"{name}_map"] = (("t", *frames.spatial_dims), stacked[:, k])
        for dim in frames.spatial_dims:
            if dim in frames.image1.coords:
                coords[dim] = frames.image1.coords[dim]

    attrs = _attrs(frames, thresholds, van_steensel_axis, shifts, preset, automatic)
    dataset = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    if not frames.time_series:
        dataset = dataset.isel(t=0, drop=True)
    if not frames.lazy:
        dataset = dataset.compute(scheduler="threads")
    return dataset


SIGNIFICANCE_FIELDS = ("observed_r", "null_mean", "null_sd", "p_value", "coloc2_p_value", "n_blocks")


def _significance_of_frame(blocks: tuple[np.ndarray, np.ndarray], nulls: list[np.ndarray]) -> np.ndarray:
    blocks1, blocks2 = blocks
    null = np.concatenate(nulls)
    if len(blocks1) < 2:
        return np.concatenate([[np.nan] * 5, [len(blocks1)], null * np.nan])
    x, y = blocks1.ravel(), blocks2.ravel()
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt(np.dot(x, x) * np.dot(y, y))
    observed = float(np.dot(x, y) / denominator) if denominator > 0 else np.nan
    summary = significance_summary(observed, null)
    head = [observed, summary["null_mean"], summary["null_sd"], summary["p_value"], summary["coloc2_p_value"],
            len(blocks1)]
    return np.concatenate([head, null])


def costes_significance(
    image1: Any,
    image2: Any,
    mask: Any = None,
    *,
    psf_width: float,
    n_randomizations: int = 200,
    seed: int = 0,
    tasks: int = 8,
    spacing: float | Sequence[float] | None = None,
) -> xr.Dataset:
    """Costes' randomisation test of Pearson's r, per frame, shuffling inside the mask only.

    The frame is tiled into blocks of one PSF width per axis (``psf_width`` over the
    spacing: anisotropic in 3D). Only blocks that lie entirely inside the mask take part:
    channel 1's blocks are permuted among them (Coloc 2 shuffles the mask's bounding box,
    moving background into the cell), channel 2 stays, and Pearson r over those blocks'
    voxels is recomputed ``n_randomizations`` times. Raw intensities (no threshold), as
    Coloc 2. Each frame is loaded whole (2 float64 values per voxel in the mask's blocks).

    Parameters
    ----------
    image1, image2, mask, spacing
        As in :func:`coefficients`.
    psf_width : float
        Block size in the physical units of the spacing (e.g. the PSF FWHM).
    n_randomizations : int
        Number of shuffles per frame.
    seed : int
        Seeds every shuffle (independent streams per frame and task): same seed, same
        result, on any cluster.
    tasks : int
        Tasks per frame the randomisations are split into (run in parallel).

    Returns
    -------
    xarray.Dataset
        ``costes_observed_r`` (r over the blocks inside the mask), ``costes_null_mean``,
        ``costes_null_sd``, ``costes_p_value`` (``(#{null r >= observed} + 1) / (n + 1)``),
        ``costes_coloc2_p_value`` (Coloc 2's normal-CDF value: near 1 = significant),
        ``costes_n_blocks`` and ``costes_null_r`` (over ``randomization``). Lazy for Dask
        input; NaN where fewer than 2 blocks lie inside the mask.
    """
    frames = prepare_inputs(image1, image2, mask, spacing)
    if not isinstance(n_randomizations, (int, np.integer)) or n_randomizations < 1:
        raise ValueError(f"n_randomizations is {n_randomizations!r}; give an integer >= 1.")
    if not isinstance(tasks, (int, np.integer)) or tasks < 1:
        raise ValueError(f"tasks is {tasks!r}; give an integer >= 1.")
    block = block_shape(float(psf_width), frames.spacing)
    n_tasks = min(int(tasks), int(n_randomizations))
    counts = [len(part) for part in np.array_split(np.arange(n_randomizations), n_tasks)]
    frame_seeds = np.random.SeedSequence(seed).spawn(frames.n_frames)
    inputs = _chunked_inputs(frames, whole_frames=True)
    token = tokenize(*inputs, block, n_randomizations, seed, n_tasks)
    layer = _FrameTasks("costes-significance", *inputs, token)
    rows = []
    for t in range(frames.n_frames):
        blocks = layer.add("blocks", (t,), mask_blocks, *layer.chunks(t, layer.blocks[0]), block)
        nulls = [layer.add("null", (t, j), randomized_pearson, (operator.getitem, blocks, 0),
                           (operator.getitem, blocks, 1), count, task_seed)
                 for j, (count, task_seed) in enumerate(zip(counts, frame_seeds[t].spawn(n_tasks)))]
        rows.append(layer.add("row", (t,), _significance_of_frame, blocks, nulls))
    table = layer.per_frame_output(f"costes-significance-table-{token}", rows, 1,
                                   len(SIGNIFICANCE_FIELDS) + n_randomizations, np.float64)
    data_vars = {f"costes_{name}": (("t",), table[:, k]) for k, name in enumerate(SIGNIFICANCE_FIELDS)}
    data_vars["costes_null_r"] = (("t", "randomization"), table[:, len(SIGNIFICANCE_FIELDS):])
    attrs = {
        "block_shape_voxels": list(block),
        "psf_width": float(psf_width),
        "units": frames.units,
        "spacing": list(frames.spacing),
        "n_randomizations": int(n_randomizations),
        "seed": int(seed),
        "method": (
            "Costes randomisation: channel 1's blocks that lie entirely inside the mask are "
            "permuted among themselves; Pearson r over those blocks' voxels, raw intensities"
        ),
        "coloc2_p_value": "normal CDF of the observed r under N(null mean, null SD), as Coloc 2 reports it",
    }
    dataset = xr.Dataset(data_vars, coords=frame_time_coords(frames), attrs=attrs)
    if not frames.time_series:
        dataset = dataset.isel(t=0, drop=True)
    if not frames.lazy:
        dataset = dataset.compute(scheduler="threads")
    return dataset


def plot_cytofluorogram(dataset: xr.Dataset, path: str, t: int | None = None) -> None:
    """Write a frame's cytofluorogram as a PNG, with the regression line and thresholds.

    Parameters
    ----------
    dataset : xarray.Dataset
        A result of :func:`coefficients` computed with ``cytofluorogram=bins``.
    path : str
        The PNG file to write.
    t : int, optional
        Frame index for a time series.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    if "cytofluorogram" not in dataset:
        raise ValueError("the dataset has no cytofluorogram; compute it with coefficients(..., cytofluorogram=256).")
    frame = dataset.isel(t=t) if "t" in dataset.dims else dataset
    counts = np.asarray(frame.cytofluorogram.values, dtype=float)
    edges1 = np.asarray(frame.cytofluorogram_edges1.values)
    edges2 = np.asarray(frame.cytofluorogram_edges2.values)
    figure, axes = plt.subplots(figsize=(5.5, 5))
    shown = np.where(counts > 0, counts, np.nan).T
    image = axes.pcolormesh(edges1, edges2, shown, norm=LogNorm(vmin=1, vmax=max(np.nanmax(counts), 1)),
                            cmap="viridis", shading="flat")
    figure.colorbar(image, ax=axes, label="voxels")
    if "costes_slope" in frame and np.isfinite(float(frame.costes_slope)):
        x = np.array([edges1[0], edges1[-1]])
        axes.plot(x, float(frame.costes_slope) * x + float(frame.costes_intercept), "k-", lw=1,
                  label="regression line")
    levels = np.asarray(frame.threshold.values, dtype=float)
    if np.isfinite(levels[0]):
        axes.axvline(levels[0], color="r", lw=1, label=f"threshold 1 = {levels[0]:.4g}")
    if np.isfinite(levels[1]):
        axes.axhline(levels[1], color="orange", lw=1, label=f"threshold 2 = {levels[1]:.4g}")
    axes.set_xlim(edges1[0], edges1[-1])
    axes.set_ylim(edges2[0], edges2[-1])
    axes.set_xlabel("channel 1 intensity")
    axes.set_ylabel("channel 2 intensity")
    axes.set_title(f"cytofluorogram (pearson r = {float(frame.pearson):.3f})")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _attrs(frames: Frames, thresholds: Thresholds, axis_name: str, shifts: np.ndarray | None,
           preset: str, automatic: bool) -> dict[str, Any]:
    def level(channel: ChannelThreshold) -> Any:
        if automatic:
            return "costes (per frame: variable 'threshold')"
        return "none" if channel.level is None else channel.level

    manual = thresholds.channel1.level is not None or thresholds.channel2.level is not None
    return {
        "preset": preset,
        "threshold_channel1": level(thresholds.channel1),
        "threshold_channel2": level(thresholds.channel2),
        "threshold_range_channel1": thresholds.channel1.soft_range,
        "threshold_range_channel2": thresholds.channel2.soft_range,
        "threshold_method": "costes" if automatic else ("manual" if manual else "none"),
        "threshold_semantics": THRESHOLD_SEMANTICS if preset == "huygens" else PRESET_SEMANTICS[preset],
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
