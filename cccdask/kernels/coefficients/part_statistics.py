"""The statistics of one part of a frame (:class:`PartStatistics`) and their merge.

A chunk's voxels are kept as a joint histogram, or, for float values that are mostly
distinct, as sorted 64-bit keys (:mod:`~.sorted_pairs`, chosen per chunk by
:func:`~.sorted_pairs.prefers_sorted`). Its moments and sums come from its joint
histogram in one compiled pass (:func:`statistics_from_table`), with the threshold rule
looked up per value, or from its keys a strip at a time (:func:`statistics_from_pairs`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from cccdask.kernels.coefficients.joint_table import JointTable, joint_table
from cccdask.kernels.coefficients.moments import REASSOCIATE, Moments, _entry
from cccdask.kernels.coefficients.sorted_pairs import (
    SortedPairs,
    _values_of_codes,
    merge_tables,
    pair_keys,
    prefers_sorted,
)
from cccdask.kernels.coefficients.thresholds import ChannelThreshold, Thresholds

STRIP = 1 << 16  # keys decoded at once for the moments


@dataclass(frozen=True)
class PartStatistics:
    """Mergeable statistics of one part (chunk) of one frame; see the module docstring.

    Attributes
    ----------
    table : JointTable or SortedPairs
        The raw values of the finite voxels inside the mask: their joint histogram, or
        their sorted keys.
    mask_moments, object_moments : Moments
        Of ``(R', G')`` over the mask, and over the object voxels (R > T_R or G > T_G).
    sums : numpy.ndarray
        float64, the sums named in :data:`SUM_NAMES` (R' etc. over the mask).
    n_nonfinite : int
        Voxels inside the mask with a NaN or infinite value in either channel.
    """

    table: JointTable | SortedPairs
    mask_moments: Moments
    object_moments: Moments
    sums: np.ndarray
    n_nonfinite: int

    def merge(self, other: "PartStatistics") -> "PartStatistics":
        return PartStatistics(
            merge_tables(self.table, other.table),
            self.mask_moments.merge(other.mask_moments),
            self.object_moments.merge(other.object_moments),
            self.sums + other.sums,
            self.n_nonfinite + other.n_nonfinite,
        )


def part_statistics(
    image1: np.ndarray, image2: np.ndarray, mask: np.ndarray | None, thresholds: Thresholds, threads: int = 1
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
    threads : int
        Threads for the sort of a float chunk's keys (1 inside a Dask task).
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
        if prefers_sorted(values1, values2):  # (the keys make -0.0 and 0.0 one value)
            return statistics_from_pairs(SortedPairs(pair_keys(values1, values2, threads)), thresholds, n_nonfinite,
                                         (values1, values2))
        # -0.0 and 0.0 are one value
        values1 = values1 + values1.dtype.type(0) if values1.dtype.kind == "f" else values1
        values2 = values2 + values2.dtype.type(0) if values2.dtype.kind == "f" else values2
    table = joint_table(values1, values2)
    return statistics_from_table(table, thresholds, n_nonfinite)


@njit(nogil=True, cache=True, fastmath=REASSOCIATE)
def _threshold_sums(codes1, codes2, counts, corrected1, corrected2, weight1, weight2):
    """The sums of :data:`SUM_NAMES`, in order, over the voxels of a joint histogram.

    Entry ``i`` stands for ``counts[i]`` voxels with ``R' = corrected1[codes1[i]]`` and
    ``wR = weight1[codes1[i]]`` (channel 2 alike); without codes (None), ``R' =
    corrected1[i]`` (a direct pass: vectorised).
    """
    # scalars, not array slots: the compiler keeps them in registers and vectorises
    s_rg = s_rr = s_gg = s_r = s_g = s_r_wg = s_g_wr = s_wr = s_wg = s_wr_wg = 0.0
    s_r_wr = s_g_wg = s_r_wr_wg = s_g_wr_wg = 0.0
    for i in range(counts.size):
        c = counts[i]
        r, g = _entry(corrected1, codes1, i), _entry(corrected2, codes2, i)
        wr, wg = _entry(weight1, codes1, i), _entry(weight2, codes2, i)
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


def statistics_from_pairs(pairs: SortedPairs, thresholds: Thresholds, n_nonfinite: int = 0,
                          values: tuple[np.ndarray, np.ndarray] | None = None) -> PartStatistics:
    """The :class:`PartStatistics` of the voxels of ``pairs`` (the same numbers as from
    their joint histogram, to rounding), a strip of voxels at a time: the values of
    ``values`` (the same voxels' R and G, 1-D, in any order: no decoding), else decoded
    from the keys."""
    th1, th2 = thresholds.channel1, thresholds.channel2
    mask_moments = object_moments = Moments.empty()
    sums = np.zeros(14)
    for start in range(0, pairs.n, STRIP):
        if values is None:
            keys = pairs.keys[start:start + STRIP]
            values1, values2 = _values_of_codes(keys >> np.uint64(32)), _values_of_codes(keys.astype(np.uint32))
        else:
            values1, values2 = (v[start:start + STRIP].astype(np.float64) for v in values)
        corrected1, corrected2 = th1.corrected(values1), th2.corrected(values2)
        ones = np.ones(values1.size)
        in_objects = (th1.above(values1) | th2.above(values2)).astype(np.float64)
        mask_moments = mask_moments.merge(Moments.from_weighted(corrected1, corrected2, ones))
        object_moments = object_moments.merge(Moments.from_weighted(corrected1, corrected2, in_objects))
        sums += _threshold_sums(None, None, ones, corrected1, corrected2,
                                th1.weight(values1), th2.weight(values2))
    return PartStatistics(pairs, mask_moments, object_moments, sums, n_nonfinite)


def restated(stats: PartStatistics, thresholds: Thresholds) -> PartStatistics:
    """The statistics of the same voxels under other thresholds (exact: from the table
    or the keys)."""
    if isinstance(stats.table, SortedPairs):
        return statistics_from_pairs(stats.table, thresholds, stats.n_nonfinite)
    return statistics_from_table(stats.table, thresholds, stats.n_nonfinite)
