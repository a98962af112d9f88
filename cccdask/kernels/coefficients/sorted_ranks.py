"""Spearman, object Spearman, Kendall's tau-b and ICQ of a frame from its sorted keys.

From a frame's :class:`~.sorted_pairs.SortedPairs` (``n`` voxels):

* channel 1's exact average ranks come from the runs of equal (background-corrected)
  values in key order; channel 2's from one sort of ``code2 << 32 | position << 1 |
  object`` (``code2`` the order bits of G, the values a threshold ties into one code);
* Spearman is the Pearson r of the two ranks, object Spearman the same with the ranks
  among the object voxels (found in the same passes; each voxel's channel-1 ranks
  packed in one uint64, read once in channel 2's order); Kendall's tau-b counts the
  discordant pairs as the inversions of the voxels' channel-1 positions in channel 2's
  order (:func:`~.inversions.inversions`), the tied pairs from the runs;
* ICQ compares each voxel's codes with the codes where the corrected values cross
  their means (exact sums; the codes found by bisection with the threshold rule).

Where the correction ``max(v - T, 0)`` rounds two distinct values to one (a negative T
far from tiny values) the joint histogram ranks the frame instead.

Cost: one sort of the frame's channel-2 keys, two O(n) compiled passes (one random
load per voxel) and the inversion count. Memory: 20 bytes per voxel besides the keys
(the channel-2 keys, the packed channel-1 ranks, the positions in channel 2's order;
the inversion count's scratch reuses the ranks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from cccdask.kernels.coefficients.inversions import inversions
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


@njit(nogil=True, cache=True, inline="always")
def _pairs_within(length):
    """Pairs among ``length`` tied voxels."""
    return (length * (length - 1)) >> 1


@njit(nogil=True, cache=True, inline="always")
def _run_stop(keys, start, floor):
    """End of the run from ``start`` of equal ``max(key >> 32, floor)``."""
    code = max(np.uint32(keys[start] >> np.uint64(32)), floor)
    stop = start + 1
    while stop < keys.size and max(np.uint32(keys[stop] >> np.uint64(32)), floor) == code:
        stop += 1
    return stop


@njit(nogil=True, cache=True)
def _run_sums(keys, floor, level, clip, bins):
    """One channel's ties and exact sum from ascending keys ``code << 32 | ...``.

    Runs of equal ``max(code, floor)`` are runs of equal corrected values (``max(v -
    level, 0)`` where ``clip``, else ``v``); adds ``count x corrected value`` per run to
    ``bins`` (exactly: see :func:`_flush`).

    Returns
    -------
    tied_pairs, squares, collision
        Pairs tied; sum of ``(twice the average rank - n - 1)^2`` over the voxels;
        whether two runs have equal corrected values (rounding in ``v - T``).
    """
    n = keys.size
    code_bits = np.empty(1, np.uint32)
    code_value = code_bits.view(np.float32)
    sum_value = np.empty(1, np.float64)
    sum_bits = sum_value.view(np.uint64)
    floor = np.uint32(floor)
    tied_pairs = 0
    squares = 0.0
    collision = False
    previous_value = -np.inf
    sum_column = high = low = 0
    start = 0
    while start < n:
        stop = _run_stop(keys, start, floor)
        length = stop - start
        tied_pairs += _pairs_within(length)
        deviation = np.float64(start + stop - n)
        squares += length * deviation * deviation
        if clip:
            value = max(_value_of_code(keys[start] >> np.uint64(32), code_bits, code_value) - level, 0.0)
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
    return tied_pairs, squares, collision


@njit(nogil=True, cache=True)
def _channel1_ranks(keys, floor1, floor2, above1, above2, rank1, keys2):
    """One pass over a frame's ascending joint keys: channel 1's ranks, channel 2's keys.

    Runs of equal ``max(code1, floor1)`` are runs of equal corrected channel-1 values.
    Writes per voxel ``rank1 = twice its average rank (1-based) << 32 | the same among
    the object voxels`` (``code1 >= above1`` or ``code2 >= above2``; 0 for the others)
    and ``keys2 = max(code2, floor2) << 32 | position << 1 | object``.

    Returns
    -------
    n_objects, object_squares
        The object voxels, and the sum of their ``object_twice^2``.
    """
    n = keys.size
    n_objects = 0
    object_squares = 0.0
    floor1, floor2 = np.uint32(floor1), np.uint32(floor2)
    start = 0
    while start < n:
        stop = _run_stop(keys, start, floor1)
        objects = 0
        for p in range(start, stop):
            raw2 = np.uint32(keys[p])
            is_object = np.uint32(keys[p] >> np.uint64(32)) >= above1 or raw2 >= above2
            objects += is_object
            keys2[p] = (np.uint64(max(raw2, floor2)) << np.uint64(32)) | (np.uint64(p) << np.uint64(1)) \
                | np.uint64(is_object)
        object_twice = 2 * n_objects + objects + 1
        high = np.uint64(start + stop + 1) << np.uint64(32)
        for p in range(start, stop):
            rank1[p] = high | (np.uint64(object_twice) * (keys2[p] & np.uint64(1)))
        n_objects += objects
        object_squares += objects * np.float64(object_twice) * np.float64(object_twice)
        start = stop
    return n_objects, object_squares


@njit(nogil=True, cache=True)
def _renumber(keys2, rank1):
    """Set the position part of ``keys2`` to its index after a sort of voxels tied in
    channel 1 (one run: one channel-1 rank, one object rank), and ``rank1`` to match."""
    object_twice = np.uint64(0)
    for k in range(keys2.size):
        object_twice = max(object_twice, rank1[k] & np.uint64(0xFFFFFFFF))
    high = rank1[0] & np.uint64(0xFFFFFFFF00000000)
    for k in range(keys2.size):
        rank1[k] = high | (object_twice * (keys2[k] & np.uint64(1)))
        keys2[k] = (keys2[k] & np.uint64(0xFFFFFFFF00000001)) | (np.uint64(k) << np.uint64(1))


@njit(nogil=True, cache=True)
def _joint_tied_pairs(rank1, keys2):
    """Pairs tied in both channels: runs of equal channel-1 rank and channel-2 code."""
    total = 0
    length = 1
    for p in range(1, keys2.size):
        if rank1[p] >> np.uint64(32) == rank1[p - 1] >> np.uint64(32) \
                and keys2[p] >> np.uint64(32) == keys2[p - 1] >> np.uint64(32):
            length += 1
        else:
            total += _pairs_within(length)
            length = 1
    return total + _pairs_within(length)


@njit(nogil=True, cache=True)
def _gather_ranks1(sorted_keys2, rank1, positions):
    """Channel 1's ranks in channel 2's order, in place of the sorted channel-2 keys.

    ``sorted_keys2[k]`` becomes ``rank1[position]`` (a tight loop of independent random
    loads: the memory fetches overlap); ``positions[k]`` the voxel's position, with bit
    31 set where a run of equal channel-2 codes starts.
    """
    previous = np.uint64(0)
    for k in range(sorted_keys2.size):
        key = sorted_keys2[k]
        code = key >> np.uint64(32)
        position = (key & np.uint64(0xFFFFFFFF)) >> np.uint64(1)
        positions[k] = np.uint32(position) | (np.uint32(k == 0 or code != previous) << np.uint32(31))
        previous = code
        sorted_keys2[k] = rank1[position]


@njit(nogil=True, cache=True)
def _channel2_ranks(ranks1, positions, all_objects):
    """Channel 2's ranks and the cross sums, from channel 1's ranks in channel 2's order
    (:func:`_gather_ranks1`); clears the run marks of ``positions``.

    Returns
    -------
    object_squares, cross, object_cross
        As :func:`_channel1_ranks`; ``cross`` the sum of ``(twice_rank1 - n - 1)
        (twice_rank2 - n - 1)``, ``object_cross`` of ``(object_rank1 - m - 1)
        (object_rank2 - m - 1)`` over the ``m`` object voxels.
    """
    n = ranks1.size
    n_objects = 0
    object_squares = cross = object_cross = 0.0
    centre, object_centre = n + 1, all_objects + 1
    mark = np.uint32(1) << np.uint32(31)
    start = 0
    while start < n:
        positions[start] &= ~mark
        stop = start + 1
        while stop < n and not positions[stop] & mark:
            stop += 1
        objects = 0
        twice_sum1 = object_sum1 = np.uint64(0)  # below 2^63: ranks up to 2n < 2^32
        for k in range(start, stop):
            object_rank = ranks1[k] & np.uint64(0xFFFFFFFF)  # 0 for the other voxels
            twice_sum1 += ranks1[k] >> np.uint64(32)
            object_sum1 += object_rank
            objects += object_rank != 0
        twice = start + stop + 1
        object_twice = 2 * n_objects + objects + 1
        cross += np.float64(np.int64(twice_sum1) - (stop - start) * centre) * np.float64(twice - centre)
        object_cross += np.float64(np.int64(object_sum1) - objects * object_centre) \
            * np.float64(object_twice - object_centre)
        n_objects += objects
        object_squares += objects * np.float64(object_twice) * np.float64(object_twice)
        start = stop
    return object_squares, cross, object_cross


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
    bins1, bins2 = np.zeros((2, 2048), np.int64), np.zeros((2, 2048), np.int64)
    tied1, squares1, collision = _run_sums(keys, floor1, *_corrected_form(th1), bins1)
    if collision:
        return None
    rank1, keys2 = np.empty(n, np.uint64), np.empty(n, np.uint64)
    n_objects, object_squares1 = _channel1_ranks(keys, floor1, floor2, above1, above2, rank1, keys2)
    # channel-1 values the correction ties: in channel 2's order, so that no pair tied
    # in channel 1 counts as discordant
    tied_end = int(np.searchsorted(keys, np.uint64(floor1 + 1) << np.uint64(32))) if floor1 else 0
    if tied_end > 1:
        keys2[:tied_end].sort()
        _renumber(keys2[:tied_end], rank1[:tied_end])
    tied_both = _joint_tied_pairs(rank1, keys2)
    keys2.sort()  # in place: a threaded sort would hold a second copy
    tied2, squares2, collision = _run_sums(keys2, 0, *_corrected_form(th2), bins2)
    if collision:
        return None
    positions = np.empty(n, np.uint32)
    _gather_ranks1(keys2, rank1, positions)
    object_squares2, cross, object_cross = _channel2_ranks(keys2, positions, n_objects)
    del keys2
    # centred: the ranks of m voxels sum to m (m + 1) / 2
    object_squares1 -= n_objects * float(n_objects + 1) ** 2
    object_squares2 -= n_objects * float(n_objects + 1) ** 2
    # rank1 is scratch from here
    discordant = inversions(positions, n, rank1.view(np.uint32)[:n], threads)
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
