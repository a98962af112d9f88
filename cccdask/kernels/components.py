"""Per-frame outputs of the sum-of-Gaussians fit (``n_gaussians >= 2`` or ``"auto"``).

One frame's profiles in, named arrays out: the components over a ``component`` dim,
the sum model, and the model-choice table over an ``n_components`` dim. Pure NumPy;
:func:`cccdask.kernels.ccc.analyse_correlograms` calls it instead of the
single-Gaussian statistics when more than one Gaussian is asked for.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np

from cccdask.kernels.fit import GaussianFit
from cccdask.kernels.multifit import (
    NOT_SELECTED,
    STATUS_MEANINGS,
    component_confidence,
    contribution_weight,
    fit_gaussian_sums,
    select_by_bic,
    sum_r_squared,
)

MAX_GAUSSIANS = 3  # default largest number of components tried by "auto"

# dims (without t) of the outputs that differ from the single-Gaussian ones
COMPONENT_DIMS = {
    "mean": ("component",),
    "sigma": ("component",),
    "height": ("component",),
    "confidence": ("component",),
    "fit_ok": ("component",),
    "component_status": ("component",),
    "profile_fit_component": ("component", "distance"),
    "rss": ("n_components",),
    "bic": ("n_components",),
    "aic": ("n_components",),
    "n_selected": (),
}
COMPONENT_DESCRIPTIONS = {
    "profile_fit": "sum of the supported Gaussian components, evaluated at each distance",
    "profile_fit_component": "each Gaussian component at each distance (NaN for a failed component)",
    "component_status": "why a component failed (0 = supported); see flag_meanings",
    "confidence": "per component (plugin 2.3.0): sum of Gaussian i over sum of the original profile, "
                  "keys strictly within mean_i +- 3 sigma_i",
    "r_squared": "R^2 of the sum model over keys in [mean_1 - 3 sigma_1, mean_1 + 3 sigma_1) of component 1",
    "rss": "residual sum of squares of the model with n_components Gaussians over the profile points",
    "bic": "BIC N ln(RSS/N) + k ln N of the model with n_components Gaussians (k = 3 x supported components)",
    "aic": "AIC N ln(RSS/N) + 2k of the model with n_components Gaussians",
    "n_selected": "number of Gaussians of the reported model (n_gaussians, or the BIC choice for 'auto')",
}
STATUS_ATTRS = {
    "flag_values": list(range(len(STATUS_MEANINGS))),
    "flag_meanings": " ".join(m.split(":")[0] for m in STATUS_MEANINGS),
    "flag_descriptions": list(STATUS_MEANINGS),
}


def component_count(n_gaussians, max_gaussians: int = MAX_GAUSSIANS) -> tuple[int, bool]:
    """Validate ``n_gaussians``; return the number of components reported and whether "auto".

    Raises
    ------
    ValueError
        Neither a positive integer nor "auto", or a maximum below 1.
    """
    if isinstance(n_gaussians, str) and n_gaussians == "auto":
        if not (isinstance(max_gaussians, Integral) and not isinstance(max_gaussians, bool) and max_gaussians >= 1):
            raise ValueError(f"max_gaussians must be a whole number >= 1, not {max_gaussians!r}.")
        return int(max_gaussians), True
    if isinstance(n_gaussians, Integral) and not isinstance(n_gaussians, bool) and n_gaussians >= 1:
        return int(n_gaussians), False
    raise ValueError(
        f"n_gaussians must be a whole number >= 1 (the Gaussians fitted to the profile) or 'auto' "
        f"(choose 1..max_gaussians by BIC), not {n_gaussians!r}."
    )


def component_outputs(keys, subtracted, original, first: GaussianFit, n: int, auto: bool,
                      pixel_size: float) -> dict[str, np.ndarray]:
    """The n-Gaussian outputs of one frame.

    Parameters
    ----------
    keys : numpy.ndarray
        The profile's distances.
    subtracted : numpy.ndarray
        The subtracted profile.
    original : numpy.ndarray or None
        The original profile (None without confidence: no ``confidence`` output).
    first : GaussianFit
        The single-Gaussian fit of ``subtracted`` (the first starting value).
    n : int
        Components reported; with ``auto`` the largest number tried.
    auto : bool
        Report the fit with the smallest BIC (:func:`select_by_bic`), else the one with n.
    pixel_size : float
        s_x (physical units).

    Returns
    -------
    dict of numpy.ndarray
        See :data:`COMPONENT_DIMS`, plus ``profile_fit`` and ``r_squared``; the
        fitted :class:`GaussianSumFit` under ``"_fit"`` (for the contribution weight).
    """
    fits = fit_gaussian_sums(keys, subtracted, n, pixel_size, first=first)
    chosen = select_by_bic(fits) if auto else n - 1
    fit = fits[chosen].padded(n, NOT_SELECTED)
    out = {
        "profile_fit": fit.curve(keys),
        "profile_fit_component": fit.components(keys),
        "mean": fit.mean, "sigma": fit.sigma, "height": fit.height,
        "r_squared": sum_r_squared(keys, subtracted, fit),
        "fit_ok": fit.ok,
        "component_status": fit.status,
        "rss": np.array([f.rss for f in fits]),
        "bic": np.array([f.bic for f in fits]),
        "aic": np.array([f.aic for f in fits]),
        "n_selected": np.int64(chosen + 1),
        "_fit": fit,
    }
    if original is not None:
        out["confidence"] = component_confidence(keys, original, fit)
    return out


def weighted_correlogram(subtracted: np.ndarray, distance_grid: np.ndarray, fit) -> np.ndarray:
    """G for the contribution images: S times 2.3.0's weight ``sum_i G_i(d) / sum_i h_i``."""
    return (subtracted * contribution_weight(distance_grid, fit)).astype(subtracted.dtype, copy=False)
