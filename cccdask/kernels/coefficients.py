"""Sufficient statistics of the classic colocalization coefficients, and their finalisation.

NumPy arrays in, small statistics out; no Dask, no I/O. The loops that NumPy cannot
vectorise (counting pairs, Kendall's inversions, Van Steensel's shifted products) are
compiled with numba (``nogil``: Dask threads run them in parallel; ``cache``: compiled
once per machine, about 4 s, then loaded in under a second).
The definitions are those of ``spec/coefficients.md`` (Huygens conventions). Notation:
R, G the two channels, ``R'`` the background-corrected value ``max(R - T, 0)`` (``R``
itself when no threshold is given), ``wR`` the (soft) threshold weight.

How a frame of any size gives exact numbers
-------------------------------------------
Every chunk of a frame is summarised by a :class:`PartStatistics`:

* ``table``: the joint histogram of the raw values inside the mask, stored sparsely as
  the distinct ``(R, G)`` pairs with their counts (:class:`JointTable`). Histograms of
  two parts merge exactly by adding counts. The merged table of a frame determines the
  rank coefficients (Spearman, object Spearman, Kendall's tau-b, with exact average
  ranks for ties) and ICQ, without a global sort of the voxels. Integer images give at
  most one entry per distinct pair (small for 8- to 16-bit data); float images give up
  to one entry per voxel (24 bytes each).
* ``mask_moments`` / ``object_moments``: count, means and co-moments (:class:`Moments`)
  of ``(R', G')`` over the mask and over the object voxels; parts merge with the
  pairwise update of Chan, Golub & LeVeque (1979), which stays accurate for any number
  of parts in any order.
* ``sums``: plain sums of non-negative terms (overlap, k, Manders, intersection).

A chunk's moments and sums are computed from its own joint histogram (one entry per
distinct pair: far fewer operations than voxels for integer images), in one compiled
pass with the threshold rule looked up per value.

Van Steensel's cross-correlation needs voxel neighbours, so it has its own per-chunk
statistic (:func:`shifted_moments`): for each shift, the moments of the shifted pairs
whose channel-2 voxel lies in the chunk, merged the same way. One compiled pass per
chunk: a row wholly inside the mask costs one vectorised dot product per shift (its
marginal sums follow from column sums), any other row six fused sums per shift.

Memory of the joint histogram: 24 bytes per distinct ``(R, G)`` pair inside the mask
(int64 value pairs and a count), plus about as much again while two are merged. For
8-bit images at most 65,536 pairs; for 12- to 16-bit microscope data typically 10-20%
of the voxels (0.4-0.7 M pairs for a noisy 2048 x 2048 12-bit frame, 10-17 MB); for
float images up to one pair per voxel (a frame's voxels inside the mask, 24 bytes each).
Building a table also takes 4-8 bytes per voxel of the chunk for the pair codes.

Cost, per voxel of a chunk: pairs in the busiest 65,536-cell window of values (the
background of a microscope image) are counted in a dense array held in cache, the rest
coded as one integer each (integers by offset, float32 by their order-keeping bits:
no per-channel sort) and sorted. Per frame, Kendall's tau-b is O(P log K) in the P
entries and K distinct channel-2 values of the merged table (a Fenwick tree).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np
from numba import njit

COEFFICIENT_NAMES = (
    "pearson",
    "object_pearson",
    "spearman",
    "object_spearman",
    "overlap",
    "k1",
    "k2",
    "m1",
    "m2",
    "intersection",
    "i1",
    "i2",
    "icq",
    "kendall_tau",
)
MAP_NAMES = ("pearson", "spearman", "overlap", "k1", "k2", "m1", "m2", "intersection")

REASSOCIATE = {"reassoc", "contract"}  # numba fastmath: sums may be reordered, so vectorised

# Names of the entries of PartStatistics.sums, in order.
SUM_NAMES = ("rg", "rr", "gg", "r", "g", "r_wg", "g_wr", "wr", "wg", "wr_wg", "r_wr", "g_wg", "r_wr_wg", "g_wr_wg")


# ---------------------------------------------------------------------------------------
# Thresholds
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChannelThreshold:
    """The threshold rule of one channel.

    Parameters
    ----------
    level : float or None
        Threshold T in image intensity units. ``None``: no threshold (no background
        subtraction; the weight and the object test use T = 0).
    soft_range : float
        Soft-threshold range rho >= 0 in intensity units: the weight rises linearly
        from 0 at ``T - rho/2`` to 1 at ``T + rho/2``. It changes only the weights.
    subtract : bool
        Background-correct values as ``max(v - T, 0)`` (Huygens). False: values are used
        as they are and T only decides what is above threshold (Coloc 2, JACoP, skimage).
    inclusive : bool
        "Above threshold" means ``v >= T and v > 0`` (Coloc 2) instead of ``v > T``.
    """

    level: float | None = None
    soft_range: float = 0.0
    subtract: bool = True
    inclusive: bool = False

    def __post_init__(self):
        if self.level is not None and not np.isfinite(self.level):
            raise ValueError(f"threshold {self.level!r} must be a finite number (or None for no threshold).")
        if not (np.isfinite(self.soft_range) and self.soft_range >= 0):
            raise ValueError(
                f"threshold_range {self.soft_range!r} must be a finite number >= 0 "
                f"(0 for a hard threshold)."
            )

    @property
    def cut(self) -> float:
        """The threshold used by the weight and the object test (0 when none is given)."""
        return 0.0 if self.level is None else float(self.level)

    def corrected(self, values: np.ndarray) -> np.ndarray:
        """Background-corrected values ``max(v - T, 0)`` as float64 (``v`` when T is None)."""
        values = np.asarray(values, dtype=np.float64)
        if self.level is None or not self.subtract:
            return values
        return np.maximum(values - float(self.level), 0.0)

    def weight(self, values: np.ndarray) -> np.ndarray:
        """Weight in [0, 1]: ``v > T`` for a hard threshold, a linear ramp for a soft one."""
        values = np.asarray(values, dtype=np.float64)
        if self.soft_range == 0:
            return self.above(values).astype(np.float64)
        low = self.cut - self.soft_range / 2
        return np.clip((values - low) / self.soft_range, 0.0, 1.0)

    def above(self, values: np.ndarray) -> np.ndarray:
        """Boolean: the voxel belongs to this channel's objects (``v > T``)."""
        values = np.asarray(values)
        if self.inclusive:
            return (values >= self.cut) & (values > 0)
        return values > self.cut


@dataclass(frozen=True)
class Thresholds:
    """The threshold rules of both channels, and the conventions that differ between tools.

    Attributes
    ----------
    channel1, channel2 : ChannelThreshold
    manders : {"all", "own"}
        Denominator of m1 (m2 alike): ``"all"``: sum of R' over the mask (Huygens,
        Coloc 2, scikit-image); ``"own"``: sum of R' over voxels above channel 1's own
        threshold, the numerator then also requiring it (JACoP).
    icq_zero_positive : bool
        ICQ counts zero products as positive (Coloc 2) instead of only positive ones.
    """

    channel1: ChannelThreshold = field(default_factory=ChannelThreshold)
    channel2: ChannelThreshold = field(default_factory=ChannelThreshold)
    manders: str = "all"
    icq_zero_positive: bool = False


# ---------------------------------------------------------------------------------------
# Moments and the Chan et al. pairwise merge
# ---------------------------------------------------------------------------------------
@njit(nogil=True, cache=True, inline="always")
def _entry(values, codes, i):
    """``values[i]``, or ``values[codes[i]]`` when ``codes`` is given."""
    if codes is None:
        return values[i]
    return values[codes[i]]


@njit(nogil=True, cache=True, fastmath=REASSOCIATE)
def _weighted_comoments(x, y, weights, x_codes, y_codes):
    """``(n, mean_x, mean_y, m2_x, m2_y, c_xy)`` of values occurring ``weights`` times
    (two-pass); entry ``i`` is ``x[i]``, or ``x[x_codes[i]]`` (``y`` alike)."""
    n = mean_x = mean_y = 0.0
    for i in range(weights.size):
        n += weights[i]
        mean_x += weights[i] * _entry(x, x_codes, i)
        mean_y += weights[i] * _entry(y, y_codes, i)
    if n == 0:
        return 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    mean_x /= n
    mean_y /= n
    m2_x = m2_y = c_xy = 0.0
    for i in range(weights.size):
        dx = _entry(x, x_codes, i) - mean_x
        dy = _entry(y, y_codes, i) - mean_y
        m2_x += weights[i] * dx * dx
        m2_y += weights[i] * dy * dy
        c_xy += weights[i] * dx * dy
    return n, mean_x, mean_y, m2_x, m2_y, c_xy


@dataclass(frozen=True)
class Moments:
    """Count, means and centred second moments of value pairs ``(x, y)``.

    All fields are float64 arrays of one shape (scalar, or one entry per shift).
    ``m2_x = sum (x - mean_x)^2``, ``c_xy = sum (x - mean_x)(y - mean_y)``.
    """

    n: np.ndarray
    mean_x: np.ndarray
    mean_y: np.ndarray
    m2_x: np.ndarray
    m2_y: np.ndarray
    c_xy: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, ...] = ()) -> "Moments":
        zero = np.zeros(shape, dtype=np.float64)
        return cls(zero, zero, zero, zero, zero, zero)

    @classmethod
    def from_weighted(cls, x: np.ndarray, y: np.ndarray, weights: np.ndarray,
                      x_codes: np.ndarray | None = None, y_codes: np.ndarray | None = None) -> "Moments":
        """Moments of values ``x, y`` each occurring ``weights`` times (two-pass, centred);
        with codes, entry ``i`` is ``x[x_codes[i]]`` (``y`` alike)."""
        x, y = (np.asarray(v, dtype=np.float64) for v in (x, y))
        return cls(*(np.float64(v) for v in _weighted_comoments(x, y, np.asarray(weights), x_codes, y_codes)))

    def merge(self, other: "Moments") -> "Moments":
        """Moments of the union of two disjoint sets (Chan, Golub & LeVeque pairwise update)."""
        n = self.n + other.n
        with np.errstate(invalid="ignore", divide="ignore"):
            fraction = np.where(n > 0, other.n / np.where(n > 0, n, 1.0), 0.0)
        delta_x = other.mean_x - self.mean_x
        delta_y = other.mean_y - self.mean_y
        cross = self.n * fraction  # n_a n_b / n
        return Moments(
            n,
            self.mean_x + delta_x * fraction,
            self.mean_y + delta_y * fraction,
            self.m2_x + other.m2_x + delta_x * delta_x * cross,
            self.m2_y + other.m2_y + delta_y * delta_y * cross,
            self.c_xy + other.c_xy + delta_x * delta_y * cross,
        )

    def pearson(self) -> tuple[np.ndarray, np.ndarray]:
        """Pearson r and, where r is undefined, the reason (``""`` where defined).

        A variance within rounding of zero (``m2 <= 16 n (eps mean)^2``: what rounding the
        mean of a constant leaves) counts as zero, so r of constant data is NaN however
        the data were chunked.
        """
        eps = np.finfo(np.float64).eps
        spurious_x = 16 * self.n * (eps * self.mean_x) ** 2
        spurious_y = 16 * self.n * (eps * self.mean_y) ** 2
        real_variance = (self.m2_x > spurious_x) & (self.m2_y > spurious_y)
        denominator = np.where(real_variance, np.sqrt(self.m2_x * self.m2_y), 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(denominator > 0, self.c_xy / np.where(denominator > 0, denominator, 1.0), np.nan)
        r = np.clip(r, -1.0, 1.0)
        reason = np.where(
            self.n == 0,
            "no voxels",
            np.where(denominator > 0, "", "zero variance in a channel"),
        )
        return r, reason


# ---------------------------------------------------------------------------------------
# Joint histogram (sparse): distinct value pairs and their counts
# ---------------------------------------------------------------------------------------
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
            out.append((distinct, codes, _tie_counts(codes, self.counts, len(distinct))))
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
def _value_range(values):
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
        low, high = (int(v) for v in _value_range(values))
        return _Coding(values, low, high - low + 1, lambda index: index + low, dense=True)
    single = values.astype(np.float32, copy=False)
    if values.dtype.itemsize <= 4 or np.array_equal(single, values):
        bits = _orderable_bits(np.ascontiguousarray(single).reshape(-1))
        low, high = (int(v) for v in _value_range(bits))
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
        first, run = _runs(index1)
        known[0] = out1[first], run
    return JointTable(out1, out2, pair_counts, tuple(known))


def _runs(ascending: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Of an ascending array: where each run of equal values starts (boolean), and per
    element the index of its run."""
    first = np.concatenate(([True], ascending[1:] != ascending[:-1]))
    return first, np.cumsum(first) - 1


def joint_table(values1: np.ndarray, values2: np.ndarray) -> JointTable:
    """Joint histogram of two equally long 1-D arrays of finite values."""
    return _aggregate(np.ravel(values1), np.ravel(values2), None)


# ---------------------------------------------------------------------------------------
# Per-part statistics
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PartStatistics:
    """Mergeable statistics of one part (chunk) of one frame; see the module docstring.

    Attributes
    ----------
    table : JointTable
        Joint histogram of the raw values of the finite voxels inside the mask.
    mask_moments, object_moments : Moments
        Of ``(R', G')`` over the mask, and over the object voxels (R > T_R or G > T_G).
    sums : numpy.ndarray
        float64, the sums named in :data:`SUM_NAMES` (R' etc. over the mask).
    n_nonfinite : int
        Voxels inside the mask with a NaN or infinite value in either channel.
    """

    table: JointTable
    mask_moments: Moments
    object_moments: Moments
    sums: np.ndarray
    n_nonfinite: int

    def merge(self, other: "PartStatistics") -> "PartStatistics":
        return PartStatistics(
            self.table.merge(other.table),
            self.mask_moments.merge(other.mask_moments),
            self.object_moments.merge(other.object_moments),
            self.sums + other.sums,
            self.n_nonfinite + other.n_nonfinite,
        )


def part_statistics(
    image1: np.ndarray, image2: np.ndarray, mask: np.ndarray | None, thresholds: Thresholds
) -> PartStatistics:
    """Statistics of one chunk of a frame.

    Parameters
    ----------
    image1, image2 : numpy.ndarray
        The chunk of each channel (any numeric dtype, same shape).
    mask : numpy.ndarray or None
        The chunk of the mask (non-zero = inside), or None (every voxel inside).
    thresholds : Thresholds
        Threshold rules of both channels.
    """
    values1 = np.asarray(image1)
    values2 = np.asarray(image2)
    if mask is not None:
        inside = np.asarray(mask) != 0
        values1 = values1[inside]
        values2 = values2[inside]
    else:
        values1 = values1.ravel()
        values2 = values2.ravel()
    n_nonfinite = 0
    if values1.dtype.kind == "f" or values2.dtype.kind == "f":
        finite = np.isfinite(values1) & np.isfinite(values2)
        n_nonfinite = int(finite.size - np.count_nonzero(finite))
        if n_nonfinite:
            values1 = values1[finite]
            values2 = values2[finite]
        # -0.0 and 0.0 are one value
        values1 = values1 + values1.dtype.type(0) if values1.dtype.kind == "f" else values1
        values2 = values2 + values2.dtype.type(0) if values2.dtype.kind == "f" else values2
    table = joint_table(values1, values2)
    return statistics_from_table(table, thresholds, n_nonfinite)


@njit(nogil=True, cache=True, fastmath=REASSOCIATE)
def _threshold_sums(codes1, codes2, counts, corrected1, corrected2, weight1, weight2):
    """The sums of :data:`SUM_NAMES`, in order, over the voxels of a joint histogram.

    Entry ``i`` stands for ``counts[i]`` voxels with ``R' = corrected1[codes1[i]]`` and
    ``wR = weight1[codes1[i]]`` (channel 2 alike).
    """
    # scalars, not array slots: the compiler keeps them in registers and vectorises
    s_rg = s_rr = s_gg = s_r = s_g = s_r_wg = s_g_wr = s_wr = s_wg = s_wr_wg = 0.0
    s_r_wr = s_g_wg = s_r_wr_wg = s_g_wr_wg = 0.0
    for i in range(codes1.size):
        c = counts[i]
        r, g = corrected1[codes1[i]], corrected2[codes2[i]]
        wr, wg = weight1[codes1[i]], weight2[codes2[i]]
        cr, cg = c * r, c * g
        s_rg += cr * g
        s_rr += cr * r
        s_gg += cg * g
        s_r += cr
        s_g += cg
        s_r_wg += cr * wg
        s_g_wr += cg * wr
        s_wr += c * wr
        s_wg += c * wg
        s_wr_wg += c * wr * wg
        s_r_wr += cr * wr
        s_g_wg += cg * wg
        s_r_wr_wg += cr * wr * wg
        s_g_wr_wg += cg * wr * wg
    return np.array([s_rg, s_rr, s_gg, s_r, s_g, s_r_wg, s_g_wr, s_wr, s_wg, s_wr_wg,
                     s_r_wr, s_g_wg, s_r_wr_wg, s_g_wr_wg])


def _value_lookups(values: np.ndarray, known: tuple[np.ndarray, np.ndarray] | None,
                   threshold: ChannelThreshold) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(codes, corrected, weight)``: per entry a code, and per code the threshold rule's
    results. With candidate codes (``known``, see :attr:`JointTable.candidate_codes`) the
    rule is evaluated once per candidate value; otherwise each entry is its own code."""
    candidates, codes = (values, np.arange(values.size)) if known is None else known
    return codes, threshold.corrected(candidates), threshold.weight(candidates)


def statistics_from_table(table: JointTable, thresholds: Thresholds, n_nonfinite: int = 0) -> PartStatistics:
    """The :class:`PartStatistics` of the voxels a joint histogram describes."""
    known1, known2 = table.candidate_codes
    codes1, corrected1, weight1 = _value_lookups(table.values1, known1, thresholds.channel1)
    codes2, corrected2, weight2 = _value_lookups(table.values2, known2, thresholds.channel2)
    counts = table.counts
    in_objects = table.object_entries(thresholds)
    return PartStatistics(
        table=table,
        mask_moments=Moments.from_weighted(corrected1, corrected2, counts, codes1, codes2),
        object_moments=Moments.from_weighted(corrected1, corrected2, counts * in_objects, codes1, codes2),
        sums=_threshold_sums(codes1, codes2, counts, corrected1, corrected2, weight1, weight2),
        n_nonfinite=n_nonfinite,
    )


# ---------------------------------------------------------------------------------------
# Rank statistics from a joint histogram
# ---------------------------------------------------------------------------------------
def _offset_span(n_entries: int) -> int:
    """The largest span of integer values coded by offset for ``n_entries`` entries: 4 per
    entry, or 2^16 (more would make lookups per value cost more than per entry)."""
    return max(4 * n_entries, 1 << 16)


def _offset_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Integers over a modest span (:func:`_offset_span`): every value of the span in
    ascending order and, per entry, its offset from the lowest (int64); None otherwise."""
    if values.dtype.kind in "iu" and values.size:
        low, high = (int(v) for v in _value_range(values))
        if high - low + 1 <= _offset_span(values.size):
            return np.arange(low, high + 1, dtype=values.dtype), (values - low).astype(np.int64, copy=False)
    return None


@njit(nogil=True, cache=True)
def _tie_counts(codes, counts, n_codes):
    """Number of voxels (``counts`` per entry) of each code ``0 .. n_codes - 1``."""
    ties = np.zeros(n_codes, np.int64)
    for i in range(codes.size):
        ties[codes[i]] += counts[i]
    return ties


def _ranks_of_ties(ties: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, float64) of values occurring ``ties`` times, in ascending order."""
    return np.cumsum(ties) - (ties - 1) / 2.0


def corrected_ranks(table: JointTable, thresholds: Thresholds, weights: np.ndarray | None = None
                    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Exact average ranks of the background-corrected values of a joint histogram.

    Parameters
    ----------
    table : JointTable
        Of the raw values. Correction ``v' = max(v - T, 0)`` never reorders values, only
        ties those at or below T, so the ranks follow from the table's own value codes.
    thresholds : Thresholds
    weights : numpy.ndarray, optional
        Voxels per entry to rank (default ``table.counts``; e.g. zero outside the objects).

    Returns
    -------
    list
        Per channel ``(values, ranks, codes)``: the distinct corrected candidate values in
        ascending order, the average rank (1-based, float64) of each, and per entry the
        index of its value.
    """
    out = []
    for (distinct, codes, ties), threshold in zip(table.marginals, (thresholds.channel1, thresholds.channel2)):
        values = threshold.corrected(distinct)
        first, run = _runs(values)
        if not first.all():  # values tied by the correction share one code
            values, codes = values[first], run[codes]
            ties = None
        if ties is None or weights is not None:
            ties = _tie_counts(codes, table.counts if weights is None else weights, values.size)
        out.append((values, _ranks_of_ties(ties), codes))
    return out


def rank_pearson(table: JointTable, thresholds: Thresholds, weights: np.ndarray | None = None
                 ) -> tuple[float, str]:
    """Spearman's rho of the corrected values a histogram holds (``weights`` voxels per
    entry, default ``table.counts``): Pearson r of their average ranks."""
    if not (table.counts if weights is None else weights).any():
        return np.nan, "no voxels"
    (_, ranks1, codes1), (_, ranks2, codes2) = corrected_ranks(table, thresholds, weights)
    r, reason = Moments.from_weighted(ranks1, ranks2, table.counts if weights is None else weights,
                                      codes1, codes2).pearson()
    return float(r), str(reason)


@njit(nogil=True, cache=True)
def _weighted_inversions(order_codes: np.ndarray, weights: np.ndarray) -> int:
    """Sum of ``w_i w_j`` over index pairs ``i < j`` with ``order_codes[i] > order_codes[j]``.

    One pass with a Fenwick tree over the codes (non-negative integers), reversed so that
    a prefix sum is the weight seen with a higher code: O(P log K) for P entries and K
    codes. Exact in int64 while the total stays below 2^63 (a frame of fewer than about
    4 x 10^9 voxels).
    """
    n_codes = 0
    for code in order_codes:
        n_codes = max(n_codes, code + 1)
    tree = np.zeros(n_codes + 1, np.int64)  # code c sits at position n_codes - c
    total = 0
    for i in range(order_codes.size):
        k = n_codes - order_codes[i] - 1  # positions 1..k: the codes above this one
        above = 0
        while k > 0:
            above += tree[k]
            k &= k - 1
        total += weights[i] * above
        k = n_codes - order_codes[i]
        while k <= n_codes:
            tree[k] += weights[i]
            k += k & -k
    return total


def kendall_tau_b(table: JointTable) -> tuple[float, str]:
    """Kendall's tau-b of the pairs a histogram holds (exact, ties handled as in tau-b)."""
    n = table.n
    if n < 2:
        return np.nan, "fewer than 2 voxels"
    counts = table.counts
    (_, _, ties1), (_, codes2, ties2) = table.marginals
    # table is sorted by (values1, values2): an inversion of the values2 order is a
    # discordant pair (pairs tied in values1 are in ascending values2 order: none counted)
    discordant = int(_weighted_inversions(codes2, counts))

    def tied_pairs(group_counts):  # sum of c (c - 1) / 2; each c (c - 1) is even
        return int(np.dot(group_counts, group_counts - 1)) // 2

    n0 = n * (n - 1) // 2
    n1 = tied_pairs(ties1)
    n2 = tied_pairs(ties2)
    n3 = tied_pairs(counts)
    s = n0 - n1 - n2 + n3 - 2 * discordant
    if n0 == n1 or n0 == n2:
        return np.nan, "all values of a channel are tied"
    tau = s / np.sqrt(float(n0 - n1) * float(n0 - n2))
    return float(np.clip(tau, -1.0, 1.0)), ""


def icq_count(table: JointTable, zero_positive: bool = False) -> int:
    """Number of voxels with ``(v1 - mean1)(v2 - mean2) > 0`` (``>= 0``) in a histogram.

    The means are those of the histogram. Voxels at a channel's mean make the product
    exactly zero, so the comparison is made exactly: in integers for integer values
    (``sign(n v - sum v)``), else against means from an exactly rounded sum. The
    histogram of a frame is the same however it was chunked, so is the count.
    """
    n = table.n
    signs = []
    for distinct, _, ties in table.marginals:  # the sign of each candidate value
        if table.integer and float(np.abs(distinct).max()) * n < 2**62:
            total = int(np.dot(ties, distinct))  # exact: below 2^62 by the test above
            signs.append(np.sign(distinct * n - total).astype(np.int8))
        else:
            products = ties.astype(np.float64) * distinct.astype(np.float64)
            signs.append(np.sign(distinct - math.fsum(products) / n).astype(np.int8))
    (_, codes1, _), (_, codes2, _) = table.marginals
    return int(_count_same_sign(codes1, signs[0], codes2, signs[1], table.counts, zero_positive))


@njit(nogil=True, cache=True)
def _count_same_sign(codes1, signs1, codes2, signs2, counts, zero_counts):
    """Total count of the entries with ``signs1[codes1] * signs2[codes2] > 0`` (``>= 0``)."""
    total = 0
    for i in range(codes1.size):
        product = signs1[codes1[i]] * signs2[codes2[i]]
        if product > 0 or (zero_counts and product == 0):
            total += counts[i]
    return total


# ---------------------------------------------------------------------------------------
# Finalisation
# ---------------------------------------------------------------------------------------
def _ratio(numerator: float, denominator: float, reason: str) -> tuple[float, str]:
    if denominator > 0:
        return float(numerator / denominator), ""
    return np.nan, reason


def finalize(stats: PartStatistics, thresholds: Thresholds) -> dict[str, tuple[float, str]]:
    """Every coefficient of a frame from its merged statistics.

    Returns
    -------
    dict
        ``name -> (value, reason)`` for every name in :data:`COEFFICIENT_NAMES`;
        ``reason`` is ``""`` where the value is defined, else why it is NaN.
    """
    if stats.n_nonfinite:
        reason = f"{stats.n_nonfinite} NaN/Inf voxels inside the mask"
        return {name: (np.nan, reason) for name in COEFFICIENT_NAMES}
    if stats.table.n == 0:
        return {name: (np.nan, "empty mask") for name in COEFFICIENT_NAMES}
    s = dict(zip(SUM_NAMES, stats.sums))
    out: dict[str, tuple[float, str]] = {}
    r, reason = stats.mask_moments.pearson()
    out["pearson"] = (float(r), str(reason))
    r, reason = stats.object_moments.pearson()
    out["object_pearson"] = (float(r), "no object voxels" if stats.object_moments.n == 0 else str(reason))

    out["spearman"] = rank_pearson(stats.table, thresholds)
    in_object = stats.table.object_entries(thresholds)
    if in_object.any():
        out["object_spearman"] = rank_pearson(stats.table, thresholds, stats.table.counts * in_object)
    else:
        out["object_spearman"] = (np.nan, "no object voxels")
    corrected = stats.table.corrected(thresholds)
    out["kendall_tau"] = kendall_tau_b(corrected)

    no_signal = "no signal: sum of R'^2 or G'^2 is zero"
    out["overlap"] = _ratio(s["rg"], np.sqrt(s["rr"] * s["gg"]), no_signal)
    out["k1"] = _ratio(s["rg"], s["rr"], "no signal in channel 1: sum of R'^2 is zero")
    out["k2"] = _ratio(s["rg"], s["gg"], "no signal in channel 2: sum of G'^2 is zero")
    if thresholds.manders == "own":
        out["m1"] = _ratio(s["r_wr_wg"], s["r_wr"], "no signal above threshold in channel 1")
        out["m2"] = _ratio(s["g_wr_wg"], s["g_wg"], "no signal above threshold in channel 2")
    else:
        out["m1"] = _ratio(s["r_wg"], s["r"], "no signal in channel 1: sum of R' is zero")
        out["m2"] = _ratio(s["g_wr"], s["g"], "no signal in channel 2: sum of G' is zero")
    union = s["wr"] + s["wg"] - s["wr_wg"]
    out["intersection"] = _ratio(s["wr_wg"], union, "no voxel above threshold in either channel")
    out["i1"] = _ratio(s["wr_wg"], s["wr"], "no voxel above threshold in channel 1")
    out["i2"] = _ratio(s["wr_wg"], s["wg"], "no voxel above threshold in channel 2")

    positive = icq_count(corrected, thresholds.icq_zero_positive)
    out["icq"] = (positive / stats.table.n - 0.5, "")
    return out


# ---------------------------------------------------------------------------------------
# Van Steensel: moments of shifted pairs, per chunk
# ---------------------------------------------------------------------------------------
STRIP_VOXELS = 1 << 20  # voxels per strip of a float chunk converted at once


@njit(nogil=True, cache=True, fastmath=REASSOCIATE)
def _dot(x, y):
    """Dot product of two equally long 1-D arrays."""
    total = 0.0
    for i in range(x.size):  # a range from 0: no negative-index wrap-around to check
        total += x[i] * y[i]
    return total


@njit(nogil=True, cache=True, fastmath=REASSOCIATE)
def _dot8(x0, x1, x2, x3, x4, x5, x6, x7, y):
    """Eight dot products with one ``y``: ``y`` is loaded once for eight multiply-adds."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    for i in range(y.size):
        value = y[i]
        s0 += x0[i] * value
        s1 += x1[i] * value
        s2 += x2[i] * value
        s3 += x3[i] * value
        s4 += x4[i] * value
        s5 += x5[i] * value
        s6 += x6[i] * value
        s7 += x7[i] * value
    return s0, s1, s2, s3, s4, s5, s6, s7


@njit(nogil=True, cache=True, fastmath=REASSOCIATE)
def _masked_pair_sums(left, left_squared, left_weight, right, right_squared, right_weight, out):
    """``out += (sum lw rw, sum l rw, sum l^2 rw, sum lw r, sum lw r^2, sum l r)`` over
    equally long segments: the six sums of the pairs whose two voxels both count."""
    n = sum_l = sum_ll = sum_r = sum_rr = sum_lr = 0.0
    for i in range(right.size):
        n += left_weight[i] * right_weight[i]
        sum_l += left[i] * right_weight[i]
        sum_ll += left_squared[i] * right_weight[i]
        sum_r += left_weight[i] * right[i]
        sum_rr += left_weight[i] * right_squared[i]
        sum_lr += left[i] * right[i]
    out[0] += n
    out[1] += sum_l
    out[2] += sum_ll
    out[3] += sum_r
    out[4] += sum_rr
    out[5] += sum_lr


@njit(nogil=True, cache=True)
def _add_lagged_row(left, right, shifts, core_start, core_stop, out):
    """``out[s] += sum over x in the core of left[x - dx] * right[x]`` for one row.

    Shifts go eight at a time over the ``x`` all eight can pair (:func:`_dot8`); the few
    ``x`` at the ends that only some of them reach, and the shifts left over, are added
    one shift at a time.
    """
    width = left.size
    s = 0
    while s < shifts.size:
        block = min(8, shifts.size - s)
        highest = lowest = shifts[s]
        for k in range(s, s + block):
            highest, lowest = max(highest, shifts[k]), min(lowest, shifts[k])
        common_lo, common_hi = max(core_start, highest), min(core_stop, width + lowest)
        if block < 8 or common_hi <= common_lo:
            common_lo = common_hi = core_stop  # no common part: every shift on its own below
        else:
            lo, hi = common_lo, common_hi
            sums = _dot8(left[lo - shifts[s]:hi - shifts[s]], left[lo - shifts[s + 1]:hi - shifts[s + 1]],
                         left[lo - shifts[s + 2]:hi - shifts[s + 2]], left[lo - shifts[s + 3]:hi - shifts[s + 3]],
                         left[lo - shifts[s + 4]:hi - shifts[s + 4]], left[lo - shifts[s + 5]:hi - shifts[s + 5]],
                         left[lo - shifts[s + 6]:hi - shifts[s + 6]], left[lo - shifts[s + 7]:hi - shifts[s + 7]],
                         right[lo:hi])
            for k in range(8):
                out[s + k] += sums[k]
        for k in range(s, s + block):
            dx = shifts[k]
            lo, hi = max(core_start, dx), min(core_stop, width + dx)
            if hi <= lo:
                continue
            if common_hi <= common_lo:
                out[k] += _dot(left[lo - dx:hi - dx], right[lo:hi])
                continue
            if lo < common_lo:
                out[k] += _dot(left[lo - dx:common_lo - dx], right[lo:common_lo])
            if common_hi < hi:
                out[k] += _dot(left[common_hi - dx:hi - dx], right[common_hi:hi])
        s += block


@njit(nogil=True, cache=True)
def _prepare_row(values1, values2, mask, lookup1, low1, offset1, lookup2, low2, offset2, finite,
                 left, right, weight):
    """Fill ``left``, ``right`` (0 where a voxel does not count) and ``weight`` (1 where it
    does) from one row; returns how many voxels count (see :func:`_shifted_sums`)."""
    if finite and mask is None:  # every voxel counts
        for x in range(values1.size):
            left[x] = _converted(values1[x], lookup1, low1, offset1)
            right[x] = _converted(values2[x], lookup2, low2, offset2)
        return values1.size
    counted = 0
    for x in range(values1.size):
        l = _converted(values1[x], lookup1, low1, offset1)
        r = _converted(values2[x], lookup2, low2, offset2)
        inside = (l - l + r - r) == 0.0  # both finite (inf - inf and NaN give NaN)
        if mask is not None:
            inside &= mask[x] != 0
        weight[x] = inside
        left[x] = l if inside else 0.0
        right[x] = r if inside else 0.0
        counted += inside
    return counted


@njit(nogil=True, cache=True, inline="always")
def _converted(value, lookup, low, offset):
    """``value - offset`` (``lookup`` None), or ``lookup[value - low]``."""
    if lookup is None:
        return value - offset
    return lookup[value - low]


@njit(nogil=True, cache=True, fastmath=REASSOCIATE)
def _add_row_totals(left, right, totals):
    """``totals += (sum l, sum l^2, sum r, sum r^2)`` over one row."""
    sum_l = sum_ll = sum_r = sum_rr = 0.0
    for x in range(left.size):
        sum_l += left[x]
        sum_ll += left[x] * left[x]
        sum_r += right[x]
        sum_rr += right[x] * right[x]
    totals[0] += sum_l
    totals[1] += sum_ll
    totals[2] += sum_r
    totals[3] += sum_rr


@njit(nogil=True, cache=True)
def _add_column(left, right, x, columns):
    columns[0, x] += left[x]
    columns[1, x] += left[x] * left[x]
    columns[2, x] += right[x]
    columns[3, x] += right[x] * right[x]


@njit(nogil=True, cache=True)
def _shifted_sums(image1, image2, mask, lookup1, low1, offset1, lookup2, low2, offset2, finite,
                  shifts, core_start, core_stop, sums, columns, totals, edge_stop, edge_start):
    """Sums of the shifted pairs ``(l, r) = (R'(x - dx) - c1, G'(x) - c2)`` of a chunk's rows.

    Parameters
    ----------
    image1, image2 : numpy.ndarray
        2-D ``(rows, W)``, turned into ``l = R' - c1`` (``r = G' - c2``) one row at a time:
        ``v - offset1`` when ``lookup1`` is None, else ``lookup1[v - low1]``.
    mask : numpy.ndarray or None
        2-D, non-zero inside. A voxel counts when inside and finite in both channels; a
        pair counts when both its voxels do.
    finite : bool
        Every converted value is finite (integer images): no test per voxel.
    shifts : numpy.ndarray
        int64 shifts ``dx``; pairs are summed over ``x`` in ``[core_start, core_stop)``.
    sums : numpy.ndarray
        ``(6, len(shifts))``, added to: per shift ``n, sum l, sum l^2, sum r, sum r^2``
        over the pairs of rows with a voxel that does not count, and ``sum l r`` over all.
    columns, totals : numpy.ndarray
        ``(4, W)`` and ``(4,)``, added to: over the rows where every voxel counts, the
        sums of ``l, l^2, r, r^2`` per column for the columns ``[0, edge_stop)`` and
        ``[edge_start, W)``, and in all (their marginal sums follow: the total less the
        columns outside a shift's range, which lie at the ends).

    Returns
    -------
    int
        The number of rows where every voxel counts.

    Notes
    -----
    A row where every voxel counts needs one dot product per shift (:func:`_add_lagged_row`);
    any other row six fused sums per shift (:func:`_masked_pair_sums`).
    """
    rows, width = image1.shape
    left = np.empty(width)
    right = np.empty(width)
    weight = np.empty(width)
    left_squared = np.empty(width)
    right_squared = np.empty(width)
    full_rows = 0
    for row in range(rows):
        counted = _prepare_row(image1[row], image2[row], None if mask is None else mask[row],
                               lookup1, low1, offset1, lookup2, low2, offset2, finite, left, right, weight)
        if counted == width:
            _add_lagged_row(left, right, shifts, core_start, core_stop, sums[5])
            _add_row_totals(left, right, totals)
            for x in range(edge_stop):
                _add_column(left, right, x, columns)
            for x in range(max(edge_stop, edge_start), width):
                _add_column(left, right, x, columns)
            full_rows += 1
        elif counted:
            for x in range(width):
                left_squared[x] = left[x] * left[x]
                right_squared[x] = right[x] * right[x]
            for s in range(shifts.size):
                dx = shifts[s]
                lo, hi = max(core_start, dx), min(core_stop, width + dx)
                if hi > lo:
                    _masked_pair_sums(left[lo - dx:hi - dx], left_squared[lo - dx:hi - dx],
                                      weight[lo - dx:hi - dx], right[lo:hi], right_squared[lo:hi],
                                      weight[lo:hi], sums[:, s])
    return full_rows


def _row_conversion(threshold: ChannelThreshold, values: np.ndarray, centre: float
                    ) -> tuple[np.ndarray | None, int, float] | None:
    """How :func:`_shifted_sums` turns integer values ``v`` into ``corrected(v) - centre``:
    ``(None, 0, centre)`` where the correction leaves them as they are, else a lookup
    ``(lookup, low, 0.0)`` with ``lookup[v - low]``; None for non-integer values or a span
    over 2^20 (converted beforehand)."""
    if values.dtype.kind not in "iu" or values.size == 0:
        return None
    if threshold.level is None or not threshold.subtract:  # values as they are
        return None, 0, centre
    low, high = (int(v) for v in _value_range(values))
    if high - low >= 1 << 20:
        return None
    candidates = np.arange(low, high + 1)
    corrected = threshold.corrected(candidates)
    if np.array_equal(corrected, candidates):
        return None, 0, centre
    return corrected - centre, low, 0.0


def shifted_moments(
    image1: np.ndarray,
    image2: np.ndarray,
    mask: np.ndarray | None,
    thresholds: Thresholds,
    shifts: np.ndarray,
    core: tuple[int, int],
    axis: int = -1,
) -> Moments:
    """Moments of ``(R'(x - dx), G'(x))`` for every shift ``dx``, for one chunk.

    Parameters
    ----------
    image1, image2, mask : numpy.ndarray
        A chunk extended along ``axis`` by up to ``max|dx|`` voxels of its neighbours on
        each side (less at the image border: no wrap-around). ``mask`` may be None.
    thresholds : Thresholds
    shifts : numpy.ndarray
        Integer shifts in voxels.
    core : (int, int)
        The chunk's own voxels along ``axis``, as ``[start, stop)`` in the extended chunk;
        pairs are attributed to the chunk that holds their channel-2 voxel.
    axis : int
        The shift axis.

    Returns
    -------
    Moments
        Arrays of ``len(shifts)`` entries. A pair counts when both voxels are inside the
        mask and finite.
    """
    shifts = np.asarray(shifts, dtype=np.int64)
    r_all = np.moveaxis(np.asarray(image1), axis, -1)
    width = r_all.shape[-1]
    r_all = r_all.reshape(-1, width)
    g_all = np.moveaxis(np.asarray(image2), axis, -1).reshape(-1, width)
    m_all = None if mask is None else np.moveaxis(np.asarray(mask), axis, -1).reshape(-1, width)
    if m_all is not None and m_all.dtype == bool:
        m_all = m_all.view(np.uint8)
    n_rows = r_all.shape[0]
    th1, th2 = thresholds.channel1, thresholds.channel2

    # centres near the means keep the one-pass sums below from cancelling
    sample = slice(None, None, max(1, n_rows // 16))
    r_sample, g_sample = th1.corrected(r_all[sample]), th2.corrected(g_all[sample])
    usable = np.isfinite(r_sample) & np.isfinite(g_sample)
    if m_all is not None:
        usable &= m_all[sample] != 0
    centre_r = float(r_sample[usable].mean()) if usable.any() else 0.0
    centre_g = float(g_sample[usable].mean()) if usable.any() else 0.0

    # the column ranges each shift sums over, on the right (channel 2) and left side
    ranges = [(s, max(core[0], dx), min(core[1], width + dx), dx) for s, dx in enumerate(shifts.tolist())]
    ranges = [(s, lo, hi, dx) for s, lo, hi, dx in ranges if hi > lo]
    edge_stop = max([max(lo, lo - dx) for _, lo, _, dx in ranges], default=0)
    edge_start = min([min(hi, hi - dx) for _, _, hi, dx in ranges], default=width)
    sums = np.zeros((6, len(shifts)))
    columns = np.zeros((4, width))
    totals = np.zeros(4)
    conversion_r = _row_conversion(th1, r_all, centre_r)
    conversion_g = _row_conversion(th2, g_all, centre_g)
    if conversion_r is not None and conversion_g is not None:  # integers: converted row by row
        full_rows = _shifted_sums(r_all, g_all, m_all, *conversion_r, *conversion_g, True, shifts,
                                  core[0], core[1], sums, columns, totals, edge_stop, edge_start)
    else:
        full_rows = 0
        as_is = (None, 0, 0.0)
        step = max(1, STRIP_VOXELS // max(width, 1))
        for row0 in range(0, n_rows, step):
            rows = slice(row0, min(row0 + step, n_rows))
            full_rows += _shifted_sums(
                th1.corrected(r_all[rows]) - centre_r, th2.corrected(g_all[rows]) - centre_g,
                None if m_all is None else m_all[rows], *as_is, *as_is, False,
                shifts, core[0], core[1], sums, columns, totals, edge_stop, edge_start)
    cumulative = np.concatenate([np.zeros((4, 1)), np.cumsum(columns, axis=1)], axis=1)
    middle = totals - cumulative[:, -1]  # the columns not summed one by one
    for s, lo, hi, dx in ranges:
        # the rows where every voxel counts: n from the pair count; a range's sums are the
        # middle plus its end columns, over the shifted columns on the left side
        sums[0, s] += full_rows * (hi - lo)
        sums[1:3, s] += middle[0:2] + cumulative[0:2, hi - dx] - cumulative[0:2, lo - dx]
        sums[3:5, s] += middle[2:4] + cumulative[2:4, hi] - cumulative[2:4, lo]

    n, s_r, s_rr, s_g, s_gg, s_rg = sums
    with np.errstate(invalid="ignore", divide="ignore"):
        safe_n = np.where(n > 0, n, 1.0)
        mean_r = np.where(n > 0, s_r / safe_n, 0.0)
        mean_g = np.where(n > 0, s_g / safe_n, 0.0)
    m2_r = s_rr - mean_r * s_r
    m2_g = s_gg - mean_g * s_g
    moments = Moments(
        n,
        np.where(n > 0, mean_r + centre_r, 0.0),
        np.where(n > 0, mean_g + centre_g, 0.0),
        m2_r,
        m2_g,
        s_rg - mean_r * s_g,
    )
    # The one-pass moments lose the digits their centre is off by: where a shift's pairs
    # vary little around a mean far from the centre, recompute them in two passes.
    ill_conditioned = (n > 0) & ((m2_r <= 1e-6 * s_rr) | (m2_g <= 1e-6 * s_gg))
    if ill_conditioned.any():
        moments = _with_direct_shifts(moments, np.flatnonzero(ill_conditioned), r_all, g_all, m_all,
                                      thresholds, shifts, core)
    return moments


def _with_direct_shifts(moments: Moments, indices: np.ndarray, r_all: np.ndarray, g_all: np.ndarray,
                        m_all: np.ndarray | None, thresholds: Thresholds, shifts: np.ndarray,
                        core: tuple[int, int]) -> Moments:
    """``moments`` with the shifts at ``indices`` recomputed from their pairs (two-pass)."""
    fields = {name: np.array(getattr(moments, name), dtype=np.float64) for name in
              ("n", "mean_x", "mean_y", "m2_x", "m2_y", "c_xy")}
    width = r_all.shape[-1]
    r_all = thresholds.channel1.corrected(r_all)
    g_all = thresholds.channel2.corrected(g_all)
    counts = np.isfinite(r_all) & np.isfinite(g_all)  # as in _shifted_sums
    if m_all is not None:
        counts &= m_all != 0
    for k in indices:
        dx = int(shifts[k])
        lo, hi = max(core[0], dx), min(core[1], width + dx)
        inside = counts[:, lo - dx:hi - dx] & counts[:, lo:hi]
        r, g = r_all[:, lo - dx:hi - dx][inside], g_all[:, lo:hi][inside]
        direct = Moments.from_weighted(r, g, np.ones(r.size))
        for name in fields:
            fields[name][k] = getattr(direct, name)
    return Moments(**fields)


# ---------------------------------------------------------------------------------------
# Maps
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MapConstants:
    """Per-frame constants that turn per-voxel terms into map values (sum = coefficient).

    Entries are NaN where the coefficient is undefined (its map is then NaN inside the
    mask). ``rank_values*``/``ranks*`` are the distinct ``R'`` (``G'``) values over the
    mask and their average ranks, for the Spearman map.
    """

    mean1: float
    mean2: float
    pearson_denominator: float
    rank_values1: np.ndarray
    ranks1: np.ndarray
    rank_values2: np.ndarray
    ranks2: np.ndarray
    mean_rank: float
    spearman_denominator: float
    sum_rr: float
    sum_gg: float
    manders_denominator1: float
    manders_denominator2: float
    intersection_denominator: float

    @classmethod
    def from_statistics(cls, stats: PartStatistics, thresholds: Thresholds) -> "MapConstants":
        def positive(x: float) -> float:
            return float(x) if x > 0 else np.nan

        s = dict(zip(SUM_NAMES, stats.sums))
        m = stats.mask_moments
        if stats.table.n:
            (values1, ranks1, codes1), (values2, ranks2, codes2) = corrected_ranks(stats.table, thresholds)
            rank_moments = Moments.from_weighted(ranks1, ranks2, stats.table.counts, codes1, codes2)
            mean_rank = (stats.table.n + 1) / 2.0
            spearman_denominator = positive(np.sqrt(rank_moments.m2_x * rank_moments.m2_y))
        else:
            values1 = ranks1 = values2 = ranks2 = np.empty(0)
            mean_rank = spearman_denominator = np.nan
        invalid = stats.n_nonfinite > 0
        own = thresholds.manders == "own"
        return cls(
            mean1=float(m.mean_x),
            mean2=float(m.mean_y),
            pearson_denominator=np.nan if invalid else positive(np.sqrt(m.m2_x * m.m2_y)),
            rank_values1=values1,
            ranks1=ranks1,
            rank_values2=values2,
            ranks2=ranks2,
            mean_rank=mean_rank,
            spearman_denominator=np.nan if invalid else spearman_denominator,
            sum_rr=np.nan if invalid else positive(s["rr"]),
            sum_gg=np.nan if invalid else positive(s["gg"]),
            manders_denominator1=np.nan if invalid else positive(s["r_wr" if own else "r"]),
            manders_denominator2=np.nan if invalid else positive(s["g_wg" if own else "g"]),
            intersection_denominator=np.nan if invalid else positive(s["wr"] + s["wg"] - s["wr_wg"]),
        )


def coefficient_maps(
    image1: np.ndarray,
    image2: np.ndarray,
    mask: np.ndarray | None,
    thresholds: Thresholds,
    constants: MapConstants,
) -> np.ndarray:
    """Per-voxel maps of one chunk, stacked in :data:`MAP_NAMES` order.

    Returns
    -------
    numpy.ndarray
        float64, shape ``(len(MAP_NAMES), *image1.shape)``. Voxels outside the mask are
        0, so each map sums over the frame to its coefficient.
    """
    th1, th2 = thresholds.channel1, thresholds.channel2
    r = th1.corrected(image1)
    g = th2.corrected(image2)
    wr = th1.weight(image1)
    wg = th2.weight(image2)
    c = constants
    rg = r * g
    if c.rank_values1.size:
        rank1 = c.ranks1[np.clip(np.searchsorted(c.rank_values1, r), 0, c.rank_values1.size - 1)]
        rank2 = c.ranks2[np.clip(np.searchsorted(c.rank_values2, g), 0, c.rank_values2.size - 1)]
    else:
        rank1 = rank2 = np.zeros_like(r)
    maps = np.stack(
        [
            (r - c.mean1) * (g - c.mean2) / c.pearson_denominator,
            (rank1 - c.mean_rank) * (rank2 - c.mean_rank) / c.spearman_denominator,
            rg / np.sqrt(c.sum_rr * c.sum_gg),
            rg / c.sum_rr,
            rg / c.sum_gg,
            r * wg * (wr if thresholds.manders == "own" else 1.0) / c.manders_denominator1,
            g * wr * (wg if thresholds.manders == "own" else 1.0) / c.manders_denominator2,
            wr * wg / c.intersection_denominator,
        ]
    )
    if mask is not None:
        maps[:, np.asarray(mask) == 0] = 0.0
    return maps
