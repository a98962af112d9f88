"""Per-voxel maps of the coefficients, one chunk at a time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cccdask.kernels.coefficients.moments import Moments
from cccdask.kernels.coefficients.names import SUM_NAMES
from cccdask.kernels.coefficients.part_statistics import PartStatistics
from cccdask.kernels.coefficients.ranks import corrected_ranks
from cccdask.kernels.coefficients.sorted_pairs import joint_table_of
from cccdask.kernels.coefficients.thresholds import Thresholds


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
        table = joint_table_of(stats.table)  # sorted keys: their histogram (per-value ranks)
        if table.n:
            (values1, ranks1, codes1), (values2, ranks2, codes2) = corrected_ranks(table, thresholds)
            rank_moments = Moments.from_weighted(ranks1, ranks2, table.counts, codes1, codes2)
            mean_rank = (table.n + 1) / 2.0
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
