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
        "all R in the mask (tM1); ICQ counts zero products as positive; Costes: orthogonal "
        "regression, highest threshold with r-below <= 0. Weights, object set and "
        "intersection use the same above-threshold test."
    ),
    "jacop": (
        "JACoP conventions: values are not background-corrected (v' = v); above threshold "
        "means v > T; m1 = sum of R where R and G are above their thresholds / sum of R above "
        "its own threshold; ICQ counts positive products; Costes: ordinary least squares, "
        "threshold at the global minimum of r-below."
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
    costes_regression : {"orthogonal", "ols"}
    costes_rule : {"first_nonpositive", "minimum"}
        Costes: the highest threshold with r-below <= 0, or the global minimum (JACoP).
    """

    subtract: bool
    inclusive: bool
    manders: str
    icq_zero_positive: bool
    costes_regression: str
    costes_rule: str


PRESETS = {
    "huygens": Preset(True, False, "all", False, "orthogonal", "first_nonpositive"),
    "coloc2": Preset(False, True, "all", True, "orthogonal", "first_nonpositive"),
    "jacop": Preset(False, False, "own", False, "ols", "minimum"),
    "skimage": Preset(False, False, "all", False, "orthogonal", "first_nonpositive"),
}


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
