"""The arguments of the coefficient functions: thresholds, presets, Van Steensel shifts."""

from __future__ import annotations

from dataclasses import dataclass, replace
from numbers import Real
from typing import Any

import numpy as np

from cccdask.kernels.coefficients import ChannelThreshold, Thresholds


THRESHOLD_SEMANTICS = (
    "Huygens conventions (spec/coefficients.md). Per channel a threshold T and a range rho. "
    "Background-corrected value v' = max(v - T, 0) (v itself when T is 'none'), used by "
    "pearson, object_pearson, overlap, k1, k2, m1, m2, icq, van_steensel and the ranks of "
    "spearman, object_spearman and kendall_tau (values at or below T share one tied rank). "
    "Weight w = 1 if v > T else 0 (rho = 0), or linear from 0 at T - rho/2 to 1 at "
    "T + rho/2; with T 'none' the weight uses T = 0. m1 = sum R' wG / sum R', "
    "m2 = sum G' wR / sum G'; intersection, i1, i2 from the weights. Object voxels "
    "(object_pearson, object_spearman): R > T_R or G > T_G on the raw values (hard, rho "
    "ignored). rho changes only the weights. kendall_tau is tau-b over the mask. With "
    "threshold='costes' T is found per frame (variable 'threshold')."
)


PRESET_SEMANTICS = {
    "coloc2": (
        "Fiji Coloc 2 conventions: values are not background-corrected (v' = v); above "
        "threshold means v >= T and v > 0; m1 = sum of R where G is above threshold / sum of "
        "all R in the mask (tM1); ICQ counts zero products as positive. Weights, object set "
        "and intersection use the same above-threshold test. Costes (threshold='costes') as "
        "Coloc 2's AutoThresholdRegression: orthogonal regression; if -1 < slope < 1 the "
        "search walks channel 1's threshold, else channel 2's, both Math.round-ed; "
        "costes_search='stepper' (SimpleStepper, default: from the maximum down one unit per "
        "step, stop at the first r-below < 0.0001 or when r-below rises) or 'bisection' "
        "(BisectionStepper); r-below over ch1 < T1 or ch2 < T2. Extra: "
        "coloc2_pearson_below_threshold, coloc2_pearson_above_threshold (ch1 > T1 or ch2 > T2). "
        "Not reproduced: Coloc 2 leaves the first voxel of the mask out of its regression "
        "sums (about 1e-5 relative in the slope)."
    ),
    "jacop": (
        "JACoP conventions: values are not background-corrected (v' = v); above threshold "
        "means v > T; m1 = sum of R where R and G are above their thresholds / sum of R above "
        "its own threshold; ICQ counts positive products. Costes (threshold='costes') as "
        "JACoP 2.1.4's CostesAutoThr: ordinary least squares B = a A + b; integer candidates i "
        "from LoopMax = (int) min(Amax, (Bmax - b)/a) down to LoopMin = (int) max(Amin, "
        "(Bmin - b)/a), channel 2's threshold (int)(a i + b); r-below over A < i and B < "
        "(int)(a i + b); the last candidate whose r-below is <= the running minimum (the "
        "first candidate excepted); none (e.g. slope <= 0): JACoP's start values (Amax, "
        "Bmax), said in costes_note. Extra: jacop_thresholded_overlap, jacop_thresholded_k1, "
        "jacop_thresholded_k2 (over A > TA and B > TB), and with Costes jacop_costes_pearson "
        "(r over A >= TA and B >= TB), jacop_costes_m1 = sum A[A > TA] / sum A, jacop_costes_m2."
    ),
    "skimage": (
        "scikit-image conventions: values are not background-corrected (v' = v); above "
        "threshold means v > T (the binary masks skimage takes); m1 = "
        "manders_coloc_coeff(R, G > T_G) = sum of R where G > T_G / sum of R."
    ),
}


def _per_channel(value: Any, name: str) -> tuple[Any, Any]:
    """One value for both channels, or a pair (channel 1, channel 2)."""
    if isinstance(value, (str, bytes)) or value is None or isinstance(value, Real):
        return value, value
    try:
        pair = tuple(value)
    except TypeError:
        raise ValueError(
            f"{name} must be a number, None, or a pair (channel 1, channel 2); got {value!r}."
        ) from None
    if len(pair) != 2:
        raise ValueError(f"{name} must be one value or a pair (channel 1, channel 2); got {len(pair)} values.")
    return pair


@dataclass(frozen=True)
class Preset:
    """Conventions of one tool, where the tools differ (spec, last section).

    Attributes
    ----------
    subtract : bool
        Background-correct values by the threshold, ``max(v - T, 0)`` (Huygens only).
    inclusive : bool
        Above threshold means ``v >= T and v > 0`` (Coloc 2) rather than ``v > T``.
    manders : {"all", "own"}
        m1's denominator: all of R over the mask, or R above its own threshold (JACoP).
    icq_zero_positive : bool
        ICQ counts zero products as positive (Coloc 2).
    costes : {"huygens", "coloc2", "jacop"}
        Whose Costes search (:func:`cccdask.kernels.costes.costes_threshold`).
    extras : tuple of str
        The tool's own numbers reported beside the common coefficients when thresholds
        are set (see :func:`extra_names`).
    """

    subtract: bool
    inclusive: bool
    manders: str
    icq_zero_positive: bool
    costes: str
    extras: tuple[str, ...] = ()


JACOP_THRESHOLDED = ("jacop_thresholded_overlap", "jacop_thresholded_k1", "jacop_thresholded_k2")
JACOP_COSTES = ("jacop_costes_pearson", "jacop_costes_m1", "jacop_costes_m2")
COLOC2_EXTRAS = ("coloc2_pearson_below_threshold", "coloc2_pearson_above_threshold")

PRESETS = {
    "huygens": Preset(True, False, "all", False, "huygens"),
    "coloc2": Preset(False, True, "all", True, "coloc2", COLOC2_EXTRAS),
    "jacop": Preset(False, False, "own", False, "jacop", JACOP_THRESHOLDED + JACOP_COSTES),
    "skimage": Preset(False, False, "all", False, "huygens"),
}
COSTES_SEARCHES = ("stepper", "bisection")


def preset_named(preset: str) -> Preset:
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} is unknown; choose one of {sorted(PRESETS)}.")
    return PRESETS[preset]


def resolve_thresholds(threshold: Any = None, threshold_range: Any = 0.0, preset: str = "huygens") -> Thresholds:
    """Turn the user's ``threshold`` / ``threshold_range`` into :class:`Thresholds`.

    ``threshold="costes"`` gives thresholds without levels (they are found per frame);
    see :func:`is_automatic`.

    Raises
    ------
    ValueError
        A threshold that is not a finite number, None or "costes"; a range that is
        negative or not a number; an unknown preset.
    """
    conventions = preset_named(preset)
    automatic = isinstance(threshold, str) and threshold == "costes"
    levels = (None, None) if automatic else _per_channel(threshold, "threshold")
    ranges = _per_channel(threshold_range, "threshold_range")
    channels = []
    for channel, (level, soft_range) in enumerate(zip(levels, ranges), start=1):
        if isinstance(level, str):
            raise ValueError(
                f"threshold {level!r} for channel {channel} is not supported; give a number in "
                f"intensity units, None (no threshold), or 'costes' (for both channels)."
            )
        if level is not None and not isinstance(level, Real):
            raise ValueError(f"threshold for channel {channel} must be a number or None; got {level!r}.")
        if soft_range is None:
            soft_range = 0.0
        if not isinstance(soft_range, Real) or not np.isfinite(soft_range) or soft_range < 0:
            raise ValueError(
                f"threshold_range for channel {channel} is {soft_range!r}; it must be a finite "
                f"number >= 0 in intensity units (0 = hard threshold)."
            )
        channels.append(ChannelThreshold(None if level is None else float(level), float(soft_range),
                                         subtract=conventions.subtract, inclusive=conventions.inclusive))
    return Thresholds(*channels, manders=conventions.manders, icq_zero_positive=conventions.icq_zero_positive)


def extra_names(preset: Preset, thresholds: Thresholds, automatic: bool) -> tuple[str, ...]:
    """The tool's own numbers a call reports: with thresholds on both channels (JACoP's
    Costes numbers only with ``threshold="costes"``)."""
    if not automatic and (thresholds.channel1.level is None or thresholds.channel2.level is None):
        return ()
    return tuple(name for name in preset.extras if automatic or name not in JACOP_COSTES)


def costes_search_named(costes_search: str | None, preset: str) -> str:
    """The Costes search to use: Coloc 2's stepper unless ``bisection`` is asked for."""
    if costes_search is None:
        return "stepper"
    if preset != "coloc2":
        raise ValueError(f"costes_search={costes_search!r} applies to preset='coloc2' only (Coloc 2's two "
                         f"searches); leave it unset for preset={preset!r}.")
    if costes_search not in COSTES_SEARCHES:
        raise ValueError(f"costes_search {costes_search!r} is unknown; use 'stepper' (Coloc 2's default) or "
                         f"'bisection'.")
    return costes_search


def value_range(dtype: np.dtype) -> tuple[float, float]:
    """The range of a data type, to which Coloc 2 clamps its thresholds."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    if dtype.kind == "b":
        return 0.0, 1.0
    top = float(np.finfo(dtype).max) if dtype.kind == "f" else np.inf
    return -top, top


def with_levels(thresholds: Thresholds, level1: float, level2: float) -> Thresholds:
    return replace(
        thresholds,
        channel1=replace(thresholds.channel1, level=float(level1)),
        channel2=replace(thresholds.channel2, level=float(level2)),
    )


def shift_values(van_steensel_shifts: Any) -> np.ndarray | None:
    if van_steensel_shifts is None:
        return None
    if not isinstance(van_steensel_shifts, (int, np.integer)) or isinstance(van_steensel_shifts, bool) \
            or van_steensel_shifts < 0:
        raise ValueError(
            f"van_steensel_shifts is {van_steensel_shifts!r}; give the largest shift S as an "
            f"integer >= 0 (voxels; shifts -S..S are computed), or None to skip Van Steensel."
        )
    return np.arange(-int(van_steensel_shifts), int(van_steensel_shifts) + 1)
