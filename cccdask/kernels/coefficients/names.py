"""The names of the coefficients, of the per-voxel maps and of the per-part sums."""

from __future__ import annotations

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

# Names of the entries of PartStatistics.sums, in order.
SUM_NAMES = ("rg", "rr", "gg", "r", "g", "r_wg", "g_wr", "wr", "wg", "wr_wg", "r_wr", "g_wg", "r_wr_wg", "g_wr_wg")
