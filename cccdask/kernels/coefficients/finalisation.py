"""The coefficients of a frame from its merged :class:`~.part_statistics.PartStatistics`."""

from __future__ import annotations

import numpy as np

from cccdask.kernels.coefficients.names import COEFFICIENT_NAMES, SUM_NAMES
from cccdask.kernels.coefficients.part_statistics import PartStatistics
from cccdask.kernels.coefficients.ranks import table_rank_coefficients
from cccdask.kernels.coefficients.sorted_pairs import SortedPairs, ranks_source
from cccdask.kernels.coefficients.sorted_ranks import rank_coefficients
from cccdask.kernels.coefficients.thresholds import Thresholds


def _ratio(numerator: float, denominator: float, reason: str) -> tuple[float, str]:
    if denominator > 0:
        return float(numerator / denominator), ""
    return np.nan, reason


def finalize(stats: PartStatistics, thresholds: Thresholds, threads: int = 1) -> dict[str, tuple[float, str]]:
    """Every coefficient of a frame from its merged statistics.

    The rank coefficients and ICQ come from the frame's joint histogram, or, where most
    of its voxels are distinct pairs, from its sorted keys (:func:`~.sorted_pairs.
    ranks_source`: by the frame alone, the same at any chunking), with ``threads``
    threads (1 inside a Dask task).

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

    out.update(_rank_coefficients(ranks_source(stats.table), thresholds, threads))

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
    return out


def _rank_coefficients(source, thresholds: Thresholds, threads: int) -> dict[str, tuple[float, str]]:
    """Spearman, object Spearman, Kendall's tau-b and ICQ from a frame's keys or table."""
    if isinstance(source, SortedPairs):
        return rank_coefficients(source, thresholds, threads)
    return table_rank_coefficients(source, thresholds)
