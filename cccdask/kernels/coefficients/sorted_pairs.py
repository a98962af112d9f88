"""Float frames with mostly distinct values as sorted 64-bit keys, for their ranks.

A joint histogram (:class:`~.joint_table.JointTable`) has one entry per
distinct ``(R, G)`` pair: small for integer images, one entry per voxel for deconvolved
float images, where every per-entry step (24 bytes, random lookups, a Fenwick tree over
millions of codes) costs far more than a sort. For such parts the voxels are kept as one
sorted array of 64-bit keys (:class:`SortedPairs`): the order-keeping bits of
``float32(R)`` above those of ``float32(G)`` (float32 values, and float64 values that
float32 holds exactly; other float64 values keep the joint histogram). Sorting them
sorts the voxels by ``(R, G)``; two parts merge exactly (a merge of sorted arrays), so a
frame's keys are the same at any chunking, and so is the path its ranks take
(:func:`ranks_source`, by the frame's distinct fraction alone). The rank coefficients
follow in :mod:`~.sorted_ranks`; a part's
moments and sums in :func:`~.part_statistics.statistics_from_pairs`.

Memory: 8 bytes per voxel for a part's keys (the joint histogram: 24 per entry).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numba import njit

from cccdask.kernels.coefficients.joint_table import JointTable, _float32_of_bits

#: Order codes of -inf and +inf: every finite float32 value's code lies between them.
LOWEST_CODE, HIGHEST_CODE = 0x007FFFFF, 0xFF800000
#: A frame takes the sorted path when at least this fraction of its voxels are distinct
#: ``(R, G)`` pairs. Measured on 2048 x 2048 float32 frames rounded to give 4-100 %
#: distinct pairs (CPU s of a part's statistics and the ranks, joint histogram vs sorted
#: keys; loaded 2-core machine): 4 %: 0.13 vs 0.40; 28 %: 0.35 vs 0.44; 58 %: 0.59 vs
#: 0.44; 85 %: 0.75 vs 0.44; 100 %: 2.7 vs 0.97. The two cross near 40 %.
DISTINCT_FRACTION = 0.5
#: Parts smaller than this keep the joint histogram (either is fast; fewer conversions).
MIN_SORTED_VOXELS = 1 << 12
SAMPLE_VOXELS = 1 << 14  # voxels sampled per part to estimate its distinct pairs
MAX_SORTED_VOXELS = (1 << 31) - 1  # twice a rank fits 32 bits
KEY_BYTES = 8  # a voxel's key
TABLE_ENTRY_BYTES = 24  # a joint histogram's entry (two float64 values, an int64 count)


# ---------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------
def float32_holds(values: np.ndarray) -> bool:
    """True for float32 values, and float64 values that float32 holds exactly."""
    if values.dtype == np.float32:
        return True
    return values.dtype == np.float64 and bool(np.array_equal(values.astype(np.float32), values))


@njit(nogil=True, cache=True, inline="always")
def _order_code(bits):
    """Order-keeping code of float32 bits (-0.0 as 0.0): unsigned order = value order."""
    if bits == np.uint32(0x80000000):  # -0.0
        bits = np.uint32(0)
    return ~bits if bits >> np.uint32(31) else bits | np.uint32(0x80000000)


@njit(nogil=True, cache=True)
def _pair_keys(bits1, bits2, out):
    """``out[i] = code(bits1[i]) << 32 | code(bits2[i])`` (float32 bit patterns in)."""
    for i in range(bits1.size):
        out[i] = (np.uint64(_order_code(bits1[i])) << np.uint64(32)) | np.uint64(_order_code(bits2[i]))


@njit(nogil=True, cache=True)
def _merge_sorted(first, second, out):
    """Merge two ascending arrays into ``out``."""
    i = j = 0
    for k in range(out.size):
        if j >= second.size or (i < first.size and first[i] <= second[j]):
            out[k] = first[i]
            i += 1
        else:
            out[k] = second[j]
            j += 1


@njit(nogil=True, cache=True)
def _count_runs(keys):
    """Number of runs of equal values in an array."""
    runs = min(keys.size, 1)
    for i in range(1, keys.size):
        runs += keys[i] != keys[i - 1]
    return runs


def _sorted(keys: np.ndarray, threads: int) -> np.ndarray:
    """``keys`` sorted in place; with ``threads`` > 1 as halves sorted at once (NumPy's sort
    releases the GIL) and merged."""
    if threads < 2 or keys.size < 1 << 18:
        keys.sort()
        return keys
    half = keys.size // 2
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(np.ndarray.sort, (keys[:half], keys[half:])))
    out = np.empty_like(keys)
    _merge_sorted(keys[:half], keys[half:], out)
    return out


def pair_keys(values1: np.ndarray, values2: np.ndarray, threads: int = 1) -> np.ndarray:
    """Sorted uint64 keys of equally long 1-D arrays of finite values float32 holds."""
    bits1 = np.ascontiguousarray(values1, dtype=np.float32).reshape(-1).view(np.uint32)
    bits2 = np.ascontiguousarray(values2, dtype=np.float32).reshape(-1).view(np.uint32)
    keys = np.empty(bits1.size, np.uint64)
    _pair_keys(bits1, bits2, keys)
    return _sorted(keys, threads)


def _values_of_codes(codes: np.ndarray) -> np.ndarray:
    """float64 values of order codes."""
    return _float32_of_bits(np.ascontiguousarray(codes, dtype=np.uint32))


@dataclass(frozen=True)
class SortedPairs:
    """The voxels of a part as ascending uint64 keys ``code(R) << 32 | code(G)``.

    A stand-in for :class:`~cccdask.kernels.coefficients.JointTable` where most pairs
    are distinct: the same voxels, 8 bytes each, merged exactly by a merge of sorted
    arrays; :attr:`joint_table` gives the table where one is needed.
    """

    keys: np.ndarray

    integer = False

    @property
    def n(self) -> int:
        return int(self.keys.size)

    @cached_property
    def distinct_fraction(self) -> float:
        """Distinct ``(R, G)`` pairs per voxel."""
        return _count_runs(self.keys) / max(self.n, 1)

    @cached_property
    def joint_table(self) -> JointTable:
        """The joint histogram of the same voxels (float64 values; computed once)."""
        starts = np.flatnonzero(np.concatenate(([True], self.keys[1:] != self.keys[:-1]))) if self.n else \
            np.empty(0, np.int64)
        distinct = self.keys[starts]
        counts = np.diff(np.append(starts, self.n)).astype(np.int64)
        codes1 = (distinct >> np.uint64(32)).astype(np.uint32)
        values1 = _values_of_codes(codes1)
        first = np.concatenate(([True], codes1[1:] != codes1[:-1]))
        known1 = (values1[first], np.cumsum(first) - 1)
        return JointTable(values1, _values_of_codes(distinct.astype(np.uint32)), counts, (known1, None))

    @classmethod
    def from_table(cls, table: JointTable) -> "SortedPairs | None":
        """The keys of a float table's voxels (one per voxel), or None where float32 does
        not hold its values."""
        if table.integer or not (float32_holds(table.values1) and float32_holds(table.values2)):
            return None
        return cls(np.repeat(pair_keys(table.values1, table.values2), table.counts))

    def merge(self, other: "SortedPairs | JointTable") -> "SortedPairs | JointTable":
        """The voxels of both parts (a table of values float32 does not hold: a table)."""
        if isinstance(other, JointTable):
            converted = SortedPairs.from_table(other)
            if converted is None:
                return self.joint_table.merge(other)
            other = converted
        out = np.empty(self.n + other.n, np.uint64)
        _merge_sorted(self.keys, other.keys, out)
        return SortedPairs(out)


def merge_tables(first, second):
    """Merge two parts' :class:`SortedPairs` or :class:`JointTable` (either order)."""
    if isinstance(first, JointTable) and isinstance(second, SortedPairs):
        first, second = second, first
    return first.merge(second)


def estimated_distinct_pairs(values1: np.ndarray, values2: np.ndarray) -> float:
    """The number of distinct ``(R, G)`` pairs of a part, from a strided sample.

    Exact when the sample is the whole part; else the birthday estimate ``s**2 / (2 c)``
    from the ``c`` repeats among the ``s`` sampled pairs (infinite when none repeat). A
    sample's own distinct fraction misleads: 4 096 voxels of a frame on 256 x 256
    possible value pairs are 97 % distinct, while the frame's 4 M voxels hold 65 536.
    """
    step = max(1, values1.size // SAMPLE_VOXELS)
    keys = pair_keys(values1[::step], values2[::step])
    distinct = np.unique(keys).size
    if step == 1:
        return float(distinct)
    repeats = keys.size - distinct
    return math.inf if repeats == 0 else keys.size ** 2 / (2 * repeats)


def prefers_sorted(values1: np.ndarray, values2: np.ndarray) -> bool:
    """Whether a part's finite values are better kept as :class:`SortedPairs`: float values
    float32 holds, enough of them, and mostly distinct pairs (:func:`estimated_distinct_pairs`)."""
    if values1.dtype.kind != "f" and values2.dtype.kind != "f":
        return False
    if not (MIN_SORTED_VOXELS <= values1.size <= MAX_SORTED_VOXELS):
        return False
    if estimated_distinct_pairs(values1, values2) < DISTINCT_FRACTION * values1.size:
        return False
    return float32_holds(values1) and float32_holds(values2)


def ranks_source(table: JointTable | SortedPairs) -> JointTable | SortedPairs:
    """What a frame's rank coefficients are computed from, by the frame's distinct
    fraction alone (so the same at any chunking): :class:`SortedPairs` where at least
    :data:`DISTINCT_FRACTION` of the voxels are distinct pairs (and float32 holds the
    values, and there are fewer than 2^31), else the joint histogram."""
    if isinstance(table, SortedPairs):
        if table.distinct_fraction >= DISTINCT_FRACTION and table.n <= MAX_SORTED_VOXELS:
            return table
        return table.joint_table
    if table.integer or table.n > MAX_SORTED_VOXELS or len(table.counts) < DISTINCT_FRACTION * table.n:
        return table
    return SortedPairs.from_table(table) or table


def joint_table_of(table: JointTable | SortedPairs) -> JointTable:
    """The joint histogram of a part's voxels, however they are kept."""
    return table.joint_table if isinstance(table, SortedPairs) else table
