"""Rank statistics from a joint histogram: exact average ranks, Spearman, Kendall's tau-b, ICQ."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from cccdask.kernels.coefficients.joint_table import JointTable, ascending_runs, tie_counts
from cccdask.kernels.coefficients.moments import Moments
from cccdask.kernels.coefficients.thresholds import Thresholds


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
        first, run = ascending_runs(values)
        if not first.all():  # values tied by the correction share one code
            values, codes = values[first], run[codes]
            ties = None
        if ties is None or weights is not None:
            ties = tie_counts(codes, table.counts if weights is None else weights, values.size)
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


def table_rank_coefficients(table: JointTable, thresholds: Thresholds) -> dict[str, tuple[float, str]]:
    """Spearman, object Spearman, Kendall's tau-b and ICQ of the voxels of a joint
    histogram: ``name -> (value, reason)``."""
    out = {"spearman": rank_pearson(table, thresholds)}
    in_object = table.object_entries(thresholds)
    if in_object.any():
        out["object_spearman"] = rank_pearson(table, thresholds, table.counts * in_object)
    else:
        out["object_spearman"] = (np.nan, "no object voxels")
    corrected = table.corrected(thresholds)
    out["kendall_tau"] = kendall_tau_b(corrected)
    out["icq"] = (icq_count(corrected, thresholds.icq_zero_positive) / table.n - 0.5, "")
    return out
