"""The inversions of an array of small integers (Kendall's discordant pairs), exactly.

:func:`inversions` counts the pairs ``i < j`` with ``values[i] > values[j]`` in
O(n log limit) with every step in cache: two levels of ``sqrt(limit)`` values each (the
buckets ``value >> bits``, then the low bits within a bucket), each a binary tree of
counts walked from leaf to root a fixed number of steps with no data-dependent branch
(a Fenwick tree's loops end unpredictably: a branch miss per query and per update).
The number of steps is a compile-time constant (:data:`SHALLOW` or :data:`DEEP`, leaves
padded below the root), so the walk is unrolled: about 1.6x faster than a walk of
``depth`` steps.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

#: Tree depths compiled as constants: 2^11 leaves (frames up to 2^22 voxels: two levels of
#: 11 bits), else 2^16 (up to 2^32).
SHALLOW, DEEP = 11, 16


@njit(nogil=True, cache=True, inline="always")
def _count_above_and_add(tree, depth, value):
    """Count of the values in ``tree`` above ``value``, then ``value`` added.

    ``tree`` is a complete binary tree of counts in heap order (node ``k``'s children
    ``2k`` and ``2k + 1``; leaf ``2^depth + v`` counts the value ``v``): on the way up,
    each left child's right sibling holds values above ``value``.
    """
    node = (np.int64(1) << depth) + value
    total = 0
    for _ in range(depth):
        total += tree[node ^ 1] * (1 - (node & 1))
        tree[node] += 1
        node >>= 1
    return total


@njit(nogil=True, cache=True, inline="always")
def _add_all(tree, values, first, stop, shift, mask, steps):
    """Inversions among ``(values[first:stop] >> shift) & mask`` (``steps`` a constant)."""
    total = 0
    for i in range(first, stop):
        total += _count_above_and_add(tree, steps, np.int64((values[i] >> shift) & mask))
    return total


@njit(nogil=True, cache=True)
def _bucket_pass(values, first, stop, bits, depth, counts):
    """Pairs ``first <= i < j < stop`` with ``values[i] >> bits > values[j] >> bits``;
    ``counts[b]`` set to the members of bucket ``b`` there (``2^depth`` buckets at most)."""
    counts[:] = 0
    for i in range(first, stop):
        counts[values[i] >> bits] += 1
    mask = (1 << depth) - 1
    if depth <= SHALLOW:
        return _add_all(np.zeros(2 << SHALLOW, np.int32), values, first, stop, bits, mask, SHALLOW)
    return _add_all(np.zeros(2 << DEEP, np.int32), values, first, stop, bits, mask, DEEP)


@njit(nogil=True, cache=True)
def _gather_buckets(values, first, stop, bits, fill, scratch):
    """Write the low ``bits`` of ``values[first:stop]`` to ``scratch``, bucket by bucket
    in order, from ``fill[bucket]`` on (advanced)."""
    low_mask = (1 << bits) - 1
    for i in range(first, stop):
        bucket = values[i] >> bits
        scratch[fill[bucket]] = values[i] & low_mask
        fill[bucket] += 1


@njit(nogil=True, cache=True)
def _within_buckets(scratch, starts, first_bucket, stop_bucket, bits):
    """Inversions within each bucket ``first_bucket .. stop_bucket - 1`` of ``scratch``
    (values below ``2^bits``)."""
    steps = SHALLOW if bits <= SHALLOW else DEEP
    tree = np.zeros(2 << steps, np.int32)
    mask = (1 << bits) - 1
    total = 0
    for b in range(first_bucket, stop_bucket):
        if starts[b + 1] - starts[b] < 2:
            continue
        tree[:] = 0
        if steps == SHALLOW:
            total += _add_all(tree, scratch, starts[b], starts[b + 1], 0, mask, SHALLOW)
        else:
            total += _add_all(tree, scratch, starts[b], starts[b + 1], 0, mask, DEEP)
    return total


def inversions(values: np.ndarray, limit: int, scratch: np.ndarray, threads: int = 1) -> int:
    """Pairs ``i < j`` with ``values[i] > values[j]``, for unsigned values below ``limit``.

    Parameters
    ----------
    values : numpy.ndarray
        1-D unsigned integers, fewer than 2^31.
    limit : int
        Above every value.
    scratch : numpy.ndarray
        uint32, as long as ``values`` (overwritten): the buckets' members in order.
    threads : int
        With 2 or more, the halves of the array, then the halves of the buckets, at once
        (pairs across the halves from the halves' bucket counts).
    """
    n = values.size
    if n < 2:
        return 0
    bits = max(1, (int(limit - 1).bit_length() + 1) // 2)
    n_buckets = ((limit - 1) >> bits) + 1
    depth = max(1, (n_buckets - 1).bit_length())
    parts = 2 if threads > 1 and n >= 1 << 18 else 1
    bounds = [n * k // parts for k in range(parts + 1)]
    counts = np.zeros((parts, n_buckets), np.int64)
    with ThreadPoolExecutor(parts) as pool:
        total = sum(pool.map(lambda k: _bucket_pass(values, bounds[k], bounds[k + 1], bits, depth, counts[k]),
                             range(parts)))
        for k in range(1, parts):  # pairs across parts: an earlier member in a higher bucket
            earlier = counts[:k].sum(axis=0)
            above = np.concatenate((np.cumsum(earlier[::-1])[::-1][1:], [0]))
            total += int(np.dot(counts[k], above))
        starts = np.concatenate(([0], np.cumsum(counts.sum(axis=0))))
        fills = starts[:-1] + np.concatenate((np.zeros((1, n_buckets), np.int64), np.cumsum(counts, axis=0)[:-1]))
        list(pool.map(lambda k: _gather_buckets(values, bounds[k], bounds[k + 1], bits, fills[k], scratch),
                      range(parts)))
        middle = int(np.searchsorted(starts, n // 2)) if parts > 1 else n_buckets  # halves by members
        ranges = [(0, middle), (middle, n_buckets)] if parts > 1 else [(0, n_buckets)]
        total += sum(pool.map(lambda r: _within_buckets(scratch, starts, r[0], r[1], bits), ranges))
    return int(total)
