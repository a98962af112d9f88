"""The Gaussian fit of a radial profile, and the statistics built on it.

The model is ``g(x) = height * exp(-(x - mu)^2 / (2 sigma^2))`` (no offset), fitted by
unweighted Levenberg-Marquardt least squares to the subtracted profile plus its
mirrored tail, as the Fiji plugin does (its Commons-Math GaussianCurveFitter: 100
iterations, 50 for the moving-average retries).

Two flavours share every step (:func:`fit_gaussian`):

* default: a starting guess from the true half maximum (:func:`initial_guess`), an LM
  on the 3x3 normal equations that touches only the points near the peak
  (:func:`levenberg_marquardt`), retries over five moving-average windows until a fit
  is valid;
* ``fiji_compat``: the plugin 2.2.3 exactly: Commons Math 3.6.1's guess, quirk
  included (:func:`commons_math_guess`), MINPACK's lmder with Commons Math's settings
  and iteration limits (:func:`minpack_levenberg_marquardt`), the plugin's retry
  windows (:func:`retry_windows`) and retry conditions, and window means as Java
  computes them.

Both collapse identical moving-average windows into one point (:func:`moving_average`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cccdask.kernels.commons_math import (
    MAX_ITERATIONS,
    commons_math_guess,
    java_window_means,
    minpack_levenberg_marquardt,
)
from cccdask.kernels.least_squares import levenberg_marquardt_loop

RETRY_ITERATIONS = 50
RETRY_WINDOWS = (0.1, 0.2, 0.3, 0.4, 0.5)  # moving-average half widths, in units of s_x


@dataclass(frozen=True)
class GaussianFit:
    """Result of :func:`fit_gaussian`.

    Attributes
    ----------
    mean : float
        Fitted centre mu (physical units; keeps its sign). NaN if the fit failed.
    sigma : float
        Fitted standard deviation, positive (physical units). NaN if failed.
    height : float
        Fitted peak height (correlogram units). NaN if failed.
    ok : bool
        Whether a valid fit was found (plugin's rules: converged, sigma > s_x,
        mu >= -s_x, height >= 0).
    smoothing : float
        Half width of the moving average of the accepted fit (physical units);
        0 without smoothing, NaN if failed.
    """

    mean: float
    sigma: float
    height: float
    ok: bool
    smoothing: float

    @classmethod
    def failed(cls) -> "GaussianFit":
        return cls(np.nan, np.nan, np.nan, False, np.nan)

    def curve(self, x: np.ndarray) -> np.ndarray:
        """The fitted curve at ``x``, evaluated with ``|mean|`` (the plugin's rule)."""
        return gaussian(np.asarray(x, dtype=float), self.height, abs(self.mean), self.sigma)


def gaussian(x, height, mu, sigma):
    """``height * exp(-(x - mu)^2 / (2 sigma^2))``."""
    return height * np.exp(-0.5 * ((x - mu) / sigma) ** 2)


def mirrored_tail(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The profile plus its tail mirrored about the peak (the plugin's fitting points).

    ``keys`` must be ascending and non-negative; the points come back sorted by x.
    maxLoc is the key of the largest value (0 when every value is <= 0 or the largest
    is at the first key); each point with key > 2 maxLoc is added again as
    ``(2 maxLoc - key, value)``.
    """
    peak = int(np.argmax(values))
    max_loc = 0.0 if values[peak] <= 0 or peak == 0 else float(keys[peak])
    tail = keys > 2 * max_loc
    # mirrored keys all lie below 0 <= keys: reversed, they go first and x stays sorted
    x = np.concatenate([(2 * max_loc - keys[tail])[::-1], keys])
    y = np.concatenate([values[tail][::-1], values])
    return x, y


def initial_guess(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Height, centre and width from the maximum and the half-maximum crossings.

    As Commons-Math's GaussianCurveFitter.ParameterGuesser (``x`` sorted): the
    crossings of half the maximum interpolated linearly on each side (the outermost
    point where there is none), sigma = FWHM / (2 sqrt(2 ln 2)).
    """
    xs, ys = x, y
    peak = int(np.argmax(ys))
    height, mu = float(ys[peak]), float(xs[peak])
    half = height / 2

    def crossing(indices):
        below = np.nonzero(ys[indices] < half)[0]
        if len(below) == 0:
            return float(xs[indices[-1]])
        j = indices[below[0]]
        k = indices[below[0] - 1] if below[0] > 0 else peak
        if ys[k] == ys[j]:
            return float(xs[j])
        return float(xs[j] + (half - ys[j]) * (xs[k] - xs[j]) / (ys[k] - ys[j]))

    lo = crossing(np.arange(peak, -1, -1))
    hi = crossing(np.arange(peak, len(xs)))
    fwhm = hi - lo
    sigma = fwhm / (2 * np.sqrt(2 * np.log(2))) if fwhm > 0 else (xs[-1] - xs[0]) / 10
    return np.array([height, mu, sigma if sigma > 0 else 1.0])


# exp(-0.5 * 39**2) underflows to exactly 0 in float64: points farther than 39 sigma
# from mu contribute y**2 to the cost and nothing to its gradient, bit for bit.
SUPPORT_SIGMAS = 39.0


def levenberg_marquardt(x, y, p0, max_iterations=MAX_ITERATIONS):
    """Unweighted least squares of :func:`gaussian` to ``(x, y)``, x sorted ascending.

    :func:`cccdask.kernels.least_squares.levenberg_marquardt_loop` on the 3x3 normal
    equations with the analytic Jacobian (its damping and stopping rules). Each iteration
    touches only the points within 39 sigma of mu (found by bisection): beyond, the
    model is exactly 0 in float64, so the result is that of the full sums while a
    profile of 10^6 points costs as little as its peak.

    Returns
    -------
    params : numpy.ndarray
        height, mu, sigma (sigma may come out negative: the model only sees sigma^2).
    converged : bool
        A tolerance was met within ``max_iterations`` iterations.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    y2_cumulative = np.concatenate([[0.0], np.cumsum(y * y)])
    total_y2 = y2_cumulative[-1]

    def evaluate(params, with_jacobian):
        """Cost (all points), and on the support: residuals and Jacobian rows."""
        h, mu, s = params
        width = SUPPORT_SIGMAS * abs(s)
        lo, hi = np.searchsorted(x, (mu - width, mu + width))
        xs, ys = x[lo:hi], y[lo:hi]
        z = (xs - mu) / s
        e = np.exp(-0.5 * z * z)
        r = h * e - ys
        cost = float(r @ r) + total_y2 - (y2_cumulative[hi] - y2_cumulative[lo])
        if not with_jacobian:
            return cost, None, None
        he_s = h * e / s
        return cost, r, np.stack([e, he_s * z, he_s * z * z])

    p = np.asarray(p0, dtype=np.float64).copy()
    if not np.all(np.isfinite(p)) or p[2] == 0:
        return p, False
    return levenberg_marquardt_loop(evaluate, p, max_iterations)


def retry_windows(pixel_size: float, fiji_compat: bool = False) -> tuple[float, ...]:
    """Half widths of the moving averages tried after an invalid fit (physical units).

    Default: 0.1, 0.2, ..., 0.5 times s_x. ``fiji_compat``: as the plugin accumulates
    them in float64, ``w = s_x/10`` then ``w += s_x/10`` while ``w <= s_x/2``: 4 windows
    for some s_x (0.103: the fifth w is 0.051500000000000004 > 0.0515), else 5.
    """
    if not fiji_compat:
        return tuple(f * pixel_size for f in RETRY_WINDOWS)
    windows, step = [], pixel_size / 10
    w = step
    while w <= pixel_size / 2:
        windows.append(w)
        w += step
    return tuple(windows)


def moving_average(keys: np.ndarray, values: np.ndarray, half_width: float, java_means: bool = False):
    """Smooth a profile: each key's window is the points with keys in [k - w, k + w).

    Every window gives one point: the mean of its keys and the mean of its values.
    Windows holding the same points give that point once (the plugin stores the
    points by their new key), so a refit never counts one window several times.

    Parameters
    ----------
    keys : numpy.ndarray
        Ascending distances (physical units).
    values : numpy.ndarray
        Profile values at ``keys``.
    half_width : float
        w (physical units); the bounds are computed as ``k - w`` and ``k + w`` in
        float64.
    java_means : bool
        Compute each mean as the plugin does (Java's compensated ``average()`` over
        the window) and merge points whose new keys are equal float64 values (the
        plugin's map keeps one of them; here the last). Default: means from prefix
        sums (equal to them to rounding), one point per distinct window.

    Returns
    -------
    keys, values : numpy.ndarray
        The smoothed points, ascending by key.
    """
    keys = np.asarray(keys, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    lo = np.searchsorted(keys, keys - half_width, side="left")
    hi = np.searchsorted(keys, keys + half_width, side="left")
    hi = np.maximum(hi, lo + 1)  # the point itself is always in its window
    # lo and hi never decrease with k: equal windows are neighbours
    distinct = np.ones(len(lo), dtype=bool)
    distinct[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    lo, hi = lo[distinct], hi[distinct]
    if java_means:
        new_keys = java_window_means(keys, lo, hi)
        new_values = java_window_means(values, lo, hi)
    else:
        ck = np.concatenate([[0.0], np.cumsum(keys)])
        cv = np.concatenate([[0.0], np.cumsum(values)])
        n = hi - lo
        new_keys, new_values = (ck[hi] - ck[lo]) / n, (cv[hi] - cv[lo]) / n
    order = np.argsort(new_keys, kind="stable")
    new_keys, new_values = new_keys[order], new_values[order]
    if java_means:
        last = np.ones(len(new_keys), dtype=bool)
        last[:-1] = new_keys[1:] != new_keys[:-1]
        new_keys, new_values = new_keys[last], new_values[last]
    return new_keys, new_values


def _valid(params, pixel_size) -> bool:
    """The plugin's validity rules: a result, sigma > s_x, mu >= -s_x, height >= 0."""
    if params is None or not np.all(np.isfinite(params)):
        return False
    height, mu, sigma = params
    return bool(abs(sigma) > pixel_size and mu >= -pixel_size and height >= 0)


def _plugin_retries(params, pixel_size) -> bool:
    """The plugin's retry loop condition: no result, sigma <= s_x or mu < 0."""
    return params is None or params[2] <= pixel_size or params[1] < 0


def fit_gaussian(keys: np.ndarray, values: np.ndarray, pixel_size: float,
                 fiji_compat: bool = False) -> GaussianFit:
    """Fit the plugin's Gaussian to a subtracted radial profile.

    The first fit (100 iterations) uses the whole profile; when it is invalid (no
    result, sigma <= s_x, mu < -s_x or height < 0) the fit is retried (50 iterations
    each) on the profile smoothed by :func:`moving_average` with the windows of
    :func:`retry_windows`, each time from the unsmoothed profile.

    Parameters
    ----------
    keys : numpy.ndarray
        Distances, ascending (physical units).
    values : numpy.ndarray
        Subtracted profile at ``keys``.
    pixel_size : float
        s_x, the voxel size along x (physical units): sets the validity rules and the
        moving-average windows of the retries.
    fiji_compat : bool
        The plugin 2.2.3 exactly: Commons Math's guess and optimiser
        (:func:`commons_math_guess`, :func:`minpack_levenberg_marquardt`), its
        windows, Java's window means, and its retry loop: retries run while there is
        no result, sigma <= s_x or mu < 0 (a fit invalid from height < 0 alone is not
        retried), a retry without result keeps the previous result, and the last
        result is judged by the validity rules. Default: :func:`initial_guess` and
        :func:`levenberg_marquardt`, retries until the first valid fit.

    Returns
    -------
    GaussianFit
        ``ok=False`` with NaN parameters when no valid fit was found (never raises
        for a profile that cannot be fitted).
    """
    keys = np.asarray(keys, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    keys, values = keys[finite], values[finite]
    if len(keys) < 3 or not np.any(values > 0):
        return GaussianFit.failed()
    guess, optimise = ((commons_math_guess, minpack_levenberg_marquardt) if fiji_compat
                       else (initial_guess, levenberg_marquardt))

    def attempt(k, v, iterations):
        """The fitted parameters, or None without a result."""
        x, y = mirrored_tail(k, v)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            params, converged = optimise(x, y, guess(x, y), iterations)
        return params if converged else None

    params, smoothing = attempt(keys, values, MAX_ITERATIONS), 0.0
    if not _valid(params, pixel_size):
        for half_width in retry_windows(pixel_size, fiji_compat):
            if fiji_compat and not _plugin_retries(params, pixel_size):
                break
            retried = attempt(*moving_average(keys, values, half_width, java_means=fiji_compat),
                              RETRY_ITERATIONS)
            if retried is not None or not fiji_compat:
                params, smoothing = retried, half_width
            if not fiji_compat and _valid(params, pixel_size):
                break
    if not _valid(params, pixel_size):
        return GaussianFit.failed()
    height, mu, sigma = params
    return GaussianFit(float(mu), float(abs(sigma)), float(height), True, float(smoothing))


def fit_window(keys: np.ndarray, fit: GaussianFit, closed_right: bool) -> np.ndarray:
    """Keys within three sigma of the mean: open ``(mu-3s, mu+3s)`` or ``[mu-3s, mu+3s)``."""
    lo, hi = fit.mean - 3 * fit.sigma, fit.mean + 3 * fit.sigma
    left = keys >= lo if closed_right else keys > lo
    return left & (keys < hi)


def confidence(keys, subtracted, original, fit: GaussianFit) -> float:
    """Sum of the subtracted over the original profile, keys strictly within mu +- 3 sigma.

    Plain sums over keys (no spacing or voxel-count weights), as the plugin computes
    its areas under the curves. NaN for a failed fit or an empty window.
    """
    if not fit.ok:
        return np.nan
    inside = fit_window(keys, fit, closed_right=False)
    denominator = float(np.sum(original[inside]))
    if not inside.any() or denominator == 0:
        return np.nan
    return float(np.sum(subtracted[inside]) / denominator)


def r_squared(keys, subtracted, fit: GaussianFit) -> float:
    """1 - SS_res / SS_tot of the fit over keys in [mu - 3 sigma, mu + 3 sigma)."""
    if not fit.ok:
        return np.nan
    inside = fit_window(keys, fit, closed_right=True)
    return coefficient_of_determination(np.asarray(subtracted, dtype=np.float64)[inside], fit.curve(keys[inside]))


def coefficient_of_determination(observed: np.ndarray, predicted: np.ndarray) -> float:
    """1 - SS_res / SS_tot; NaN for fewer than 2 values or no spread in ``observed``."""
    if len(observed) < 2:
        return np.nan
    ss_tot = float(np.sum((observed - observed.mean()) ** 2))
    if ss_tot == 0:
        return np.nan
    return float(1 - np.sum((observed - predicted) ** 2) / ss_tot)
