"""The sparse joint histogram of two channels: distinct value pairs and their counts.

:func:`joint_table` builds a :class:`JointTable` from voxels (the busiest window of
values counted densely, the rest coded and sorted); tables merge by adding counts.
Also the value codes shared with the rank statistics (:func:`tie_counts`,
:func:`ascending_runs`, :func:`value_range`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np
from numba import njit

from cccdask.kernels.coefficients.thresholds import Thresholds


@dataclass(frozen=True)
class JointTable:
    """Joint histogram of two channels: distinct ``(values1, values2)`` pairs and counts.

    Sorted by ``values1`` then ``values2``; every pair occurs once. Values are int64 for
    integer images (exact) and float64 otherwise.
    """

    values1: np.ndarray
    values2: np.ndarray
    counts: np.ndarray
    #: Per channel ``(candidates, codes)`` where the construction knows them (None: found
    #: when needed): see :attr:`candidate_codes`.
    known_codes: tuple[tuple[np.ndarray, np.ndarray] | None, ...] = field(default=(None, None), repr=False,
                                                                            compare=False)

    @cached_property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def integer(self) -> bool:
        return self.values1.dtype.kind == "i"

    @cached_property
    def candidate_codes(self) -> tuple[tuple[np.ndarray, np.ndarray] | None, ...]:
        """Per channel ``(candidates, codes)``: ascending candidate values (every value of
        the channel is one) and per entry the index of its value among them; None where
        neither the construction gave them nor :func:`_offset_codes` applies (computed
        once, on first use)."""
        return tuple(_offset_codes(values) if given is None else given
                     for given, values in zip(self.known_codes, (self.values1, self.values2)))

    @cached_property
    def marginals(self) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]:
        """Per channel: ``(distinct, codes, ties)``: ascending candidate values, per entry
        the index of its value among them, and the number of voxels of each candidate
        (computed once, on first use).

        The :attr:`candidate_codes` where known (no sort), else the distinct values.
        """
        out = []
        for values, known in zip((self.values1, self.values2), self.candidate_codes):
            if known is None:
                distinct, codes = np.unique(values, return_inverse=True)
                known = distinct, codes.reshape(-1).astype(np.int64, copy=False)
            distinct, codes = known
            out.append((distinct, codes, tie_counts(codes, self.counts, len(distinct))))
        return tuple(out)

    def object_entries(self, thresholds: Thresholds) -> np.ndarray:
        """Boolean per entry: its voxels are in the object set of the object coefficients,
        ``R > T_R or G > T_G`` on the raw values (tested once per candidate value where
        the :attr:`candidate_codes` are known)."""
        above = [threshold.above(values) if known is None else threshold.above(known[0])[known[1]]
                 for values, known, threshold in zip((self.values1, self.values2), self.candidate_codes,
                                                     (thresholds.channel1, thresholds.channel2))]
        return above[0] | above[1]

    def merge(self, other: "JointTable") -> "JointTable":
        """The histogram of the union of two voxel sets (counts added)."""
        if len(other.counts) == 0:
            return self
        if len(self.counts) == 0:
            return other
        if self.integer != other.integer:
            raise ValueError("cannot merge histograms of an integer and a float image")
        return _aggregate(
            np.concatenate([self.values1, other.values1]),
            np.concatenate([self.values2, other.values2]),
            np.concatenate([self.counts, other.counts]),
        )

    def corrected(self, thresholds: Thresholds) -> "JointTable":
        """The histogram of ``(R', G')``: values replaced by background-corrected ones."""
        if thresholds.channel1.level is None and thresholds.channel2.level is None:
            return self
        return _aggregate(
            thresholds.channel1.corrected(self.values1),
            thresholds.channel2.corrected(self.values2),
            self.counts,
        )


@njit(nogil=True, cache=True)
def value_range(values):
    """``(min, max)`` of a non-empty array in one pass."""
    low = high = values.flat[0]
    for value in values.flat:
        low = min(low, value)
        high = max(high, value)
    return low, high


@dataclass(frozen=True)
class _Coding:
    """Integer codes of values that keep their order.

    ``codes - low`` (in unsigned 64-bit arithmetic) is a 0-based code below ``size``;
    ``decode`` turns 0-based codes back into values (int64 or float64). ``dense``: every
    code below ``size`` stands for a value (integers by offset, others by rank), so
    ``decode(arange(size))`` are candidate values in ascending order.
    """

    codes: np.ndarray
    low: int
    size: int
    decode: Callable[[np.ndarray], np.ndarray]
    dense: bool = False


@njit(nogil=True, cache=True)
def _orderable_bits(values):
    """uint32 keys of float32 values whose unsigned order is the values' order: the sign
    bit set for positives, every bit flipped for negatives."""
    bits = values.view(np.uint32)
    out = np.empty(bits.size, np.uint32)
    for i in range(bits.size):
        out[i] = ~bits[i] if bits[i] >> 31 else bits[i] | np.uint32(1 << 31)
    return out


@njit(nogil=True, cache=True)
def _float32_of_bits(keys):
    """Inverse of :func:`_orderable_bits`, as float64."""
    bits = np.empty(keys.size, np.uint32)
    for i in range(keys.size):
        key = np.uint32(keys[i])
        bits[i] = key & np.uint32(0x7FFFFFFF) if key >> 31 else ~key
    return bits.view(np.float32).astype(np.float64)


def _codes(values: np.ndarray) -> _Coding:
    """Order-keeping integer codes of values (finite, no -0.0), without a sort where possible.

    Integers are coded by themselves, offset by their minimum; float32 values (and float64
    values that float32 holds exactly) by the order-keeping bits of their float32; other
    values by their index among the distinct values (a sort).
    """
    if values.dtype.kind in "iub":
        low, high = (int(v) for v in value_range(values))
        return _Coding(values, low, high - low + 1, lambda index: index + low, dense=True)
    single = values.astype(np.float32, copy=False)
    if values.dtype.itemsize <= 4 or np.array_equal(single, values):
        bits = _orderable_bits(np.ascontiguousarray(single).reshape(-1))
        low, high = (int(v) for v in value_range(bits))
        return _Coding(bits, low, high - low + 1, lambda index: _float32_of_bits(index + low))
    distinct, codes = np.unique(values, return_inverse=True)
    return _Coding(codes.reshape(-1), 0, len(distinct), lambda index: distinct[index].astype(np.float64),
                   dense=True)


WINDOW_CELLS = 1 << 16  # cells of the dense part of a joint histogram (int32: 256 KiB, in cache)


@njit(nogil=True, cache=True)
def _window_pair_counts(codes1, low1, codes2, low2, size2, start1, width1, start2, width2, dense, overflow):
    """Count the pairs that fall in a window of codes densely; key the others.

    With ``a = codes1 - low1`` and ``b = codes2 - low2`` (unsigned 64-bit, modular: exact
    even where a signed code wraps on conversion), a pair with ``start1 <= a < start1 +
    width1`` and ``start2 <= b < start2 + width2`` adds 1 to
    ``dense[(a - start1) * width2 + b - start2]``; any other is written to ``overflow`` as
    the key ``a * size2 + b`` (in ``overflow``'s type). Returns the number of keys written.
    """
    written = 0
    for i in range(codes1.size):
        a = np.uint64(codes1[i]) - low1
        b = np.uint64(codes2[i]) - low2
        in_window1 = a - start1  # below the window: wraps to a huge value
        in_window2 = b - start2
        if in_window1 < width1 and in_window2 < width2:
            dense[in_window1 * width2 + in_window2] += 1
        else:
            overflow[written] = a * size2 + b
            written += 1
    return written


def _busiest_window(codes: np.ndarray, low: int, size: int, width: int) -> int:
    """Start (as an offset from ``low``) of the ``width`` consecutive codes that hold the
    most of a sample of ``codes``: where a window of a joint histogram pays off."""
    if width >= size:
        return 0
    sample = codes[:: max(1, codes.size // 4096)].astype(np.int64) - low
    cumulative = np.concatenate(([0], np.cumsum(np.bincount(sample, minlength=size))))
    return int(np.argmax(cumulative[width:] - cumulative[:-width]))


@njit(nogil=True, cache=True)
def _table_entries(keys, weights, dense, width2, start1, start2, size2):
    """The entries of a joint histogram, in ascending key order, one per distinct key.

    Parameters
    ----------
    keys : numpy.ndarray
        Sorted keys ``a * size2 + b`` (codes ``a``, ``b`` from 0) of the pairs counted
        outside the dense window, each standing for ``weights[i]`` voxels (``weights``
        None: 1 each).
    dense : numpy.ndarray
        Counts of the window's cells, row-major over ``(width1, width2)``: cell
        ``(row, column)`` holds the pairs of codes ``(start1 + row, start2 + column)``.
        No key falls in the window.

    Returns
    -------
    index1, index2, counts : numpy.ndarray
        int64 codes and voxel counts of each entry.
    """
    # where each run of equal keys starts, branch-free (run ends come at random): a store
    # that does not start a run is overwritten by the next one
    starts = np.empty(keys.size + 1, np.int64)
    starts[0] = n_runs = 0
    for i in range(1, keys.size):
        starts[n_runs + 1] = i
        n_runs += keys[i] != keys[i - 1]
    n_runs += keys.size > 0
    starts[n_runs] = keys.size
    n_cells = 0
    for count in dense:
        n_cells += count != 0
    index1 = np.empty(n_runs + n_cells, np.int64)
    index2 = np.empty(n_runs + n_cells, np.int64)
    counts = np.empty(n_runs + n_cells, np.int64)
    # the runs and the window's cells merged by key; a run's key as (a, remainder) =
    # divmod(key, size2), by stepping along the ascending keys (a division where a changes)
    run = cell = row = column = 0
    remainder = np.uint64(keys[0]) if n_runs else np.uint64(0)
    a = np.int64(remainder // size2)
    remainder %= size2
    for entry in range(n_runs + n_cells):
        while cell < dense.size and dense[cell] == 0:
            cell += 1
            column += 1
            if column == width2:
                column, row = 0, row + 1
        from_dense = cell < dense.size
        if from_dense and run < n_runs:  # the smaller key goes first
            code1, code2 = start1 + row, start2 + column
            from_dense = code1 < a or (code1 == a and code2 < np.int64(remainder))
        if from_dense:
            index1[entry], index2[entry], counts[entry] = start1 + row, start2 + column, dense[cell]
            cell += 1
            column += 1
            if column == width2:
                column, row = 0, row + 1
            continue
        index1[entry], index2[entry] = a, np.int64(remainder)
        if weights is None:
            counts[entry] = starts[run + 1] - starts[run]
        else:
            counts[entry] = weights[starts[run]:starts[run + 1]].sum()
        run += 1
        if run < n_runs:
            remainder += np.uint64(keys[starts[run]]) - np.uint64(keys[starts[run - 1]])
            if remainder >= size2:
                a += np.int64(remainder // size2)
                remainder %= size2
    return index1, index2, counts


def _aggregate(values1: np.ndarray, values2: np.ndarray, counts: np.ndarray | None) -> JointTable:
    """Collapse value pairs (each with a count, or 1) into a sorted :class:`JointTable`.

    Each pair is coded as one unsigned integer ``code1 * n_codes2 + code2`` (see
    :func:`_codes`); sorting the codes sorts the pairs by (value1, value2). Pairs of
    voxels in the busiest window of codes are counted densely instead of sorted.
    """
    integer = values1.dtype.kind in "iub" and values2.dtype.kind in "iub"
    if values1.size == 0:
        dtype = np.int64 if integer else np.float64
        return JointTable(np.empty(0, dtype), np.empty(0, dtype), np.empty(0, np.int64))
    if not integer:  # one kind of table: float values (integers convert exactly below 2^53)
        values1, values2 = (v if v.dtype.kind == "f" else v.astype(np.float64) for v in (values1, values2))
    coding1, coding2 = _codes(values1), _codes(values2)
    if coding1.size * coding2.size > 2**64 or max(coding1.size, coding2.size) > 2**63:
        # integers spanning more than 2^32 each: code by rank
        coding1, coding2 = _codes(values1.astype(np.float64)), _codes(values2.astype(np.float64))
    codes1, low1, size1 = coding1.codes, coding1.low, coding1.size
    codes2, low2, size2 = coding2.codes, coding2.low, coding2.size
    key_dtype = np.uint32 if size1 * size2 <= 2**32 else np.uint64
    # voxels: the busiest window of values is counted densely, only the rest sorted;
    # counted pairs (merging tables) are all sorted
    windowed = counts is None and max(size1, size2) <= 1 << 24
    width2 = min(size2, 256) if windowed else 0
    width1 = min(size1, WINDOW_CELLS // max(width2, 1)) if windowed else 0
    width2 = min(size2, WINDOW_CELLS // max(width1, 1)) if width1 else 0
    start1 = _busiest_window(codes1, low1, size1, width1) if width1 else 0
    start2 = _busiest_window(codes2, low2, size2, width2) if width2 else 0
    dense = np.zeros(width1 * width2, np.int32 if codes1.size < 2**31 else np.int64)
    key = np.empty(codes1.size, dtype=key_dtype)
    n_keys = _window_pair_counts(codes1, np.uint64(low1 % 2**64), codes2, np.uint64(low2 % 2**64),
                                 np.uint64(size2), np.uint64(start1), np.uint64(width1),
                                 np.uint64(start2), np.uint64(width2), dense, key)
    key = key[:n_keys]
    if counts is None:
        key.sort()
    else:
        order = np.argsort(key, kind="stable")
        key = key[order]
        counts = np.asarray(counts, dtype=np.int64)[order]
    index1, index2, pair_counts = _table_entries(key, counts, dense, width2, start1, start2, np.uint64(size2))
    out1, out2 = coding1.decode(index1), coding2.decode(index2)
    # dense codes are the table's codes among candidate values (for integers by offset,
    # over a modest span: see _offset_codes); channel 1's values ascend through the
    # table, so its runs give its distinct values without a sort
    known = [(coding.decode(np.arange(coding.size)), index)
             if coding.dense and coding.size <= _offset_span(index.size) else None
             for coding, index in ((coding1, index1), (coding2, index2))]
    if known[0] is None:
        first, run = ascending_runs(index1)
        known[0] = out1[first], run
    return JointTable(out1, out2, pair_counts, tuple(known))


def ascending_runs(ascending: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Of an ascending array: where each run of equal values starts (boolean), and per
    element the index of its run."""
    first = np.concatenate(([True], ascending[1:] != ascending[:-1]))
    return first, np.cumsum(first) - 1


def joint_table(values1: np.ndarray, values2: np.ndarray) -> JointTable:
    """Joint histogram of two equally long 1-D arrays of finite values."""
    return _aggregate(np.ravel(values1), np.ravel(values2), None)


def _offset_span(n_entries: int) -> int:
    """The largest span of integer values coded by offset for ``n_entries`` entries: 4 per
    entry, or 2^16 (more would make lookups per value cost more than per entry)."""
    return max(4 * n_entries, 1 << 16)


def _offset_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Integers over a modest span (:func:`_offset_span`): every value of the span in
    ascending order and, per entry, its offset from the lowest (int64); None otherwise."""
    if values.dtype.kind in "iu" and values.size:
        low, high = (int(v) for v in value_range(values))
        if high - low + 1 <= _offset_span(values.size):
            return np.arange(low, high + 1, dtype=values.dtype), (values - low).astype(np.int64, copy=False)
    return None


@njit(nogil=True, cache=True)
def tie_counts(codes, counts, n_codes):
    """Number of voxels (``counts`` per entry) of each code ``0 .. n_codes - 1``."""
    ties = np.zeros(n_codes, np.int64)
    for i in range(codes.size):
        ties[codes[i]] += counts[i]
    return ties
