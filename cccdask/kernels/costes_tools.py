"""Costes' threshold searches of JACoP 2.1.4 and Fiji's Coloc 2, and their extra numbers.

Pure NumPy, no Dask. Each search follows the tool's source rule for rule (quoted in the
functions) but evaluates every candidate from one pass over the frame's joint histogram
(:func:`cccdask.kernels.costes.below_set_sums`), not one pass over the voxels per
candidate as the tools do. Java's arithmetic is kept where it decides a threshold:
``(int)`` truncation, ``Math.round``, ``Math.min``/``Math.max`` with NaN, the tools' own
float64 expressions for the regression (JACoP) and for r (Coloc 2's stepper).

Deliberate difference: Coloc 2's regression leaves the first voxel of the mask out of its
sums while its means include it (``AutoThresholdRegression``); here every voxel counts
(slope and intercept differ by about 1e-5 relative on colocsample1b; the rounded
thresholds are the same there).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from cccdask.kernels.coefficients import JointTable, Moments
from cccdask.kernels.costes import (
    CostesThreshold,
    below_set_r,
    curve_points,
    exact_sums,
    huygens_threshold,
    pearson_from_sums,
    regression_line,
    set_sums,
    undefined_threshold,
)

CHAIN_BLOCK = 1 << 18  # candidate pairs evaluated per pass over the histogram
MAX_STEPS = 1 << 24  # most candidates a tool's search may walk (one unit per step)
COLOC2_STOP_R = 0.0001  # SimpleStepper: finished when r < 0.0001
BISECTION_MAX_ITERATIONS = 100


def costes_threshold(table: JointTable, tool: str = "huygens", search: str = "stepper",
                     value_range: tuple[float, float] = (-np.inf, np.inf)) -> CostesThreshold:
    """Costes' automatic thresholds of a frame from its joint histogram.

    Parameters
    ----------
    table : JointTable
        Joint histogram of the raw values inside the mask.
    tool : {"huygens", "coloc2", "jacop"}
        ``huygens``: :func:`cccdask.kernels.costes.huygens_threshold`; ``coloc2``:
        :func:`coloc2_threshold`; ``jacop``: :func:`jacop_threshold`.
    search : {"stepper", "bisection"}
        Coloc 2's stepper (its default) or its bisection search.
    value_range : (float, float)
        Coloc 2 clamps its thresholds to the range of the image's data type.
    """
    if tool == "jacop":
        return jacop_threshold(table)
    if tool == "coloc2":
        return coloc2_threshold(table, search, value_range)
    if tool == "huygens":
        return huygens_threshold(table)
    raise ValueError(f"Costes tool {tool!r} is unknown; use 'huygens', 'coloc2' or 'jacop'.")


# ---------------------------------------------------------------------------------------
# Java arithmetic
# ---------------------------------------------------------------------------------------
INT_MIN, INT_MAX = -(2 ** 31), 2 ** 31 - 1
LONG_MIN, LONG_MAX = -(2 ** 63), 2 ** 63 - 1


def java_int(value):
    """Java's ``(int)`` cast of doubles: toward zero, NaN -> 0, saturating at the int range."""
    value = np.asarray(value, dtype=np.float64)
    out = np.trunc(np.clip(np.nan_to_num(value, nan=0.0), INT_MIN, INT_MAX))
    return out if out.ndim else float(out)


def java_round(value):
    """Java's ``Math.round(double)``: ``floor(x + 1/2)`` exactly, NaN -> 0, saturating."""
    value = np.asarray(value, dtype=np.float64)
    floor = np.floor(value)
    out = np.where(value - floor >= 0.5, floor + 1.0, floor)  # value - floor is exact
    out = np.clip(np.nan_to_num(out, nan=0.0), float(LONG_MIN), float(LONG_MAX))
    return out if out.ndim else float(out)


def java_min(a: float, b: float) -> float:
    """``Math.min`` of doubles: NaN if either is NaN."""
    return math.nan if math.isnan(a) or math.isnan(b) else min(a, b)


def java_max(a: float, b: float) -> float:
    """``Math.max`` of doubles: NaN if either is NaN."""
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


def _float_sums(table: JointTable) -> tuple[float, ...]:
    """``(n, sumA, sumB, sumAB, sumsqrA)`` as the tools accumulate them in doubles: exact
    integers for integer images (below 2^53), converted once."""
    n, sx, sy, sxx, _, sxy = set_sums(table) if exact_sums(table) else _raw_float_sums(table)
    return float(n), float(sx), float(sy), float(sxy), float(sxx)


def _raw_float_sums(table: JointTable) -> np.ndarray:
    x, y, w = (v.astype(np.float64) for v in (table.values1, table.values2, table.counts))
    return np.array([w.sum(), np.dot(w, x), np.dot(w, y), np.dot(w * x, x), np.dot(w * y, y), np.dot(w * x, y)])


# ---------------------------------------------------------------------------------------
# JACoP 2.1.4 (_JACoP.ImageColocalizer.CostesAutoThr)
# ---------------------------------------------------------------------------------------
def jacop_line(table: JointTable) -> tuple[float, float]:
    """JACoP's ``linreg``: ordinary least squares of B on A, in its own float64 expression
    ``a = (n sumAB - sumA sumB) / (n sumsqrA - sumA^2)``, ``b = (sumsqrA sumB - sumA sumAB) /
    (same)`` (to the last bit for integer images with sums below 2^53)."""
    n, sum_a, sum_b, sum_ab, sum_aa = _float_sums(table)
    with np.errstate(invalid="ignore", divide="ignore"):
        denominator = np.float64(n * sum_aa) - np.float64(sum_a * sum_a)
        a = (np.float64(n * sum_ab) - np.float64(sum_a * sum_b)) / denominator
        b = (np.float64(sum_aa * sum_b) - np.float64(sum_a * sum_ab)) / denominator
    return float(a), float(b)


def jacop_threshold(table: JointTable) -> CostesThreshold:
    """JACoP's Costes threshold.

    Rules (``CostesAutoThr``): the line ``B = a A + b`` by :func:`jacop_line`;
    candidates ``i`` every integer from ``LoopMax = (int) min(Amax, (Bmax - b) / a)``
    down to ``LoopMin = (int) max(Amin, (Bmin - b) / a)``, channel 2's threshold
    ``(int)(a i + b)``; r of the voxels with ``A < i and B < (int)(a i + b)``; the result
    is the last candidate (lowest ``i``) whose r is <= the running minimum of the r before
    it (which starts at 1; an undefined r changes nothing), the first candidate excepted.
    With no such candidate (e.g. a slope <= 0, where the range holds at most the first
    candidate) JACoP reports its start values ``(Amax, Bmax)``: so does this, with a note.
    A, B min and max are JACoP's ``(int)`` of the values inside the mask.
    """
    if table.n < 2:
        return undefined_threshold("fewer than 2 voxels in the mask")
    a, b = jacop_line(table)
    a_min, a_max = java_int(float(table.values1.min())), java_int(float(table.values1.max()))
    b_min, b_max = java_int(float(table.values2.min())), java_int(float(table.values2.max()))
    with np.errstate(invalid="ignore", divide="ignore"):
        loop_min = java_int(java_max(a_min, float(np.float64(b_min - b) / np.float64(a))))
        loop_max = java_int(java_min(a_max, float(np.float64(b_max - b) / np.float64(a))))
    n_candidates = int(loop_max - loop_min) + 1
    if n_candidates > MAX_STEPS:
        return undefined_threshold(f"JACoP's Costes search would walk {n_candidates} integer thresholds "
                                   f"(more than {MAX_STEPS}): rescale the image to 16 bits", a, b)
    start_values = CostesThreshold(a_max, b_max, a, b, 1.0, *curve_points(np.empty(0), np.empty(0)))
    if n_candidates < 2:
        return _with_note(start_values, f"JACoP's start values (Amax, Bmax): its candidate range "
                                        f"LoopMax..LoopMin = {loop_max:g}..{loop_min:g} holds no candidate "
                                        f"after the first (regression slope {a:.6g})")
    candidates = np.arange(loop_max, loop_min - 1, -1, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        thresholds2 = java_int(np.float64(a) * candidates + np.float64(b))
    r = np.concatenate([below_set_r(table, candidates[k:k + CHAIN_BLOCK], thresholds2[k:k + CHAIN_BLOCK], "and")
                        for k in range(0, n_candidates, CHAIN_BLOCK)])
    if np.isnan(r[0]) and loop_max != 0:
        return undefined_threshold("JACoP stops with an error here: r below its first candidate threshold is "
                                   "undefined", a, b, curve_points(candidates, r))
    # rmin before candidate k: min(1, r_0 .. r_{k-1}); undefined r never lowers it
    running_min = np.minimum.accumulate(np.concatenate([[1.0], np.where(np.isnan(r), np.inf, r)]))[:-1]
    chosen = np.flatnonzero(r[1:] <= running_min[1:]) + 1
    if chosen.size == 0:
        return _with_note(replace_curve(start_values, candidates, r),
                          "JACoP's start values (Amax, Bmax): no candidate after the first has r below "
                          "threshold <= the running minimum")
    k = int(chosen[-1])
    return CostesThreshold(float(candidates[k]), float(thresholds2[k]), a, b, 1.0, *curve_points(candidates, r))


def jacop_extras(table: JointTable, threshold1: float, threshold2: float) -> dict[str, tuple[float, str]]:
    """JACoP's numbers at thresholds ``(TA, TB)`` beyond the common coefficients.

    ``jacop_thresholded_overlap``, ``jacop_thresholded_k1``, ``jacop_thresholded_k2``
    (``Overlap``: numerator and both denominators over ``A > TA and B > TB``);
    ``jacop_costes_pearson`` (r over ``A >= TA and B >= TB``, what its Costes report
    prints) and ``jacop_costes_m1 = sum A[A > TA] / sum A``, ``jacop_costes_m2`` alike.
    """
    a, b, w = (v.astype(np.float64) for v in (table.values1, table.values2, table.counts))
    both = (a > threshold1) & (b > threshold2)
    wab = w * a * b
    num, den1, den2 = float(wab[both].sum()), float(np.dot(w[both] * a[both], a[both])), \
        float(np.dot(w[both] * b[both], b[both]))
    out = {}
    none_above = "no voxel with A > TA and B > TB"
    out["jacop_thresholded_overlap"] = _ratio(num, math.sqrt(den1 * den2), none_above)
    out["jacop_thresholded_k1"] = _ratio(num, den1, none_above)
    out["jacop_thresholded_k2"] = _ratio(num, den2, none_above)
    r = float(pearson_from_sums(set_sums(table, (a >= threshold1) & (b >= threshold2))))
    out["jacop_costes_pearson"] = (r, "" if np.isfinite(r) else "fewer than 2 voxels or zero variance "
                                                                "with A >= TA and B >= TB")
    out["jacop_costes_m1"] = _ratio(float(np.dot(w, a * (a > threshold1))), float(np.dot(w, a)), "sum of A is zero")
    out["jacop_costes_m2"] = _ratio(float(np.dot(w, b * (b > threshold2))), float(np.dot(w, b)), "sum of B is zero")
    return out


# ---------------------------------------------------------------------------------------
# Coloc 2 (sc.fiji.coloc.algorithms.AutoThresholdRegression, SimpleStepper, BisectionStepper)
# ---------------------------------------------------------------------------------------
class _Coloc2Line:
    """Coloc 2's threshold mapping: the walked channel and both rounded, clamped thresholds."""

    def __init__(self, slope: float, intercept: float, value_range: tuple[float, float]):
        self.slope, self.intercept = np.float64(slope), np.float64(intercept)
        # "if (m > -1 && m < 1)": walk channel 1, else channel 2 (NaN walks channel 2)
        self.walks = 1 if -1 < slope < 1 else 2
        self.low, self.high = (float(v) for v in value_range)

    def thresholds(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``clamp(Math.round(ch1(t)))``, ``clamp(Math.round(ch2(t)))``."""
        t = np.asarray(t, dtype=np.float64)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            if self.walks == 1:
                ch1, ch2 = t, t * self.slope + self.intercept
            else:
                ch1, ch2 = (t - self.intercept) / self.slope, t
        return (np.clip(java_round(ch1), self.low, self.high), np.clip(java_round(ch2), self.low, self.high))


def coloc2_line(table: JointTable) -> tuple[float, float]:
    """Coloc 2's orthogonal (Deming) regression over every voxel in the mask."""
    if exact_sums(table):
        n, sx, sy, sxx, syy, sxy = (np.longdouble(v) for v in set_sums(table))
        moments = Moments(*(np.float64(v) for v in (n, sx / n, sy / n, sxx - sx * sx / n, syy - sy * sy / n,
                                                        sxy - sx * sy / n)))
    else:
        moments = Moments.from_weighted(table.values1.astype(np.float64), table.values2.astype(np.float64),
                                        table.counts)
    return regression_line(moments, "orthogonal")


def coloc2_threshold(table: JointTable, search: str = "stepper",
                     value_range: tuple[float, float] = (-np.inf, np.inf)) -> CostesThreshold:
    """Coloc 2's Costes threshold (``AutoThresholdRegression``).

    Rules: the orthogonal line ``ch2 = m ch1 + b`` (:func:`coloc2_line`); if
    ``-1 < m < 1`` the search walks a value ``t`` of channel 1 (``T1 = t``,
    ``T2 = t m + b``), else of channel 2 (``T1 = (t - b) / m``); at each step both are
    ``Math.round``-ed and clamped to ``value_range`` (the data type's), and r is Coloc 2's
    Pearson (:func:`pearson_from_sums`, ``arithmetic="coloc2"``) of the voxels with
    ``ch1 < T1 or ch2 < T2`` (NaN where undefined). The reported thresholds are those of
    the last step evaluated. Negative slopes are walked too, as Coloc 2 does (with a note).

    ``search="stepper"`` (``SimpleStepper``, Coloc 2's default): ``t`` starts at the
    walked channel's maximum in the mask and drops by 1 per step; finished when ``t - 1 < 1``
    or r < 0.0001 or r > the previous r (1.0 before the first; NaN never stops it and
    makes the next comparison false).
    ``search="bisection"`` (``BisectionStepper``): ``t`` starts at ``|max + min| / 2``
    with the previous value at ``max``; r > 0 moves half the last difference down,
    r < 0 half up (r = 0 or NaN stays); finished when the difference is < 1 or after 100
    updates.
    """
    if search not in ("stepper", "bisection"):
        raise ValueError(f"costes_search {search!r} is unknown; use 'stepper' (Coloc 2's default) or 'bisection'.")
    if table.n < 2:
        return undefined_threshold("fewer than 2 voxels in the mask")
    slope, intercept = coloc2_line(table)
    line = _Coloc2Line(slope, intercept, value_range)
    walked = table.values1 if line.walks == 1 else table.values2
    low, high = float(walked.min()), float(walked.max())
    if search == "stepper":
        found = _simple_stepper(table, line, high)
    else:
        found = _bisection(table, line, abs(high + low) * 0.5, high)
    if isinstance(found, str):
        return undefined_threshold(found, slope, intercept)
    t1, t2, curve = found
    result = CostesThreshold(float(t1), float(t2), slope, intercept, 1.0, *curve)
    if not slope > 0:
        result = _with_note(result, f"Coloc 2 walks a regression slope <= 0 too (slope {slope:.6g}): "
                                    f"its thresholds are reported as it reports them")
    return result


def _simple_stepper(table: JointTable, line: _Coloc2Line, start: float):
    """SimpleStepper from ``start``: ``(T1, T2, curve)`` of the last step, or why none."""
    last = 0 if start < 2 else int(math.floor(start - 2)) + 1  # first step with t - 1 < 1
    if last + 1 > MAX_STEPS:
        return f"Coloc 2's stepper would walk {last + 1} steps of one unit (more than {MAX_STEPS})"
    previous, steps1, values = 1.0, [], []
    for k0 in range(0, last + 1, CHAIN_BLOCK):
        t = start - np.arange(k0, min(last + 1, k0 + CHAIN_BLOCK), dtype=np.float64)
        t1, t2 = line.thresholds(t)
        r = below_set_r(table, t1, t2, "or", "coloc2")
        before = np.concatenate([[previous], r[:-1]])
        with np.errstate(invalid="ignore"):
            stop = (t - 1.0 < 1.0) | (r < COLOC2_STOP_R) | (r > before)
        hits = np.flatnonzero(stop)
        end = int(hits[0]) + 1 if hits.size else len(t)
        steps1.append(t1[:end])
        values.append(r[:end])
        if hits.size:
            k = int(hits[0])
            return t1[k], t2[k], curve_points(np.concatenate(steps1), np.concatenate(values))
        previous = r[-1]
    return "Coloc 2's stepper did not stop"  # unreachable: the last step has t - 1 < 1


def _bisection(table: JointTable, line: _Coloc2Line, start: float, previous: float):
    """BisectionStepper: ``(T1, T2, curve)`` of the last step, or why none.

    Every pair the search can reach lies on one monotone chain (per integer value of the
    walked channel's rounded threshold, the at most two rounded values of the other
    channel's over that unit interval), evaluated in one pass when it is not longer than
    :data:`CHAIN_BLOCK`; otherwise each step is evaluated on its own.
    """
    difference = abs(start - previous)
    reach = (start - difference, start + difference)  # every step stays within this
    chain = _reachable_chain(line, reach) if difference < CHAIN_BLOCK / 2 else None
    if chain is not None:
        chain_t1, chain_t2, index_of = chain
        r_chain = below_set_r(table, chain_t1, chain_t2, "or", "coloc2")
    threshold, iterations, steps = start, 0, []
    while not (iterations > BISECTION_MAX_ITERATIONS or difference < 1.0):
        t1, t2 = (float(v[0]) for v in line.thresholds(np.array([threshold])))
        if chain is not None:
            r = float(r_chain[index_of(threshold)])
        else:
            r = float(below_set_r(table, np.array([t1]), np.array([t2]), "or", "coloc2")[0])
        steps.append((t1, t2, r))
        previous = threshold
        if r < 0:
            threshold = threshold + difference * 0.5
        elif r > 0:
            threshold = threshold - difference * 0.5
        difference = abs(threshold - previous)
        iterations += 1
    if not steps:
        return "Coloc 2's bisection evaluated no threshold (the walked channel spans less than 2 units)"
    order = sorted(steps, key=lambda s: -s[0])
    curve = curve_points(np.array([s[0] for s in order]), np.array([s[2] for s in order]))
    return steps[-1][0], steps[-1][1], curve


def _reachable_chain(line: _Coloc2Line, reach: tuple[float, float]):
    """The chain of threshold pairs for ``t`` in ``reach`` and a function ``t -> index``."""
    walked = java_round(np.array(reach))
    top, bottom = float(walked[1]), float(walked[0])
    blocks = np.arange(top, bottom - 1, -1, dtype=np.float64)  # rounded walked value, descending
    # the other channel's rounded value over t in [R - 1/2, R + 1/2) lies between these
    edge_low, edge_high = (_other_rounded(line, blocks + offset) for offset in (-0.5, 0.5))
    lowest, highest = np.minimum(edge_low, edge_high), np.maximum(edge_low, edge_high)
    sizes = (highest - lowest + 1).astype(np.int64)
    descending = not line.slope < 0  # the other channel falls with the walked one
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    within = np.arange(int(sizes.sum())) - np.repeat(starts, sizes)
    first = np.repeat(np.where(descending, highest, lowest), sizes)
    other = first - within if descending else first + within
    walked_values = np.repeat(blocks, sizes)
    unclamped = (walked_values, other) if line.walks == 1 else (other, walked_values)
    clamped = tuple(np.clip(v, line.low, line.high) for v in unclamped)

    def index_of(t: float) -> int:
        block = int(top - java_round(t))
        other_value = _other_rounded(line, np.array([t]))[0]
        offset = highest[block] - other_value if descending else other_value - lowest[block]
        return int(starts[block] + offset)

    return clamped[0], clamped[1], index_of


def _other_rounded(line: _Coloc2Line, t: np.ndarray) -> np.ndarray:
    """``Math.round`` of the channel that is not walked, unclamped."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if line.walks == 1:
            return java_round(t * line.slope + line.intercept)
        return java_round((t - line.intercept) / line.slope)


def coloc2_extras(table: JointTable, threshold1: float, threshold2: float) -> dict[str, tuple[float, str]]:
    """Coloc 2's Pearson below (``ch1 < T1 or ch2 < T2``) and above (``ch1 > T1 or
    ch2 > T2``, strict) threshold, in its own arithmetic."""
    v1, v2 = table.values1, table.values2
    out = {}
    for name, select in (("coloc2_pearson_below_threshold", (v1 < threshold1) | (v2 < threshold2)),
                         ("coloc2_pearson_above_threshold", (v1 > threshold1) | (v2 > threshold2))):
        r = float(pearson_from_sums(set_sums(table, select), "coloc2"))
        out[name] = (r, "" if np.isfinite(r) else "fewer than 2 voxels or zero variance in the set")
    return out


# ---------------------------------------------------------------------------------------
def _ratio(numerator: float, denominator: float, reason: str) -> tuple[float, str]:
    return (numerator / denominator, "") if denominator > 0 else (math.nan, reason)


def _with_note(result: CostesThreshold, note: str) -> CostesThreshold:
    return replace(result, note=note)


def replace_curve(result: CostesThreshold, candidates: np.ndarray, r: np.ndarray) -> CostesThreshold:
    """``result`` with the r-below curve of ``candidates``."""
    thresholds, values = curve_points(candidates, r)
    return replace(result, curve_threshold1=thresholds, curve_r_below=values)
