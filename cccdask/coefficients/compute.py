""":func:`coefficients`: the public function, and the attributes of the dataset it returns."""

from __future__ import annotations

import operator
import os
from typing import Any, Sequence

import numpy as np
import xarray as xr
from dask.base import tokenize

from cccdask.frames import Frames, frame_time_coords, prepare_inputs
from cccdask.graph import output_array
from cccdask.kernels.coefficients import COEFFICIENT_NAMES, MAP_NAMES, ChannelThreshold, Thresholds
from cccdask.coefficients.arguments import (
    PRESET_SEMANTICS,
    THRESHOLD_SEMANTICS,
    costes_search_named,
    extra_names,
    preset_named,
    resolve_thresholds,
    shift_values,
    value_range,
)
from cccdask.coefficients.graph import (
    REASON_DTYPE,
    FrameTasks,
    automatic_thresholds,
    chunked_inputs,
    dataset_layout,
    finalize_frame,
    frames_per_output_chunk,
    map_constants,
)


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
    costes_search: str | None = None,
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
        Costes search. Default: Huygens (``spec/coefficients.md``). ``coloc2`` and
        ``jacop`` reproduce those tools' numbers, Costes' threshold included, and add
        their own numbers at the thresholds (``coloc2_pearson_below_threshold``,
        ``coloc2_pearson_above_threshold``; ``jacop_thresholded_overlap``, ``_k1``,
        ``_k2``, with Costes ``jacop_costes_pearson``, ``_m1``, ``_m2``); the
        Dataset's ``threshold_semantics`` attribute states each rule.
    cytofluorogram : int, optional
        Add the 2D histogram of the raw values in the mask with this many bins per
        channel (``cytofluorogram`` over ``bin1, bin2``, edges in
        ``cytofluorogram_edges1/2``); :func:`plot_cytofluorogram` draws it.
    costes_search : {"stepper", "bisection"}, optional
        Coloc 2's Costes search (``preset="coloc2"`` only): its simple stepper (the
        default, as in Coloc 2) or its bisection.

    Returns
    -------
    xarray.Dataset
        One variable per coefficient (scalars, or over ``t`` for a time series);
        ``van_steensel`` over ``shift`` (voxels: channel 1 shifted by +dx along the
        axis, pairs R(x - dx), G(x), no wrap-around, both voxels inside the mask);
        ``nan_reason`` (str over ``coefficient``): why a value is NaN, ``""`` where it
        is defined; ``threshold`` (over ``channel``): the thresholds used (NaN: none);
        maps when asked for. ``attrs`` record the thresholds and their semantics.
        With ``threshold="costes"``: ``costes_note`` (str), how a tool got its thresholds
        in a degenerate case where it still reports them (JACoP's start values when its
        candidate range is empty, Coloc 2 walking a slope <= 0); ``""`` otherwise.
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
    pass; Van Steensel and the maps depend on them (the maps on the frame's means too)
    and, on frames of several chunks, read the data a second time once those are known
    (after every frame's first pass), so that no chunk waits in memory.
    """
    frames = prepare_inputs(image1, image2, mask, spacing)
    conventions = preset_named(preset)
    thresholds = resolve_thresholds(threshold, threshold_range, preset)
    automatic = isinstance(threshold, str) and threshold == "costes"
    shifts = shift_values(van_steensel_shifts)
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
    search = costes_search_named(costes_search, preset)
    extras = extra_names(conventions, thresholds, automatic)
    layout = dataset_layout(None if shifts is None else n_shifts, automatic, cytofluorogram, extras)
    n_values = sum(length for _, _, length in layout)
    reason_names = (list(COEFFICIENT_NAMES) + list(extras) + ["van_steensel"] * (shifts is not None)
                    + ["costes"] * automatic)
    clamp_range = value_range(frames.image1.dtype)

    image1_chunked, image2_chunked, mask_chunked = chunked_inputs(frames)
    token = tokenize(image1_chunked, image2_chunked, mask_chunked, thresholds, conventions, automatic,
                     shifts, axis, maps, cytofluorogram, search, clamp_range)
    tasks = FrameTasks("coefficients", image1_chunked, image2_chunked, mask_chunked, token)
    # one in-memory frame: its tasks may use every core (a series, or Dask inputs that
    # may run on workers: one thread per task)
    threads = len(os.sched_getaffinity(0)) if not frames.lazy and frames.n_frames == 1 else 1
    first_pass = []  # per frame: statistics, Costes, thresholds
    for t in range(frames.n_frames):
        stats = tasks.statistics(t, thresholds, threads)
        costes = None
        frame_thresholds: Any = thresholds
        if automatic:
            found = tasks.add("costes", (t,), automatic_thresholds, stats, thresholds, conventions, search,
                              clamp_range)
            costes, frame_thresholds, stats = (tasks.add(f"costes-{i}", (t,), operator.getitem, found, i)
                                               for i in range(3))
        first_pass.append((stats, costes, frame_thresholds))
    # Van Steensel at Costes' thresholds and the maps need the whole frame's numbers: on a
    # frame of several chunks they read the chunks again rather than hold them all
    second = tasks
    if len(tasks.blocks) > 1 and (maps or (automatic and shifts is not None)):
        second = tasks.read_again_after([stats for stats, _, _ in first_pass])
    results, map_tasks = [], {}
    for t, (stats, costes, frame_thresholds) in enumerate(first_pass):
        shifted = None
        if shifts is not None:  # at fixed thresholds Van Steensel needs nothing of the whole frame: first pass
            shifted = (second if automatic else tasks).shifted_moments(t, frame_thresholds, shifts, axis)
        results.append(second.add("finalize", (t,), finalize_frame, stats, shifted, frame_thresholds, costes,
                                  n_shifts, cytofluorogram, extras, threads))
        if maps:
            constants = second.add("map-constants", (t,), map_constants, stats, frame_thresholds, costes)
            map_tasks.update(second.maps(t, frame_thresholds, constants, f"coefficient-maps-{token}"))

    per_chunk = frames_per_output_chunk(frames)
    value_table = second.per_frame_output(f"coefficient-values-{token}", results, per_chunk, n_values,
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
    reasons = second.per_frame_output(f"coefficient-reasons-{token}", results, per_chunk,
                                     len(reason_names) + automatic, REASON_DTYPE, item=1)
    data_vars["nan_reason"] = (("t", "coefficient"), reasons[:, :len(reason_names)])
    if automatic:
        data_vars["costes_note"] = (("t",), reasons[:, len(reason_names)])
    coords["coefficient"] = ("coefficient", reason_names)
    if maps:
        stacked = output_array(second.graph(), second.name, f"coefficient-maps-{token}", map_tasks,
                               ((1,) * frames.n_frames, (len(MAP_NAMES),)) + tasks.spatial_chunks,
                               np.float64)  # (t, map, *spatial)
        for k, name in enumerate(MAP_NAMES):
            data_vars[f"{name}_map"] = (("t", *frames.spatial_dims), stacked[:, k])
        for dim in frames.spatial_dims:
            if dim in frames.image1.coords:
                coords[dim] = frames.image1.coords[dim]

    attrs = dataset_attrs(frames, thresholds, van_steensel_axis, shifts, preset, automatic)
    dataset = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    if not frames.time_series:
        dataset = dataset.isel(t=0, drop=True)
    if not frames.lazy:
        dataset = dataset.compute(scheduler="threads")
    return dataset


def dataset_attrs(frames: Frames, thresholds: Thresholds, axis_name: str, shifts: np.ndarray | None,
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
