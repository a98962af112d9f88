"""Order statistics of frames larger than memory: the k-th smallest voxel, exactly.

The median background and the intensity floor (1st percentile) need voxels by rank.
A frame that does not fit is never sorted whole: the ranks are located by
histograms, each pass over the frame's chunks narrowing every rank's value interval
by a factor :data:`BINS`, until the interval holds at most :data:`GATHER_LIMIT`
voxels (gathered and sorted in one task) or a single value. The values found are the
voxels themselves, so the results equal ``numpy.partition`` / ``numpy.median`` of the
whole frame exactly (values are compared in float64: exact for float32 and for
integers up to 2**53).

Cost: one pass for the count and range, then typically two histogram passes and one
gathering pass over the frame (float32 data); integer data with few distinct values
stop earlier.
"""

from __future__ import annotations

from typing import Callable, Sequence

import dask
import dask.array as da
import numpy as np

#: Bins of one histogram pass (the narrowing factor per pass).
BINS = 2**16
#: A rank's interval is gathered and sorted once it holds at most this many voxels.
GATHER_LIMIT = 2**20
#: Reduction fan-in of the per-chunk results.
SPLIT_EVERY = 8


def default_compute(arrays):
    """Dask's current scheduler: ``dask.compute(*arrays)`` as a list."""
    return list(dask.compute(*arrays))


# --------------------------------------------------------------------------- chunk kernels (NumPy)


def _finite_values(block, selection) -> np.ndarray:
    """The block's selected voxels as float64, NaN and Inf left out."""
    values = np.asarray(block)
    values = values.ravel() if selection is None else values[np.asarray(selection) != 0]
    values = values.astype(np.float64, copy=False)
    return values[np.isfinite(values)]


def _range_of(block, selection) -> np.ndarray:
    """[finite count, non-finite count, min, max, float64 sum] of the selected voxels."""
    values = np.asarray(block)
    total = values.size if selection is None else int(np.count_nonzero(selection))
    finite = _finite_values(block, selection)
    if finite.size == 0:
        return np.array([0.0, float(total), np.inf, -np.inf, 0.0])
    return np.array([finite.size, total - finite.size, finite.min(), finite.max(), finite.sum()])


def _combine_ranges(parts) -> np.ndarray:
    parts = np.stack(parts)
    return np.array([parts[:, 0].sum(), parts[:, 1].sum(), parts[:, 2].min(), parts[:, 3].max(),
                     parts[:, 4].sum()])


def _interval_counts(block, selection, intervals) -> list[np.ndarray]:
    """Per interval ``(lo, hi)``: counts in :data:`BINS` equal bins of ``[lo, hi)``, then min and max inside."""
    values = _finite_values(block, selection)
    out = []
    for lo, hi in intervals:
        inside = values[(values >= lo) & (values < hi)]
        edges = np.linspace(lo, hi, BINS + 1)
        counts = np.bincount(np.searchsorted(edges, inside, side="right") - 1, minlength=BINS).astype(np.float64)
        low, high = (inside.min(), inside.max()) if inside.size else (np.inf, -np.inf)
        out.append(np.concatenate([counts, [low, high]]))
    return out


def _combine_counts(parts) -> list[np.ndarray]:
    combined = []
    for per_interval in zip(*parts):
        stacked = np.stack(per_interval)
        combined.append(np.concatenate([stacked[:, :-2].sum(axis=0), [stacked[:, -2].min(), stacked[:, -1].max()]]))
    return combined


def _interval_values(block, selection, intervals) -> list[np.ndarray]:
    values = _finite_values(block, selection)
    return [values[(values >= lo) & (values < hi)] for lo, hi in intervals]


def _combine_values(parts) -> list[np.ndarray]:
    return [np.concatenate(per_interval) for per_interval in zip(*parts)]


# --------------------------------------------------------------------------- Dask layer


def sum_arrays(parts) -> np.ndarray:
    """The element-wise sum of per-chunk arrays (a ``combine`` for :func:`reduce_chunks`)."""
    return np.sum(np.stack(parts), axis=0)


def reduce_chunks(function, values: da.Array, selection: da.Array | None, combine, *args):
    """``combine`` over ``function(block, selection_block, *args)`` of every chunk (a tree), delayed.

    One task per chunk, then tasks combining :data:`SPLIT_EVERY` results at a time; a
    ``dask.delayed`` object, for ``compute``.
    """
    blocks = values.to_delayed().ravel()
    selections = [None] * len(blocks) if selection is None else selection.rechunk(values.chunks).to_delayed().ravel()
    parts = [dask.delayed(function, pure=True)(b, s, *args) for b, s in zip(blocks, selections)]
    while len(parts) > 1:
        parts = [dask.delayed(combine, pure=True)(parts[i:i + SPLIT_EVERY])
                 for i in range(0, len(parts), SPLIT_EVERY)]
    return dask.delayed(combine, pure=True)(parts)


def value_range(values: da.Array, selection: da.Array | None = None):
    """Delayed ``[finite count, non-finite count, min, max, float64 sum]`` of the selected voxels."""
    return reduce_chunks(_range_of, values, selection, _combine_ranges)


def ranked_values(values: da.Array, selection: da.Array | None, ranks: Sequence[int],
                  summary: np.ndarray | None = None,
                  compute: Callable = default_compute) -> np.ndarray:
    """The finite selected voxels at ``ranks`` (0-based, ascending), as float64.

    Parameters
    ----------
    values : dask.array.Array
        One frame, chunked.
    selection : dask.array.Array or None
        Non-zero = voxel counted; None = every voxel.
    ranks : sequence of int
        Ranks among the finite selected voxels, each in ``[0, count)``.
    summary : numpy.ndarray, optional
        :func:`value_range` already computed (saves its pass).
    compute : callable
        Computes a list of Dask objects (e.g. on a cluster); default Dask's scheduler.

    Returns
    -------
    numpy.ndarray
        ``numpy.partition(finite_selected, ranks)[ranks]``, exactly.
    """
    if summary is None:
        summary = np.asarray(compute([value_range(values, selection)])[0])
    count = int(summary[0])
    if any(not 0 <= r < count for r in ranks):
        raise ValueError(f"ranks {list(ranks)} are outside the {count} finite selected voxels.")
    # per rank: [lo, hi) holding it, voxels below lo, voxels inside
    state = {r: [summary[2], np.nextafter(summary[3], np.inf), 0, count] for r in set(ranks)}
    found: dict[int, float] = {}
    while len(found) < len(state):
        open_ranks = sorted(r for r in state if r not in found)
        to_gather = [r for r in open_ranks if state[r][3] <= GATHER_LIMIT]
        to_count = [r for r in open_ranks if r not in to_gather]
        requests = []
        if to_gather:
            requests.append(reduce_chunks(_interval_values, values, selection, _combine_values,
                                    [tuple(state[r][:2]) for r in to_gather]))
        if to_count:
            requests.append(reduce_chunks(_interval_counts, values, selection, _combine_counts,
                                    [tuple(state[r][:2]) for r in to_count]))
        results = compute(requests)
        if to_gather:
            for r, gathered in zip(to_gather, results.pop(0)):
                found[r] = float(np.partition(gathered, r - state[r][2])[r - state[r][2]])
        if to_count:
            for r, counted in zip(to_count, results.pop(0)):
                lo, hi, below, _ = state[r]
                counts, low, high = counted[:-2], counted[-2], counted[-1]
                if low == high:  # one value fills the interval
                    found[r] = float(low)
                    continue
                cumulative = below + np.cumsum(counts)
                b = int(np.searchsorted(cumulative, r, side="right"))
                edges = np.linspace(lo, hi, BINS + 1)
                state[r] = [edges[b], edges[b + 1], int(cumulative[b - 1]) if b else below, int(counts[b])]
    return np.array([found[r] for r in ranks])


def tiled_intensity_floors(images: Sequence[da.Array], mask: da.Array | None = None,
                           compute: Callable = default_compute) -> list[float]:
    """:func:`cccdask.quality.intensity_floor` of chunked frames: the 1st percentile over the mean.

    The same rule (finite voxels under the mask, linear interpolation between the two
    ranks around 1 %); the ranks are exact (:func:`ranked_values`), the mean is a float64
    sum over chunks (equal to float64 summation order). NaN when the mask is empty or
    the mean is not positive. The images' passes share ``compute`` calls where they can.
    """
    summaries = [np.asarray(s) for s in compute([value_range(image, mask) for image in images])]
    floors = []
    for image, summary in zip(images, summaries):
        count = int(summary[0])
        mean = summary[4] / count if count else np.nan
        if not count or mean <= 0:
            floors.append(float("nan"))
            continue
        position = 0.01 * (count - 1)
        low = int(np.floor(position))
        high = min(low + 1, count - 1)
        below, above = ranked_values(image, mask, [low, high], summary, compute)
        floors.append((float(below) + (position - low) * (float(above) - float(below))) / mean)
    return floors
