"""The Dask graph of the coefficients: chunked inputs, one task per frame, the merge tree.

A chunk's :class:`~cccdask.kernels.coefficients.PartStatistics` are merged in a tree per
frame (``_merge_all``, fan-in :data:`MERGE_FAN_IN`), then finalised
(:func:`finalize_frame`) with the automatic (Costes) thresholds where asked.
"""

from __future__ import annotations

import itertools
import math
import operator
from dataclasses import replace
from typing import Any, Sequence

import dask
import dask.array as da
import numpy as np
from dask.delayed import Delayed
from dask.utils import parse_bytes

from cccdask.frames import Frames
from cccdask.graph import TaskLayer, as_dask, output_array, read_again_after
from cccdask.kernels.costes import (
    CURVE_POINTS,
    CostesThreshold,
    cytofluorogram as cytofluorogram_of_table,
)
from cccdask.kernels.coefficients import (
    COEFFICIENT_NAMES,
    MapConstants,
    Moments,
    PartStatistics,
    Thresholds,
    coefficient_maps,
    finalize,
    joint_table_of,
    part_statistics,
    restated,
    shifted_moments,
)
from cccdask.kernels.costes_tools import coloc2_extras, costes_threshold, jacop_extras
from cccdask.coefficients.arguments import Preset, with_levels


REASON_DTYPE = "<U160"
MERGE_FAN_IN = 8


def chunked_inputs(frames: Frames, whole_frames: bool = False) -> tuple[da.Array, da.Array, da.Array | None]:
    """The inputs as Dask arrays: channel 1 with one frame per chunk along ``t`` (and one
    chunk per frame with ``whole_frames``), channel 2 and the mask on its chunks (a mask
    shared by every frame on its spatial chunks).

    Otherwise channel 1 keeps the spatial chunks it has when it is a Dask array (the
    caller sized them, e.g. the tiles of a frame larger than memory), and NumPy input
    gets Dask's automatic chunks (``array.chunk-size``).
    """
    n_spatial = len(frames.spatial_dims)
    data = frames.image1.data
    if whole_frames:
        spatial = (-1,) * n_spatial
    elif isinstance(data, da.Array):
        spatial = data.chunks[1:]
    else:
        spatial = ("auto",) * n_spatial
    image1 = as_dask(frames.image1.data, chunks=(1, *spatial)).rechunk((1, *spatial))
    image2 = as_dask(frames.image2.data, chunks=image1.chunks).rechunk(image1.chunks)
    mask = None
    if frames.mask is not None:
        chunks = image1.chunks if "t" in frames.mask.dims else image1.chunks[1:]
        mask = as_dask(frames.mask.data, chunks=chunks).rechunk(chunks)
    return image1, image2, mask


def frames_per_output_chunk(frames: Frames) -> int:
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


class FrameTasks(TaskLayer):
    """The per-frame tasks of one :func:`coefficients` or :func:`costes_significance` call,
    on the chunks of its inputs (see :func:`chunked_inputs`)."""

    def __init__(self, prefix: str, image1: da.Array, image2: da.Array, mask: da.Array | None, token: str,
                 after: Any = None):
        super().__init__(prefix, token, [image1, image2, mask, after])
        self.prefix, self.token = prefix, token
        self.inputs = (image1, image2, mask)
        self.spatial_chunks = image1.chunks[1:]
        self.blocks = list(itertools.product(*(range(len(c)) for c in self.spatial_chunks)))

    def read_again_after(self, keys: list[tuple]) -> "FrameTasks":
        """A layer for a second pass that reads the chunks again once ``keys`` are done.

        A pass that needs a number of the whole frame (e.g. Van Steensel and the maps
        after Costes' thresholds) would otherwise make Dask hold every chunk of the
        frame from the first pass until that number is known. The new layer's tasks may
        use this layer's keys.
        """
        first = Delayed(self.add("first-pass", (), len, list(keys)), self.graph(), layer=self.name)
        image1, image2, mask = read_again_after(self.inputs, first, seed=self.name)
        return FrameTasks(f"{self.prefix}-again", image1, image2, mask, self.token, after=first)

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

    def statistics(self, t: int, thresholds: Thresholds, threads: int = 1) -> tuple:
        """Frame ``t``'s statistics (:func:`part_statistics` per chunk, merged; ``threads``
        threads per chunk)."""
        parts = [self.add("part", (t, *block), part_statistics, *self.chunks(t, block), thresholds, threads)
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


def automatic_thresholds(stats: PartStatistics, thresholds: Thresholds, preset: Preset, search: str,
                         value_range: tuple[float, float]):
    """Costes' thresholds of a frame, its thresholds and its statistics restated with them."""
    costes = costes_threshold(joint_table_of(stats.table), preset.costes, search, value_range)
    if costes.reason or stats.n_nonfinite:
        return costes, thresholds, stats
    found = with_levels(thresholds, costes.threshold1, costes.threshold2)
    # the joint histogram (or the keys) is exact: the statistics under the found
    # thresholds follow from it
    return costes, found, restated(stats, found)


def tool_extras(stats: PartStatistics, thresholds: Thresholds, names: tuple[str, ...]) -> dict:
    """``name -> (value, reason)`` of a tool's own numbers at the frame's thresholds."""
    if not names:
        return {}
    level1, level2 = thresholds.channel1.level, thresholds.channel2.level
    if stats.n_nonfinite or stats.table.n == 0 or level1 is None or level2 is None:
        why = f"{stats.n_nonfinite} NaN/Inf voxels inside the mask" if stats.n_nonfinite else "empty mask"
        return {name: (np.nan, why) for name in names}
    compute = jacop_extras if names[0].startswith("jacop") else coloc2_extras
    values = compute(joint_table_of(stats.table), level1, level2)
    return {name: values[name] for name in names}


def finalize_frame(stats: PartStatistics, shifted: Moments | None, thresholds: Thresholds,
                   costes: CostesThreshold | None, n_shifts: int, cytofluorogram_bins: int | None = None,
                   extras: tuple[str, ...] = (), threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Values and NaN reasons of one frame, packed as :func:`dataset_layout` describes (with
    Costes, the last reason is the note ``costes_note``; ``threads`` threads for its ranks)."""
    results = finalize(stats, thresholds, threads)
    results.update(tool_extras(stats, thresholds, extras))
    if costes is not None and costes.reason:
        results = {name: (np.nan, f"Costes threshold undefined: {costes.reason}") for name in results}
    names = list(COEFFICIENT_NAMES) + list(extras)
    values = [results[name][0] for name in names]
    reasons = [results[name][1] for name in names]
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
        reasons.append(costes.note)
    if cytofluorogram_bins is not None:
        counts, edges1, edges2 = cytofluorogram_of_table(joint_table_of(stats.table), cytofluorogram_bins)
        values.extend(counts.ravel().tolist())
        values.extend(edges1.tolist())
        values.extend(edges2.tolist())
    return np.asarray(values, dtype=np.float64), np.asarray(reasons, dtype=REASON_DTYPE)


def dataset_layout(n_shifts: int | None, automatic: bool, cytofluorogram_bins: int | None = None,
                   extras: tuple[str, ...] = ()) -> list[tuple[str, tuple[str, ...], int]]:
    """Names, extra dims and lengths of the values :func:`finalize_frame` packs."""
    layout = [(name, (), 1) for name in list(COEFFICIENT_NAMES) + list(extras)]
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


def map_constants(stats: PartStatistics, thresholds: Thresholds, costes: CostesThreshold | None) -> MapConstants:
    constants = MapConstants.from_statistics(stats, thresholds)
    if costes is not None and costes.reason:  # undefined coefficients: NaN maps
        nan = np.nan
        constants = replace(constants, pearson_denominator=nan, spearman_denominator=nan, sum_rr=nan,
                            sum_gg=nan, manders_denominator1=nan, manders_denominator2=nan,
                            intersection_denominator=nan)
    return constants
