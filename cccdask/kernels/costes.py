"""Costes' automatic threshold and significance test. Pure NumPy, no Dask.

Threshold (Costes et al. 2004): a regression line ``G = slope R + intercept`` through the
voxels inside the mask; threshold pairs ``(T1, T2)`` are walked down the line and the
Pearson r of the voxels *below* each pair decides where to stop. How the tools do it
differs (:mod:`cccdask.kernels.costes_tools` reproduces JACoP and Coloc 2 and picks the
search); the default (Huygens, :func:`huygens_threshold`) takes the highest ``T1`` at which r of ``R < T1 or G < slope T1 + intercept``
is <= 0.

One pass over a frame's joint histogram (:class:`~cccdask.kernels.coefficients.JointTable`,
exact distinct value pairs with counts) gives r-below for every candidate pair at once
(:func:`below_set_sums`): along a chain of pairs whose thresholds each move one way, every
histogram entry is below a pair's thresholds for one run of consecutive candidates, so
the below-set sums of every candidate are a cumulative sum of per-entry sums added at the
run's start and taken off at its end. O(entries + candidates), no pass over the image per
candidate. Integer images sum exactly (int64), so equal voxel sets give equal r.

Candidates (Huygens): every integer from max(R) down to min(R) for integer images whose
channel-1 span is at most :data:`MAX_INTEGER_CANDIDATES` (8- to 16-bit: exact);
otherwise :data:`GRID_CANDIDATES` evenly spaced values, then the same number again inside
the bracket where r-below first drops to <= 0 (resolution: span / 65535^2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from cccdask.kernels.coefficients import JointTable, Moments

MAX_INTEGER_CANDIDATES = 1 << 16
GRID_CANDIDATES = 1 << 16
CURVE_POINTS = 1024  # r-below curve stored for plotting: at most this many candidates
EXACT_SUM_LIMIT = 2.0 ** 62  # integer sums stay exact in int64 below this


@dataclass(frozen=True)
class CostesThreshold:
    """The automatic thresholds of one frame and how they were found.

    Attributes
    ----------
    threshold1, threshold2 : float
        Thresholds of channels 1 and 2 (intensity units); NaN when undefined.
    slope, intercept : float
        The regression line ``G = slope R + intercept``.
    resolution : float
        Spacing of the candidate thresholds of channel 1 around the result (1 for
        integer images and for the tools' searches: exact).
    curve_threshold1, curve_r_below : numpy.ndarray
        The r-below curve (:data:`CURVE_POINTS` entries, NaN-padded), candidates of
        channel 1 descending; every candidate when there are few enough, else evenly
        spaced ones.
    reason : str
        Why the thresholds are NaN ("" when defined).
    note : str
        How a tool got thresholds in a degenerate case where it still reports them (e.g.
        JACoP's start values when the slope is <= 0); "" otherwise.
    """

    threshold1: float
    threshold2: float
    slope: float
    intercept: float
    resolution: float
    curve_threshold1: np.ndarray
    curve_r_below: np.ndarray
    reason: str = ""
    note: str = ""


def regression_line(moments: Moments, method: str = "orthogonal") -> tuple[float, float]:
    """Slope and intercept of ``G = slope R + intercept``.

    ``method``: ``"orthogonal"`` (total least squares, Deming with equal error
    variances: Coloc 2) or ``"ols"`` (ordinary least squares of G on R: JACoP).
    """
    sxx, syy, sxy = float(moments.m2_x), float(moments.m2_y), float(moments.c_xy)
    if method == "ols":
        slope = sxy / sxx if sxx > 0 else np.nan
    elif method == "orthogonal":
        if sxy == 0:
            slope = np.nan
        else:
            slope = (syy - sxx + np.sqrt((syy - sxx) ** 2 + 4 * sxy * sxy)) / (2 * sxy)
    else:
        raise ValueError(f"regression method {method!r} is unknown; use 'orthogonal' or 'ols'.")
    return float(slope), float(moments.mean_y - slope * moments.mean_x)


# ---------------------------------------------------------------------------------------
# Sums of voxel sets, exact for integer images
# ---------------------------------------------------------------------------------------
def exact_sums(table: JointTable) -> bool:
    """Whether the histogram's sums of ``v``, ``v^2`` and ``v1 v2`` fit int64 exactly."""
    if not table.integer or table.n == 0:
        return False
    largest = max(float(np.abs(table.values1).max()), float(np.abs(table.values2).max()), 1.0)
    return table.n * largest * largest < EXACT_SUM_LIMIT


def _entry_values(table: JointTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-entry ``(v1, v2, count)``: int64 when :func:`exact_sums`, else float64 centred
    on the means (so that differences of large sums do not cancel)."""
    if exact_sums(table):
        return table.values1, table.values2, table.counts.astype(np.int64)
    x = table.values1.astype(np.float64)
    y = table.values2.astype(np.float64)
    w = table.counts.astype(np.float64)
    total = w.sum()
    if total > 0:
        x = x - np.dot(w, x) / total
        y = y - np.dot(w, y) / total
    return x, y, w


def set_sums(table: JointTable, select: np.ndarray | None = None) -> np.ndarray:
    """``(n, Sx, Sy, Sxx, Syy, Sxy)`` of the voxels of the selected entries (all: None).

    int64 (exact) for integer images within :data:`EXACT_SUM_LIMIT`, else float64 of
    values centred on the histogram's means.
    """
    x, y, w = _entry_values(table)
    if select is not None:
        x, y, w = x[select], y[select], w[select]
    wx, wy = w * x, w * y
    return np.array([w.sum(), wx.sum(), wy.sum(), np.dot(wx, x), np.dot(wy, y), np.dot(wx, y)])


def pearson_from_sums(sums: np.ndarray, arithmetic: str = "exact") -> np.ndarray:
    """Pearson r from ``(n, Sx, Sy, Sxx, Syy, Sxy)`` along the first axis (NaN: undefined).

    ``arithmetic``: ``"exact"``: from integer sums in extended precision (float64 sums:
    ``Sxy - Sx Sy / n`` etc.), clipped to [-1, 1], NaN where fewer than 2 voxels or a
    variance is zero. ``"coloc2"``: Coloc 2's own float64 expression
    (``PearsonsCorrelation.fastPearsons``: ``Sxy - Sx Sy (1/n)`` over the square root of
    the product of the two others), not clipped, NaN where it is not finite: with
    integer sums below 2^53 it gives Coloc 2's r to the last bit.
    """
    n, sx, sy, sxx, syy, sxy = sums
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if arithmetic == "coloc2":
            n, sx, sy, sxx, syy, sxy = (np.asarray(v, dtype=np.float64) for v in sums)
            inverse = 1.0 / n
            r = (sxy - sx * sy * inverse) / np.sqrt((sxx - sx * sx * inverse) * (syy - sy * sy * inverse))
            return np.where(np.isfinite(r), r, np.nan)
        if arithmetic != "exact":
            raise ValueError(f"arithmetic {arithmetic!r} is unknown; use 'exact' or 'coloc2'.")
        if np.asarray(n).dtype.kind == "i":
            n, sx, sy, sxx, syy, sxy = (np.asarray(v).astype(np.longdouble) for v in sums)
            cov, var_x, var_y = n * sxy - sx * sy, n * sxx - sx * sx, n * syy - sy * sy
            r = np.asarray(cov / np.sqrt(var_x * var_y), dtype=np.float64)
            undefined = (n < 2) | ~(var_x > 0) | ~(var_y > 0)
        else:
            var_x, var_y = sxx - sx * sx / n, syy - sy * sy / n
            r = (sxy - sx * sy / n) / np.sqrt(var_x * var_y)
            # what rounding leaves of a zero variance counts as zero
            undefined = (n < 2) | ~(var_x > 1e-12 * np.abs(sxx)) | ~(var_y > 1e-12 * np.abs(syy))
    r = np.where(undefined, np.nan, r)
    return np.clip(r, -1.0, 1.0)


def _runs_below(values: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per value, the run ``[start, stop)`` of candidates ``k`` with ``value < thresholds[k]``
    (``thresholds`` monotone, either way)."""
    k = len(thresholds)
    steps = np.diff(thresholds)
    if np.all(steps <= 0):  # descending: below for the first candidates
        stop = np.searchsorted(-thresholds, -values, side="left")
        return np.zeros_like(stop), stop
    if np.all(steps >= 0):  # ascending: below from some candidate on
        start = np.searchsorted(thresholds, values, side="right")
        return start, np.full_like(start, k)
    raise ValueError("candidate thresholds must be monotone along the chain")


@njit(nogil=True, cache=True)
def _add_runs(start, stop, x, y, w, out):
    """``out[start] += terms``, ``out[stop] -= terms`` for each entry with a non-empty run;
    terms ``(w, w x, w y, w x x, w y y, w x y)``."""
    for i in range(start.size):
        if start[i] < stop[i]:
            wi = w[i]
            wx = wi * x[i]
            wy = wi * y[i]
            terms = (wi, wx, wy, wx * x[i], wy * y[i], wx * y[i])
            for j in range(6):
                out[start[i], j] += terms[j]
                out[stop[i], j] -= terms[j]


def below_set_sums(table: JointTable, thresholds1: np.ndarray, thresholds2: np.ndarray,
                   combine: str = "or") -> np.ndarray:
    """Sums ``(n, Sx, Sy, Sxx, Syy, Sxy)`` of the voxels below each threshold pair, one pass.

    Parameters
    ----------
    table : JointTable
        Joint histogram of the raw values inside the mask.
    thresholds1, thresholds2 : numpy.ndarray
        One pair per candidate; each sequence monotone (either way: a negative slope
        moves them in opposite directions).
    combine : {"or", "and"}
        Below means ``v1 < T1 or v2 < T2`` (Costes, Coloc 2) or ``v1 < T1 and v2 < T2``
        (JACoP).

    Returns
    -------
    numpy.ndarray
        ``(6, candidates)``: int64 when :func:`exact_sums`, else float64 of centred values.
    """
    t1 = np.asarray(thresholds1, dtype=np.float64)
    t2 = np.asarray(thresholds2, dtype=np.float64)
    x, y, w = _entry_values(table)
    start1, stop1 = _runs_below(table.values1.astype(np.float64), t1)
    start2, stop2 = _runs_below(table.values2.astype(np.float64), t2)
    k = len(t1)
    if combine == "and":  # below both: the overlap of the two runs
        start, stop = np.maximum(start1, start2), np.minimum(stop1, stop2)
    elif combine == "or":  # the complement (at or above both) is the overlap of the complements
        start, stop = np.where(start1 > 0, 0, stop1), np.where(start1 > 0, start1, k)
        start2c, stop2c = np.where(start2 > 0, 0, stop2), np.where(start2 > 0, start2, k)
        start, stop = np.maximum(start, start2c), np.minimum(stop, stop2c)
    else:
        raise ValueError(f"combine {combine!r} is unknown; use 'or' or 'and'.")
    out = np.zeros((k + 1, 6), dtype=x.dtype)
    _add_runs(start, stop, x, y, w, out)
    sums = np.cumsum(out[:k], axis=0).T
    if combine == "or":
        sums = set_sums(table)[:, None] - sums
    return sums


def below_set_r(table: JointTable, thresholds1: np.ndarray, thresholds2: np.ndarray,
                combine: str = "or", arithmetic: str = "exact") -> np.ndarray:
    """Pearson r of the voxels below each threshold pair (see :func:`below_set_sums`)."""
    return pearson_from_sums(below_set_sums(table, thresholds1, thresholds2, combine), arithmetic)


def r_below_curve(table: JointTable, slope: float, intercept: float, candidates: np.ndarray) -> np.ndarray:
    """Pearson r of the voxels below each candidate threshold, in one pass over a histogram.

    Parameters
    ----------
    table : JointTable
        Joint histogram of the raw values inside the mask.
    slope, intercept : float
        The line the thresholds walk along (slope > 0).
    candidates : numpy.ndarray
        Channel-1 thresholds, strictly descending. Channel 2's is ``slope t + intercept``.

    Returns
    -------
    numpy.ndarray
        r of ``{R < t or G < slope t + intercept}`` per candidate (NaN where fewer than 2
        voxels or zero variance).
    """
    candidates = np.asarray(candidates, dtype=np.float64)
    return below_set_r(table, candidates, slope * candidates + intercept, "or")


def _first_at_or_below_zero(r: np.ndarray) -> int | None:
    hits = np.flatnonzero(r <= 0)
    return int(hits[0]) if hits.size else None


def curve_points(candidates: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most :data:`CURVE_POINTS` evenly picked ``(candidate, r)``, NaN-padded."""
    pick = np.unique(np.linspace(0, len(candidates) - 1, min(CURVE_POINTS, len(candidates))).round().astype(int))
    thresholds = np.full(CURVE_POINTS, np.nan)
    values = np.full(CURVE_POINTS, np.nan)
    if len(candidates):
        thresholds[: len(pick)] = candidates[pick]
        values[: len(pick)] = r[pick]
    return thresholds, values


EMPTY_CURVE = (np.full(CURVE_POINTS, np.nan), np.full(CURVE_POINTS, np.nan))


def undefined_threshold(reason: str, slope: float = np.nan, intercept: float = np.nan,
                        curve: tuple[np.ndarray, np.ndarray] = EMPTY_CURVE) -> CostesThreshold:
    """NaN thresholds, with why."""
    return CostesThreshold(np.nan, np.nan, slope, intercept, np.nan, *curve, reason=reason)


def huygens_threshold(table: JointTable) -> CostesThreshold:
    """Costes' automatic thresholds of a frame from its joint histogram (Huygens' rule).

    Orthogonal regression; the highest threshold with r-below <= 0 (``R < T1 or
    G < T2``); NaN with a reason when the slope is not positive. The tools' searches:
    :func:`cccdask.kernels.costes_tools.costes_threshold`.
    """
    if table.n < 3:
        return undefined_threshold("fewer than 3 voxels in the mask")
    moments = Moments.from_weighted(table.values1.astype(np.float64), table.values2.astype(np.float64),
                                    table.counts)
    slope, intercept = regression_line(moments, "orthogonal")
    if not np.isfinite(slope) or slope <= 0:
        return undefined_threshold("regression slope is not positive: the channels are not positively correlated",
                                   slope, intercept)
    low, high = float(table.values1.min()), float(table.values1.max())
    if high == low:
        return undefined_threshold("channel 1 is constant", slope, intercept)
    exact = table.integer and high - low < MAX_INTEGER_CANDIDATES
    if exact:
        candidates = np.arange(high, low - 1, -1, dtype=np.float64)
    else:
        candidates = np.linspace(high, low, GRID_CANDIDATES)
    r = r_below_curve(table, slope, intercept, candidates)
    curve = curve_points(candidates, r)
    index = _first_at_or_below_zero(r)
    if index is None:
        return undefined_threshold("r below threshold never drops to <= 0", slope, intercept, curve)
    threshold1 = float(candidates[index])
    resolution = 1.0 if exact else float(candidates[0] - candidates[1])
    if not exact and index > 0:
        # refine between the last candidate above zero and the first at or below it
        fine = np.linspace(candidates[index - 1], candidates[index], GRID_CANDIDATES)
        fine_r = r_below_curve(table, slope, intercept, fine)
        fine_index = _first_at_or_below_zero(fine_r)
        if fine_index is not None:
            threshold1 = float(fine[fine_index])
            resolution = float(fine[0] - fine[1])
    return CostesThreshold(threshold1, slope * threshold1 + intercept, slope, intercept, resolution, *curve)


# ---------------------------------------------------------------------------------------
# Significance test (Costes randomisation)
# ---------------------------------------------------------------------------------------
def block_shape(psf_width: float, spacing: tuple[float, ...]) -> tuple[int, ...]:
    """Voxels per block along each axis: the PSF width in physical units over the spacing.

    Anisotropic in 3D (a 0.6 um PSF at 0.2 um z / 0.05 um xy spacing: 3 x 12 x 12).
    """
    if not (np.isfinite(psf_width) and psf_width > 0):
        raise ValueError(f"psf_width {psf_width!r} must be a positive length in the spacing's units.")
    return tuple(max(1, int(round(psf_width / s))) for s in spacing)


def mask_blocks(image1: np.ndarray, image2: np.ndarray, mask: np.ndarray | None,
                block: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The blocks of a frame that lie entirely inside the mask, as ``(n_blocks, voxels)``.

    The frame is tiled from its origin; blocks cut by the frame edge or by the mask are
    left out, so a shuffle moves only voxels from inside the mask to inside the mask.
    """
    shape = tuple(n // b for n, b in zip(image1.shape, block))
    if min(shape) == 0:
        empty = np.empty((0, int(np.prod(block))))
        return empty, empty
    crop = tuple(slice(0, n * b) for n, b in zip(shape, block))

    def tiles(array: np.ndarray) -> np.ndarray:
        split = np.asarray(array)[crop].reshape([v for n, b in zip(shape, block) for v in (n, b)])
        order = list(range(0, 2 * len(shape), 2)) + list(range(1, 2 * len(shape), 2))
        return split.transpose(order).reshape(int(np.prod(shape)), int(np.prod(block)))

    keep = np.ones(int(np.prod(shape)), dtype=bool)
    if mask is not None:
        keep = (tiles(mask) != 0).all(axis=1)
    return tiles(image1).astype(np.float64)[keep], tiles(image2).astype(np.float64)[keep]


def randomized_pearson(blocks1: np.ndarray, blocks2: np.ndarray, n: int, seed: np.random.SeedSequence) -> np.ndarray:
    """Pearson r after ``n`` random permutations of channel 1's blocks (channel 2 fixed).

    A permutation keeps each channel's values (so its mean and variance): only the
    co-moment changes, one pass per randomisation.
    """
    rng = np.random.default_rng(seed)
    centred1 = blocks1 - blocks1.mean()
    centred2 = blocks2 - blocks2.mean()
    denominator = np.sqrt(np.sum(centred1 * centred1) * np.sum(centred2 * centred2))
    out = np.empty(n)
    for k in range(n):
        permuted = centred1[rng.permutation(len(centred1))]
        out[k] = np.sum(permuted * centred2) / denominator if denominator > 0 else np.nan
    return out


def significance_summary(observed: float, null: np.ndarray) -> dict[str, float]:
    """Observed r against its null distribution.

    Returns
    -------
    dict
        ``null_mean``, ``null_sd``, ``p_value`` (empirical, ``(#{null >= observed} + 1) /
        (n + 1)``: small = significant colocalization) and ``coloc2_p_value`` (Coloc 2's
        "Costes P-Value": the normal CDF of observed given the null mean and SD; close to
        1 = significant).
    """
    from scipy.stats import norm

    null = np.asarray(null, dtype=np.float64)
    mean, sd = float(null.mean()), float(null.std(ddof=1)) if null.size > 1 else np.nan
    p_value = (np.count_nonzero(null >= observed) + 1) / (null.size + 1)
    coloc2 = float(norm.cdf(observed, loc=mean, scale=sd)) if sd > 0 else np.nan
    return {"null_mean": mean, "null_sd": sd, "p_value": float(p_value), "coloc2_p_value": coloc2}


# ---------------------------------------------------------------------------------------
# Cytofluorogram
# ---------------------------------------------------------------------------------------
def cytofluorogram(table: JointTable, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 2D histogram (channel 1 along the first axis) of the voxels a joint histogram holds.

    Equal-width bins from each channel's minimum to its maximum in the mask (integer
    images: bin edges at half-integers, so no value sits on an edge).

    Returns
    -------
    counts : numpy.ndarray
        float64, ``(bins, bins)``.
    edges1, edges2 : numpy.ndarray
        ``bins + 1`` bin edges per channel (intensity units).
    """
    if table.n == 0:
        nan = np.full(bins + 1, np.nan)
        return np.zeros((bins, bins)), nan, nan.copy()
    ranges = []
    for values in (table.values1, table.values2):
        low, high = float(values.min()), float(values.max())
        if table.integer:
            low, high = low - 0.5, high + 0.5
        elif high == low:
            low, high = low - 0.5, high + 0.5
        ranges.append((low, high))
    counts, edges1, edges2 = np.histogram2d(
        table.values1.astype(np.float64), table.values2.astype(np.float64),
        bins=bins, range=ranges, weights=table.counts.astype(np.float64),
    )
    return counts, edges1, edges2
