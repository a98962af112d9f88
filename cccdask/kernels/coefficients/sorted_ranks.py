"""Spearman, object Spearman, Kendall's tau-b and ICQ of a frame from its sorted keys.

From a frame's :class:`~.sorted_pairs.SortedPairs` (``n`` voxels):

* channel 1's exact average ranks come from the runs of equal (background-corrected)
  values in key order; channel 2's from one sort of ``code2 << 32 | position``
  (``code2`` the order bits of G, the values a threshold ties into one code);
* Spearman is the Pearson r of the two ranks, object Spearman the same with the ranks
  among the object voxels (found in the same passes); Kendall's tau-b counts the
  discordant pairs as the inversions of channel 2's ranks in channel 1's order (a
  Fenwick tree over ``sqrt(n)`` rank buckets, then one per bucket: both in cache), the
  tied pairs from the runs;
* ICQ compares each voxel's codes with the codes where the corrected values cross
  their means (exact sums; the codes found by bisection with the threshold rule).

Where the correction ``max(v - T, 0)`` rounds two distinct values to one (a negative T
far from tiny values) the joint histogram ranks the frame instead.

Cost: one sort of the frame's channel-2 keys, O(n) compiled passes (one random store
and one random load per voxel) and the inversion count. Memory: 20 bytes per voxel
besides the keys (the channel-2 keys, three uint32 arrays of ranks).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numba import njit

from cccdask.kernels.coefficients.moments import Moments
from cccdask.kernels.coefficients.ranks import table_rank_coefficients
from cccdask.kernels.coefficients.thresholds import ChannelThreshold, Thresholds
from cccdask.kernels.coefficients.sorted_pairs import HIGHEST_CODE, LOWEST_CODE, SortedPairs, _values_of_codes


# ---------------------------------------------------------------------------------------
# Code boundaries of the threshold rules
# ---------------------------------------------------------------------------------------
def _first_code(predicate) -> int:
    """The lowest order code whose float value satisfies ``predicate`` (monotone in the
    value: False, then True), by bisection over the finite codes; ``HIGHEST_CODE + 1``
    where none does."""
    low, high = LOWEST_CODE, HIGHEST_CODE + 1  # predicate False below low (-inf), True from high
    if predicate(-np.inf):
        return LOWEST_CODE
    while high - low > 1:
        middle = (low + high) // 2
        if predicate(float(_values_of_codes(np.array([middle]))[0])):
            high = middle
        else:
            low = middle
    return high


def _applies(function, value: float) -> bool:
    return bool(np.asarray(function(np.array([value], dtype=np.float64)))[0])


def _tie_floor(threshold: ChannelThreshold) -> int:
    """Codes below the returned code stand for values the correction ties into one
    (``max(v - T, 0) = 0``); 0 where the correction keeps values as they are."""
    if threshold.level is None or not threshold.subtract:
        return 0
    return _first_code(lambda v: _applies(lambda x: threshold.corrected(x) > 0, v)) - 1


def _corrected_form(threshold: ChannelThreshold) -> tuple[float, bool]:
    """``(T, clip)`` with ``corrected(v) = max(v - T, 0)`` where ``clip``, else ``v``."""
    if threshold.level is None or not threshold.subtract:
        return 0.0, False
    return float(threshold.level), True


# ---------------------------------------------------------------------------------------
# Compiled passes over a frame's keys
# ---------------------------------------------------------------------------------------
@njit(nogil=True, cache=True, inline="always")
def _value_of_code(code, scratch_bits, scratch_values):
    """float64 value of one order code (``scratch_values`` is ``scratch_bits`` viewed as
    float32: a bit cast)."""
    code = np.uint32(code)
    scratch_bits[0] = code & np.uint32(0x7FFFFFFF) if code >> np.uint32(31) else ~code
    return np.float64(scratch_values[0])


@njit(nogil=True, cache=True, inline="always")
def _float64_term(x, scratch_values, scratch_bits):
    """``(column, significand)`` with ``x = significand * 2^(column - 1075)`` exactly, for
    a finite float64 ``x`` (``column`` its exponent field). ``scratch_bits`` is
    ``scratch_values`` viewed as uint64 (a bit cast)."""
    scratch_values[0] = x
    bits = scratch_bits[0]
    column = np.int64((bits >> np.uint64(52)) & np.uint64(0x7FF))
    significand = np.int64(bits & np.uint64(0xFFFFFFFFFFFFF)) + (np.int64(1) << 52 if column else 0)
    return max(column, 1), -significand if bits >> np.uint64(63) else significand


@njit(nogil=True, cache=True, inline="always")
def _float32_term(code, count):
    """As :func:`_float64_term` for ``count`` times the float32 value of an order code
    (no conversion; ``|significand| < 2^55`` below 2^31 voxels, and ``count x value`` is
    exact in float64, as the joint histogram's products are, below 2^29)."""
    bits = code & np.uint32(0x7FFFFFFF) if code >> np.uint32(31) else ~code
    exponent = np.int64((bits >> np.uint32(23)) & np.uint32(0xFF))
    significand = (np.int64(bits & np.uint32(0x7FFFFF)) + (np.int64(1) << 23 if exponent else 0)) * count
    # value = significand * 2^(max(e, 1) - 150): column max(e, 1) + 925
    return max(exponent, 1) + 925, -significand if bits >> np.uint32(31) else significand


@njit(nogil=True, cache=True, inline="always")
def _flush(bins, column, high, low):
    """Add a column's running sums to ``bins`` (``(2, 2048)`` int64: per column the sums
    of the significands' high parts and low 26 bits, exact below 2^31 terms)."""
    bins[0, column] += high
    bins[1, column] += low


def _exact_mean(bins: np.ndarray, n: int) -> float:
    """``fl(S) / n`` with ``fl(S)`` the correctly rounded sum held in ``bins`` (as
    ``math.fsum`` of the values would give)."""
    total = 0
    for exponent in np.flatnonzero(bins.any(axis=0)):
        significand = (int(bins[0, exponent]) << 26) + int(bins[1, exponent])
        total += significand << (max(int(exponent), 1) - 1)  # in units of 2^-1074
    return (total / (1 << 1074)) / n


@njit(nogil=True, cache=True)
def _channel1_ranks(keys, floor1, floor2, level1, clip1, above1, above2, twice_rank1, object_rank1, keys2,
                    bins):
    """One pass over a frame's ascending joint keys: channel 1's ranks, channel 2's keys.

    Runs of equal ``max(code1, floor1)`` are runs of equal corrected channel-1 values
    (``max(v - level1, 0)`` where ``clip1``, else ``v``). Writes per voxel
    ``twice_rank1`` (twice its average rank, 1-based), ``object_rank1`` (the same among
    the object voxels, ``code1 >= above1`` or ``code2 >= above2``; 0 for the others) and
    ``keys2 = max(code2, floor2) << 32 | position << 1 | object``; adds ``count x
    corrected value`` per run to ``bins`` (exactly).

    Returns
    -------
    tied_pairs, squares, n_objects, object_squares, collision
        Pairs tied in channel 1; sum of ``(twice_rank1 - n - 1)^2``; the object voxels
        and their sum alike; whether two runs have equal corrected values (rounding in
        ``v - T``).
    """
    n = keys.size
    code_bits = np.empty(1, np.uint32)
    code_value = code_bits.view(np.float32)
    sum_value = np.empty(1, np.float64)
    sum_bits = sum_value.view(np.uint64)
    tied_pairs = n_objects = 0
    squares = object_squares = 0.0
    collision = False
    previous_value = -np.inf
    sum_column = high = low = 0
    start = 0
    while start < n:
        code = max(np.uint32(keys[start] >> np.uint64(32)), np.uint32(floor1))
        stop = start + 1
        while stop < n and max(np.uint32(keys[stop] >> np.uint64(32)), np.uint32(floor1)) == code:
            stop += 1
        twice = start + stop + 1
        objects = 0
        for p in range(start, stop):
            raw2 = np.uint32(keys[p])
            is_object = np.uint32(keys[p] >> np.uint64(32)) >= above1 or raw2 >= above2
            objects += is_object
            twice_rank1[p] = twice
            keys2[p] = (np.uint64(max(raw2, np.uint32(floor2))) << np.uint64(32)) | (np.uint64(p) << np.uint64(1)) \
                | np.uint64(is_object)
        object_twice = 2 * n_objects + objects + 1
        for p in range(start, stop):
            object_rank1[p] = object_twice if keys2[p] & np.uint64(1) else 0
        n_objects += objects
        length = stop - start
        tied_pairs += length * (length - 1) // 2
        deviation = np.float64(twice - n - 1)
        squares += length * deviation * deviation
        object_squares += objects * np.float64(object_twice) * np.float64(object_twice)
        if clip1:
            value = max(_value_of_code(keys[start] >> np.uint64(32), code_bits, code_value) - level1, 0.0)
            collision |= value == previous_value
            previous_value = value
            column, significand = _float64_term(length * value, sum_value, sum_bits)
        else:
            column, significand = _float32_term(np.uint32(keys[start] >> np.uint64(32)), length)
        if column != sum_column:
            _flush(bins, sum_column, high, low)
            sum_column, high, low = column, 0, 0
        high += significand >> 26  # floor: high * 2^26 + low is exact
        low += significand & ((1 << 26) - 1)
        start = stop
    _flush(bins, sum_column, high, low)
    return tied_pairs, squares, n_objects, object_squares, collision


@njit(nogil=True, cache=True)
def _renumber(keys2, object_twice, object_rank1, start):
    """Set the position part of ``keys2`` to ``start + index`` after a sort of voxels
    tied in channel 1 (their channel-1 ranks are equal: ``object_twice`` for objects)."""
    for k in range(keys2.size):
        object_rank1[start + k] = object_twice if keys2[k] & np.uint64(1) else 0
        keys2[k] = (keys2[k] & np.uint64(0xFFFFFFFF00000001)) | (np.uint64(start + k) << np.uint64(1))


@njit(nogil=True, cache=True)
def _joint_tied_pairs(twice_rank1, keys2):
    """Pairs tied in both channels: runs of equal channel-1 rank and channel-2 code."""
    total = 0
    length = 1
    for p in range(1, keys2.size):
        if twice_rank1[p] == twice_rank1[p - 1] and keys2[p] >> np.uint64(32) == keys2[p - 1] >> np.uint64(32):
            length += 1
        else:
            total += length * (length - 1) // 2
            length = 1
    return total + length * (length - 1) // 2


@njit(nogil=True, cache=True)
def _channel2_ranks(sorted_keys2, level2, clip2, object_rank1, all_objects, twice_rank2, bins):
    """One pass over the sorted channel-2 keys: channel 2's ranks and ties.

    Writes ``twice_rank2[position]`` (one random store per voxel), reads each object
    voxel's ``object_rank1`` (one random load; ``all_objects`` of them) and adds ``count
    x corrected value`` per run to ``bins``.

    Returns
    -------
    tied_pairs, squares, object_squares, object_cross, collision
        As :func:`_channel1_ranks`; ``object_cross`` the sum of ``(object_rank1 - m - 1)
        (object rank2 - m - 1)`` over the ``m`` object voxels.
    """
    n = sorted_keys2.size
    code_bits = np.empty(1, np.uint32)
    code_value = code_bits.view(np.float32)
    sum_value = np.empty(1, np.float64)
    sum_bits = sum_value.view(np.uint64)
    tied_pairs = n_objects = 0
    squares = object_squares = object_cross = 0.0
    object_centre = all_objects + 1
    collision = False
    previous_value = -np.inf
    sum_column = high = low = 0
    start = 0
    while start < n:
        code = sorted_keys2[start] >> np.uint64(32)
        stop = start + 1
        objects = 0
        while stop < n and sorted_keys2[stop] >> np.uint64(32) == code:
            stop += 1
        for k in range(start, stop):
            objects += np.int64(sorted_keys2[k] & np.uint64(1))
        twice = start + stop + 1
        object_twice = 2 * n_objects + objects + 1
        object_deviations1 = 0
        for k in range(start, stop):
            position = np.int64((sorted_keys2[k] & np.uint64(0xFFFFFFFF)) >> np.uint64(1))
            twice_rank2[position] = twice
            if sorted_keys2[k] & np.uint64(1):
                object_deviations1 += np.int64(object_rank1[position]) - object_centre
        object_cross += np.float64(object_deviations1) * np.float64(object_twice - object_centre)
        n_objects += objects
        length = stop - start
        tied_pairs += length * (length - 1) // 2
        deviation = np.float64(twice - n - 1)
        squares += length * deviation * deviation
        object_squares += objects * np.float64(object_twice) * np.float64(object_twice)
        if clip2:
            value = max(_value_of_code(code, code_bits, code_value) - level2, 0.0)
            collision |= value == previous_value
            previous_value = value
            column, significand = _float64_term(length * value, sum_value, sum_bits)
        else:
            column, significand = _float32_term(np.uint32(code), length)
        if column != sum_column:
            _flush(bins, sum_column, high, low)
            sum_column, high, low = column, 0, 0
        high += significand >> 26  # floor: high * 2^26 + low is exact
        low += significand & ((1 << 26) - 1)
        start = stop
    _flush(bins, sum_column, high, low)
    return tied_pairs, squares, object_squares, object_cross, collision


@njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _cross_deviations(twice_rank1, twice_rank2, centre):
    """Sum of ``(twice_rank1 - centre)(twice_rank2 - centre)`` over the voxels."""
    total = 0.0
    for p in range(twice_rank1.size):
        total += (np.float64(twice_rank1[p]) - centre) * (np.float64(twice_rank2[p]) - centre)
    return total


@njit(nogil=True, cache=True, inline="always")
def _count_above(tree, size, value):
    """Count of the values added to a Fenwick tree (stored reversed) above ``value``."""
    k = size - value - 1
    total = 0
    while k > 0:
        total += tree[k]
        k &= k - 1
    return total


@njit(nogil=True, cache=True, inline="always")
def _add_one(tree, size, value):
    k = size - value
    while k <= size:
        tree[k] += 1
        k += k & -k


@njit(nogil=True, cache=True)
def _bucket_pass(ranks, first, stop, bits, counts):
    """Pairs ``first <= i < j < stop`` with ``ranks[i] >> bits > ranks[j] >> bits`` (a
    Fenwick tree over the buckets ``rank >> bits``); ``counts[b]`` set to the members of
    bucket ``b`` there."""
    n_buckets = counts.size
    tree = np.zeros(n_buckets + 1, np.int64)
    counts[:] = 0
    total = 0
    for i in range(first, stop):
        bucket = np.int64(ranks[i] >> bits)
        total += _count_above(tree, n_buckets, bucket)
        _add_one(tree, n_buckets, bucket)
        counts[bucket] += 1
    return total


@njit(nogil=True, cache=True)
def _gather_buckets(ranks, first, stop, bits, fill, scratch):
    """Write the low ``bits`` of ``ranks[first:stop]`` to ``scratch``, bucket by bucket in
    order, from ``fill[bucket]`` on (advanced)."""
    low_mask = (1 << bits) - 1
    for i in range(first, stop):
        bucket = ranks[i] >> bits
        scratch[fill[bucket]] = ranks[i] & low_mask
        fill[bucket] += 1


@njit(nogil=True, cache=True)
def _within_buckets(scratch, starts, first_bucket, stop_bucket, bits):
    """Inversions within each bucket ``first_bucket .. stop_bucket - 1`` of ``scratch``
    (a Fenwick tree over a bucket's ``2^bits`` low parts, in cache)."""
    width = 1 << bits
    tree = np.zeros(width + 1, np.int64)
    total = 0
    for b in range(first_bucket, stop_bucket):
        if starts[b + 1] - starts[b] < 2:
            continue
        tree[:] = 0
        for k in range(starts[b], starts[b + 1]):
            total += _count_above(tree, width, np.int64(scratch[k]))
            _add_one(tree, width, np.int64(scratch[k]))
    return total


def _inversions(ranks: np.ndarray, limit: int, scratch: np.ndarray, threads: int = 1) -> int:
    """Pairs ``i < j`` with ``ranks[i] > ranks[j]``, for ranks below ``limit``.

    Two levels, each in cache: pairs in different buckets (``sqrt(limit)`` ranks each)
    by a Fenwick tree over the buckets, then pairs within a bucket by one over its ranks
    (the bucket's members gathered in order into ``scratch``, as long as ``ranks``).
    With ``threads`` > 1, the halves of the array, then the halves of the buckets, at
    once (pairs across the halves from the halves' bucket counts).
    """
    n = ranks.size
    if n < 2:
        return 0
    bits = max(1, (int(limit).bit_length() + 1) // 2)
    n_buckets = ((limit - 1) >> bits) + 1
    parts = 2 if threads > 1 and n >= 1 << 18 else 1
    bounds = [n * k // parts for k in range(parts + 1)]
    counts = np.zeros((parts, n_buckets), np.int64)
    with ThreadPoolExecutor(parts) as pool:
        total = sum(pool.map(lambda k: _bucket_pass(ranks, bounds[k], bounds[k + 1], bits, counts[k]),
                             range(parts)))
        for k in range(1, parts):  # pairs across parts: an earlier member in a higher bucket
            earlier = counts[:k].sum(axis=0)
            above = np.concatenate((np.cumsum(earlier[::-1])[::-1][1:], [0]))
            total += int(np.dot(counts[k], above))
        starts = np.concatenate(([0], np.cumsum(counts.sum(axis=0))))
        fills = starts[:-1] + np.concatenate((np.zeros((1, n_buckets), np.int64), np.cumsum(counts, axis=0)[:-1]))
        list(pool.map(lambda k: _gather_buckets(ranks, bounds[k], bounds[k + 1], bits, fills[k], scratch),
                      range(parts)))
        # halves of the buckets by members
        middle = int(np.searchsorted(starts, n // 2)) if parts > 1 else n_buckets
        ranges = [(0, middle), (middle, n_buckets)] if parts > 1 else [(0, n_buckets)]
        total += sum(pool.map(lambda r: _within_buckets(scratch, starts, r[0], r[1], bits), ranges))
    return int(total)


@njit(nogil=True, cache=True)
def _same_sign_count(keys, low1, high1, low2, high2, zero_positive):
    """Voxels whose corrected values lie on the same side of their means: the sign of
    channel 1 is -1 below code ``low1``, +1 from ``high1``, else 0 (channel 2 alike)."""
    total = 0
    for i in range(keys.size):
        code1 = np.uint32(keys[i] >> np.uint64(32))
        code2 = np.uint32(keys[i])
        sign = (np.int64(code1 >= high1) - np.int64(code1 < low1)) * (np.int64(code2 >= high2) - np.int64(code2 < low2))
        total += sign > 0 or (zero_positive and sign == 0)
    return total


# ---------------------------------------------------------------------------------------
# Rank coefficients of a frame
# ---------------------------------------------------------------------------------------
def _spearman(n: int, squares1: float, squares2: float, cross: float) -> tuple[float, str]:
    """Pearson r of ranks from the sums of their deviations ``d = twice rank - n - 1``."""
    mean = (n + 1) / 2.0
    r, reason = Moments(*(np.float64(v) for v in (n, mean, mean, squares1 / 4, squares2 / 4, cross / 4))).pearson()
    return float(r), str(reason)


@dataclass(frozen=True)
class _RankSums:
    """Sums over a frame's voxels (``d = twice the average rank - n - 1``); the same
    over the object voxels (``object_*``)."""

    n: int
    tied1: int
    tied2: int
    tied_both: int
    squares1: float
    squares2: float
    cross: float
    discordant: int
    mean1: float
    mean2: float
    n_objects: int
    object_squares1: float
    object_squares2: float
    object_cross: float

    def kendall_tau_b(self) -> tuple[float, str]:
        """As :func:`~.ranks.kendall_tau_b`."""
        if self.n < 2:
            return np.nan, "fewer than 2 voxels"
        n0 = self.n * (self.n - 1) // 2
        if n0 == self.tied1 or n0 == self.tied2:
            return np.nan, "all values of a channel are tied"
        s = n0 - self.tied1 - self.tied2 + self.tied_both - 2 * self.discordant
        tau = s / np.sqrt(float(n0 - self.tied1) * float(n0 - self.tied2))
        return float(np.clip(tau, -1.0, 1.0)), ""


def _rank_sums(keys: np.ndarray, thresholds: Thresholds, threads: int) -> _RankSums | None:
    """The rank sums of a frame's ascending joint keys; None where the correction
    ``v - T`` rounds two values to one (then the joint histogram ranks them)."""
    n = keys.size
    th1, th2 = thresholds.channel1, thresholds.channel2
    floor1, floor2 = _tie_floor(th1), _tie_floor(th2)
    above1 = _first_code(lambda v: _applies(th1.above, v))
    above2 = _first_code(lambda v: _applies(th2.above, v))
    twice_rank1, object_rank1 = np.empty(n, np.uint32), np.empty(n, np.uint32)
    keys2 = np.empty(n, np.uint64)
    bins1, bins2 = np.zeros((2, 2048), np.int64), np.zeros((2, 2048), np.int64)
    tied1, squares1, n_objects, object_squares1, collision1 = _channel1_ranks(
        keys, floor1, floor2, *_corrected_form(th1), above1, above2, twice_rank1, object_rank1, keys2, bins1)
    # channel-1 values the correction ties: in channel 2's order, so that no pair tied
    # in channel 1 counts as discordant
    tied_end = int(np.searchsorted(keys, np.uint64(floor1 + 1) << np.uint64(32))) if floor1 else 0
    if tied_end > 1:
        keys2[:tied_end].sort()
        _renumber(keys2[:tied_end], object_rank1[:tied_end].max(), object_rank1, 0)
    tied_both = _joint_tied_pairs(twice_rank1, keys2)
    keys2.sort()  # in place: a threaded sort would hold a second copy
    twice_rank2 = np.empty(n, np.uint32)
    tied2, squares2, object_squares2, object_cross, collision2 = _channel2_ranks(
        keys2, *_corrected_form(th2), object_rank1, n_objects, twice_rank2, bins2)
    if collision1 or collision2:
        return None
    del keys2
    # centred: the ranks of m voxels sum to m (m + 1) / 2
    object_squares1 -= n_objects * float(n_objects + 1) ** 2
    object_squares2 -= n_objects * float(n_objects + 1) ** 2
    cross = _cross_deviations(twice_rank1, twice_rank2, np.float64(n + 1))
    # object_rank1 is scratch from here
    discordant = _inversions(twice_rank2, 2 * n + 2, object_rank1, threads)
    return _RankSums(n, tied1, tied2, tied_both, squares1, squares2, cross, discordant, _exact_mean(bins1, n),
                     _exact_mean(bins2, n), n_objects, object_squares1, object_squares2, object_cross)


def _sign_codes(threshold: ChannelThreshold, mean: float) -> tuple[int, int]:
    """First codes whose corrected value is ``>= mean`` and ``> mean``."""
    return (_first_code(lambda v: _applies(lambda x: threshold.corrected(x) >= mean, v)),
            _first_code(lambda v: _applies(lambda x: threshold.corrected(x) > mean, v)))


def rank_coefficients(pairs: SortedPairs, thresholds: Thresholds, threads: int = 1
                      ) -> dict[str, tuple[float, str]]:
    """Spearman, object Spearman, Kendall's tau-b and ICQ of a frame's voxels.

    The same numbers as :func:`~.finalisation.finalize` gives from the
    frame's joint histogram (to rounding; the same ICQ count), from the sorted keys.

    Parameters
    ----------
    pairs : SortedPairs
        The frame's voxels inside the mask (all finite), at least one.
    thresholds : Thresholds
    threads : int
        Threads for the inversion count (1 inside a Dask task).

    Returns
    -------
    dict
        ``name -> (value, reason)`` for ``spearman``, ``object_spearman``,
        ``kendall_tau`` and ``icq``.
    """
    th1, th2 = thresholds.channel1, thresholds.channel2
    sums = _rank_sums(pairs.keys, thresholds, threads)
    if sums is None:  # values the correction rounds together: ranked from the histogram
        return table_rank_coefficients(pairs.joint_table, thresholds)
    out = {"spearman": _spearman(sums.n, sums.squares1, sums.squares2, sums.cross),
           "kendall_tau": sums.kendall_tau_b()}
    if sums.n_objects:
        out["object_spearman"] = _spearman(sums.n_objects, sums.object_squares1, sums.object_squares2,
                                           sums.object_cross)
    else:
        out["object_spearman"] = (np.nan, "no object voxels")
    low1, high1 = _sign_codes(th1, sums.mean1)
    low2, high2 = _sign_codes(th2, sums.mean2)
    positive = _same_sign_count(pairs.keys, low1, high1, low2, high2, thresholds.icq_zero_positive)
    out["icq"] = (positive / pairs.n - 0.5, "")
    return out
