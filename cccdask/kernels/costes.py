"""Costes' automatic threshold and significance test. Pure NumPy, no Dask.

Threshold (Costes et al. 2004, as in Fiji's Coloc 2): a regression line
``G = slope R + intercept`` through the voxels inside the mask; thresholds
``(T, slope T + intercept)`` are walked down the line from the maximum of channel 1; the
chosen threshold is the highest at which the Pearson r of the voxels *below* it
(``R < T or G < slope T + intercept``) is <= 0.

One pass over a frame's joint histogram (:class:`~cccdask.kernels.coefficients.JointTable`,
exact distinct value pairs with counts) gives r-below for every candidate at once: a
voxel pair leaves the below set at the first candidate (walking down) at which both its
values reach the thresholds, so the above-set sums of every candidate are a cumulative
sum of per-entry sums binned by that candidate; the below sums are the totals minus
those. O(entries + candidates), no pass over the image per candidate.

Candidates: every integer from max(R) down to min(R) for integer images whose channel-1
span is at most :data:`MAX_INTEGER_CANDIDATES` (8- to 16-bit: exact, Coloc 2's one-unit
steps); otherwise :data:`GRID_CANDIDATES` evenly spaced values, then the same number
again inside the bracket where r-below first drops to <= 0 (resolution: span / 65535^2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cccdask.kernels.coefficients import JointTable, Moments

MAX_INTEGER_CANDIDATES = 1 << 16
GRID_CANDIDATES = 1 << 16
CURVE_POINTS = 1024  # r-below curve stored for plotting: at most this many candidates


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
        integer images: exact).
    curve_threshold1, curve_r_below : numpy.ndarray
        The r-below curve (:data:`CURVE_POINTS` entries, NaN-padded), candidates of
        channel 1 descending; every candidate when there are few enough, else evenly
        spaced ones.
    reason : str
        Why the thresholds are NaN ("" when defined).
    """

    threshold1: float
    threshold2: float
    slope: float
    intercept: float
    resolution: float
    curve_threshold1: np.ndarray
    curve_r_below: np.ndarray
    reason: str = ""


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
    thresholds2 = slope * candidates + intercept
    x = table.values1.astype(np.float64)
    y = table.values2.astype(np.float64)
    w = table.counts.astype(np.float64)
    # centre on the means so the differences below do not cancel
    n_total = w.sum()
    x = x - np.dot(w, x) / n_total
    y = y - np.dot(w, y) / n_total
    # first candidate (walking down) at which each entry is at or above both thresholds
    enter1 = np.searchsorted(-candidates, -table.values1.astype(np.float64), side="left")
    enter2 = np.searchsorted(-thresholds2, -table.values2.astype(np.float64), side="left")
    enter = np.maximum(enter1, enter2)
    k = len(candidates)
    terms = np.stack([w, w * x, w * y, w * x * x, w * y * y, w * x * y])
    totals = terms.sum(axis=1)
    above = np.stack([np.bincount(enter, weights=t, minlength=k + 1)[:k] for t in terms])
    above = np.cumsum(above, axis=1)
    n, sx, sy, sxx, syy, sxy = totals[:, None] - above
    with np.errstate(invalid="ignore", divide="ignore"):
        var_x = sxx - sx * sx / n
        var_y = syy - sy * sy / n
        cov = sxy - sx * sy / n
        r = cov / np.sqrt(var_x * var_y)
    r[(n < 2) | ~(var_x > 0) | ~(var_y > 0)] = np.nan
    return np.clip(r, -1.0, 1.0)


def _first_at_or_below_zero(r: np.ndarray) -> int | None:
    hits = np.flatnonzero(r <= 0)
    return int(hits[0]) if hits.size else None


def _curve(candidates: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pick = np.unique(np.linspace(0, len(candidates) - 1, min(CURVE_POINTS, len(candidates))).round().astype(int))
    thresholds = np.full(CURVE_POINTS, np.nan)
    values = np.full(CURVE_POINTS, np.nan)
    thresholds[: len(pick)] = candidates[pick]
    values[: len(pick)] = r[pick]
    return thresholds, values


def costes_threshold(table: JointTable, regression: str = "orthogonal", rule: str = "first_nonpositive") -> CostesThreshold:
    """Costes' automatic thresholds of a frame from its joint histogram.

    Parameters
    ----------
    table : JointTable
        Joint histogram of the raw values inside the mask.
    regression : {"orthogonal", "ols"}
        The regression line (Coloc 2: orthogonal; JACoP: ordinary least squares).
    rule : {"first_nonpositive", "minimum"}
        ``first_nonpositive``: the highest threshold with r-below <= 0 (Costes, Coloc 2).
        ``minimum``: the threshold with the smallest r-below (JACoP).
    """
    empty_curve = (np.full(CURVE_POINTS, np.nan), np.full(CURVE_POINTS, np.nan))

    def undefined(reason, slope=np.nan, intercept=np.nan, curve=empty_curve):
        return CostesThreshold(np.nan, np.nan, slope, intercept, np.nan, *curve, reason=reason)

    if table.n < 3:
        return undefined("fewer than 3 voxels in the mask")
    moments = Moments.from_weighted(table.values1.astype(np.float64), table.values2.astype(np.float64),
                                    table.counts)
    slope, intercept = regression_line(moments, regression)
    if not np.isfinite(slope) or slope <= 0:
        return undefined("regression slope is not positive: the channels are not positively correlated",
                         slope, intercept)
    low, high = float(table.values1.min()), float(table.values1.max())
    if high == low:
        return undefined("channel 1 is constant", slope, intercept)
    exact = table.integer and high - low < MAX_INTEGER_CANDIDATES
    if exact:
        candidates = np.arange(high, low - 1, -1, dtype=np.float64)
    else:
        candidates = np.linspace(high, low, GRID_CANDIDATES)
    r = r_below_curve(table, slope, intercept, candidates)
    curve = _curve(candidates, r)
    if rule == "minimum":
        if np.all(np.isnan(r)):
            return undefined("r below threshold is undefined at every candidate", slope, intercept, curve)
        index = int(np.nanargmin(r))
    elif rule == "first_nonpositive":
        index = _first_at_or_below_zero(r)
        if index is None:
            return undefined("r below threshold never drops to <= 0", slope, intercept, curve)
    else:
        raise ValueError(f"Costes rule {rule!r} is unknown; use 'first_nonpositive' or 'minimum'.")
    threshold1 = float(candidates[index])
    resolution = 1.0 if exact else float(candidates[0] - candidates[1])
    if not exact and rule == "first_nonpositive" and index > 0:
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
