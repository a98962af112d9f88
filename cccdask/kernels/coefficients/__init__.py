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
  most one entry per distinct pair (small for 8- to 16-bit data). Float chunks whose
  pairs are mostly distinct (deconvolved images) keep their voxels instead as sorted
  64-bit keys (:class:`~.sorted_pairs.SortedPairs`, 8 bytes per voxel), merged exactly
  as sorted arrays; a frame whose voxels are mostly distinct pairs takes its ranks from
  them (:mod:`~.sorted_ranks`: a sort and O(n) passes, no per-entry lookups).
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

Where each part lives
---------------------
:mod:`~cccdask.kernels.coefficients.names`
    The coefficient, map and sum names.
:mod:`~cccdask.kernels.coefficients.thresholds`
    :class:`ChannelThreshold`, :class:`Thresholds`: background correction and weights.
:mod:`~cccdask.kernels.coefficients.moments`
    :class:`Moments` and the Chan et al. pairwise merge.
:mod:`~cccdask.kernels.coefficients.joint_table`
    :class:`JointTable`, :func:`joint_table`: the sparse joint histogram.
:mod:`~cccdask.kernels.coefficients.part_statistics`
    :class:`PartStatistics` of a chunk, :func:`part_statistics`, :func:`statistics_from_table`.
:mod:`~cccdask.kernels.coefficients.ranks`
    Exact ranks, Spearman, Kendall's tau-b, ICQ from a joint histogram.
:mod:`~cccdask.kernels.coefficients.sorted_pairs`
    :class:`SortedPairs`: a float part's voxels as sorted 64-bit keys; the path rules.
:mod:`~cccdask.kernels.coefficients.sorted_ranks`
    :func:`rank_coefficients`: Spearman, Kendall's tau-b, ICQ from a frame's keys.
:mod:`~cccdask.kernels.coefficients.finalisation`
    :func:`finalize`: the coefficients of a frame from its merged statistics.
:mod:`~cccdask.kernels.coefficients.van_steensel`
    :func:`shifted_moments`: Van Steensel's shifted pairs, per chunk.
:mod:`~cccdask.kernels.coefficients.maps`
    :class:`MapConstants`, :func:`coefficient_maps`: per-voxel maps.

Every numba kernel lives next to the NumPy code that calls it.
"""

from cccdask.kernels.coefficients.finalisation import finalize
from cccdask.kernels.coefficients.joint_table import JointTable, joint_table
from cccdask.kernels.coefficients.maps import MapConstants, coefficient_maps
from cccdask.kernels.coefficients.moments import Moments
from cccdask.kernels.coefficients.names import COEFFICIENT_NAMES, MAP_NAMES, SUM_NAMES
from cccdask.kernels.coefficients.part_statistics import (
    PartStatistics,
    part_statistics,
    restated,
    statistics_from_pairs,
    statistics_from_table,
)
from cccdask.kernels.coefficients.ranks import corrected_ranks, icq_count, kendall_tau_b, rank_pearson
from cccdask.kernels.coefficients.sorted_pairs import SortedPairs, joint_table_of
from cccdask.kernels.coefficients.sorted_ranks import rank_coefficients
from cccdask.kernels.coefficients.thresholds import ChannelThreshold, Thresholds
from cccdask.kernels.coefficients.van_steensel import shifted_moments

__all__ = [
    "COEFFICIENT_NAMES",
    "ChannelThreshold",
    "JointTable",
    "MAP_NAMES",
    "MapConstants",
    "Moments",
    "PartStatistics",
    "SUM_NAMES",
    "SortedPairs",
    "Thresholds",
    "coefficient_maps",
    "corrected_ranks",
    "finalize",
    "icq_count",
    "joint_table",
    "joint_table_of",
    "kendall_tau_b",
    "part_statistics",
    "rank_coefficients",
    "rank_pearson",
    "restated",
    "shifted_moments",
    "statistics_from_pairs",
    "statistics_from_table",
]
