"""A sum of n Gaussians fitted to a subtracted radial profile (the plugin 2.3.0's model).

The model is ``f(x) = sum_i h_i exp(-(x - mu_i)^2 / (2 sigma_i^2))``. The fit:

1. Starting values: sequential single-Gaussian fits (:func:`cccdask.kernels.fit.fit_gaussian`,
   the 2.2.3 procedure with its mirrored tail and smoothing retries), each on the
   profile minus the curves already fitted. The first is the ``n = 1`` fit itself.
2. A joint, unweighted least-squares fit of all 3m parameters over the profile's
   points (Levenberg-Marquardt, analytic Jacobian) with ``h_i >= 0`` and
   ``sigma_i > 0`` enforced by reparametrisation. Unlike 2.3.0 the joint fit does not add the
   mirrored tail: mirrored about the highest peak, every other population leaves a
   ghost peak at ``2 maxLoc - d`` that a sum model would have to fit.
3. Each component is checked (:func:`component_status`); one that the data do not
   support is dropped with a reason (:data:`STATUS_MEANINGS`) and the others are
   refitted jointly without it, until every remaining component passes. A dropped
   component reports NaN values.
4. Components are sorted by mean; failed ones come last.

Every number of components m = 1..n is fitted from the same starting values, and
each reports its residual sum of squares and its BIC and AIC over the N profile
points (``N ln(RSS / N) + k ln N`` and ``N ln(RSS / N) + 2k``, k = 3 x the
components kept), so that a user can see whether more components are warranted;
:func:`select_by_bic` picks the smallest BIC among the fits whose components are
all supported. (Profile points are not independent, so BIC over N of them favours
more components; the checks of step 3 do the rejecting.)

Statistics (2.3.0's definitions): confidence_i = sum of G_i over the keys in the
open interval ``mu_i +- 3 sigma_i`` divided by the sum of the original profile over
the same keys; R^2 of the sum model over the keys in ``[mu_1 - 3 sigma_1,
mu_1 + 3 sigma_1)`` of component 1 (the smallest mean); contribution weight
``sum_i G_i(d) / sum_i h_i``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cccdask.kernels.fit import (SUPPORT_SIGMAS, MAX_ITERATIONS, GaussianFit, coefficient_of_determination,
                                 fit_gaussian, moving_average)
from cccdask.kernels.least_squares import levenberg_marquardt_loop

# Component status codes (``component_status``): 0 is a supported component.
OK = 0
NO_START = 1
NO_HEIGHT = 2
TOO_NARROW = 3
MEAN_OUTSIDE = 4
NOT_SEPARABLE = 5
NOT_CONVERGED = 6
NOT_SELECTED = 7
STATUS_MEANINGS = (
    "ok",
    "no_start: no peak left in the profile minus the components already fitted",
    "no_height: height not 4x above the profile's noise at the component's own scale",
    "too_narrow: sigma not above the smallest distance step of the profile",
    "mean_outside: mean outside the profile's distances",
    "not_separable: closer to a stronger component than the sum of their sigmas",
    "not_converged: the joint fit did not converge",
    "not_selected: beyond the number of components chosen by BIC",
)
# A component must stand this many times above the residual scatter at its own scale
# (the RMS, within 10 sigma of its mean, of the residual smoothed over +-sigma).
MIN_HEIGHT_OVER_RESIDUAL = 4.0


@dataclass(frozen=True)
class GaussianSumFit:
    """A fitted sum of Gaussians (:func:`fit_gaussian_sums`).

    Attributes
    ----------
    mean, sigma, height : numpy.ndarray
        One per component, sorted by mean, failed components last with NaN
        (mean and sigma in the profile's physical units, height in its units).
    status : numpy.ndarray
        int8 code per component (:data:`STATUS_MEANINGS`; 0 = supported).
    rss : float
        Residual sum of squares of the sum of the supported components over every
        profile point.
    n_points : int
        Number of profile points fitted (N of the information criteria).
    """

    mean: np.ndarray
    sigma: np.ndarray
    height: np.ndarray
    status: np.ndarray
    rss: float
    n_points: int

    @property
    def ok(self) -> np.ndarray:
        """Whether each component is supported by the data."""
        return self.status == OK

    @property
    def n_parameters(self) -> int:
        return 3 * int(np.count_nonzero(self.ok))

    @property
    def bic(self) -> float:
        """Bayesian information criterion ``N ln(RSS/N) + k ln N`` (k = 3 x supported components)."""
        return _criterion(self.rss, self.n_points, self.n_parameters * np.log(max(self.n_points, 1)))

    @property
    def aic(self) -> float:
        """Akaike information criterion ``N ln(RSS/N) + 2k``."""
        return _criterion(self.rss, self.n_points, 2.0 * self.n_parameters)

    def components(self, x: np.ndarray) -> np.ndarray:
        """Each component at ``x``: shape ``(n, len(x))``, NaN rows for failed components."""
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(under="ignore"):
            return self.height[:, None] * np.exp(-0.5 * ((x[None, :] - self.mean[:, None]) / self.sigma[:, None]) ** 2)

    def curve(self, x: np.ndarray) -> np.ndarray:
        """The sum model at ``x`` (supported components only); NaN when none is supported."""
        x = np.asarray(x, dtype=np.float64)
        if not self.ok.any():
            return np.full(x.shape, np.nan)
        return np.sum(self.components(x)[self.ok], axis=0)

    def padded(self, n: int, status: int = NOT_SELECTED) -> "GaussianSumFit":
        """The same fit with failed components of code ``status`` appended up to ``n``."""
        extra = n - len(self.mean)
        if extra <= 0:
            return self
        nan = np.full(extra, np.nan)
        return GaussianSumFit(
            np.concatenate([self.mean, nan]), np.concatenate([self.sigma, nan]),
            np.concatenate([self.height, nan]),
            np.concatenate([self.status, np.full(extra, status, dtype=np.int8)]),
            self.rss, self.n_points,
        )


def _criterion(rss: float, n_points: int, penalty: float) -> float:
    if n_points == 0 or not np.isfinite(rss):
        return np.nan
    with np.errstate(divide="ignore"):
        return float(n_points * np.log(rss / n_points) + penalty)


def gaussian_sum(x: np.ndarray, params: np.ndarray) -> np.ndarray:
    """``sum_i h_i exp(-(x - mu_i)^2 / (2 sigma_i^2))`` for ``params`` rows (h, mu, sigma)."""
    params = np.asarray(params, dtype=np.float64).reshape(-1, 3)
    out = np.zeros(np.shape(x))
    with np.errstate(under="ignore"):
        for h, mu, s in params:
            out = out + h * np.exp(-0.5 * ((x - mu) / s) ** 2)
    return out


def _model_and_jacobian(x: np.ndarray, params: np.ndarray, with_jacobian: bool = True):
    """The sum model at ``x`` and its Jacobian (N x 3m, columns h, mu, sigma per component)."""
    h, mu, s = params[0::3], params[1::3], params[2::3]
    z = (x[:, None] - mu) / s
    with np.errstate(under="ignore"):
        e = np.exp(-0.5 * z * z)
    if not with_jacobian:
        return e @ h, None
    jac = np.empty((len(x), len(params)))
    he_s = e * (h / s)
    jac[:, 0::3] = e  # d/dh
    jac[:, 1::3] = he_s * z  # d/dmu
    jac[:, 2::3] = he_s * z * z  # d/dsigma
    return e @ h, jac


def _bounded(q: np.ndarray, sigma_floor: float):
    """Parameters from the free variables: h = u^2 >= 0, sigma = floor + w^2 > 0; and dp/dq."""
    p = q.copy()
    p[0::3] = q[0::3] ** 2
    p[2::3] = sigma_floor + q[2::3] ** 2
    dp_dq = np.ones_like(q)
    dp_dq[0::3] = 2 * q[0::3]
    dp_dq[2::3] = 2 * q[2::3]
    return p, dp_dq


def _levenberg_marquardt(x, y, p0, sigma_floor, max_iterations):
    """Unweighted least squares of the sum model, bounds by reparametrisation.

    :func:`cccdask.kernels.least_squares.levenberg_marquardt_loop` (the single fit's
    damping and stopping rules) on the 3m x 3m normal equations in the free variables
    of :func:`_bounded`. Returns the parameters (h, mu, sigma per component, flat)
    and whether the loop converged.
    """
    q = p0.copy()
    q[0::3] = np.sqrt(np.maximum(p0[0::3], 0.0))
    q[2::3] = np.sqrt(np.maximum(p0[2::3] - sigma_floor, 0.0))

    def evaluate(q, with_jacobian):
        p, dp_dq = _bounded(q, sigma_floor)
        model, jac = _model_and_jacobian(x, p, with_jacobian)
        r = model - y
        return float(r @ r), r, ((jac * dp_dq).T if with_jacobian else None)

    q, converged = levenberg_marquardt_loop(evaluate, q, max_iterations)
    return _bounded(q, sigma_floor)[0], converged


def joint_fit(keys: np.ndarray, values: np.ndarray, start: np.ndarray, min_sigma: float):
    """Least squares of :func:`gaussian_sum` to ``(keys, values)`` from ``start``.

    Levenberg-Marquardt with the analytic Jacobian; heights ``>= 0`` and sigmas
    ``> min_sigma / 1000`` by reparametrisation (``h = u^2``, ``sigma = floor + w^2``).
    Only the keys within 39 sigma of some component are used (beyond, every
    component is exactly 0 in float64); the window is widened and the fit rerun
    until the fitted components lie inside it, so the result is that of the whole
    profile.

    Parameters
    ----------
    keys, values : numpy.ndarray
        The profile, keys ascending.
    start : numpy.ndarray
        Shape ``(m, 3)``: height, mean, sigma per component.
    min_sigma : float
        The profile's smallest distance step (sets the sigma floor).

    Returns
    -------
    params : numpy.ndarray
        Shape ``(m, 3)``.
    converged : bool
    """
    start = np.asarray(start, dtype=np.float64).reshape(-1, 3)
    scale = float(np.max(np.abs(values))) or 1.0  # fit in units of the largest value
    floor = min_sigma * 1e-3
    p = start.copy()
    p[:, 0] = np.maximum(p[:, 0] / scale, 0.0)
    p[:, 2] = np.maximum(np.abs(p[:, 2]), min_sigma)
    window = _support(p)
    converged = False
    for _ in range(6):
        lo, hi = np.searchsorted(keys, window)
        x, y = keys[lo:hi], values[lo:hi] / scale
        if len(x) < 3 * len(p):
            x, y = keys, values / scale
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            fitted, converged = _levenberg_marquardt(x, y, p.ravel(), floor, MAX_ITERATIONS * len(p))
        p = fitted.reshape(-1, 3)
        support = _support(p)
        if not np.all(np.isfinite(support)) or (support[0] >= window[0] and support[1] <= window[1]):
            break
        window = (min(window[0], support[0]), max(window[1], support[1]))
    p = p.copy()
    p[:, 0] *= scale
    return p, bool(converged)


def _support(params: np.ndarray) -> tuple[float, float]:
    """Keys beyond which every component is exactly 0 in float64."""
    mu, s = params[:, 1], np.abs(params[:, 2])
    return float(np.min(mu - SUPPORT_SIGMAS * s)), float(np.max(mu + SUPPORT_SIGMAS * s))


def sequential_starts(keys: np.ndarray, values: np.ndarray, n: int, pixel_size: float,
                      first: GaussianFit | None = None) -> np.ndarray:
    """Starting values: single-Gaussian fits, each of the profile minus those before it.

    Parameters
    ----------
    keys, values : numpy.ndarray
        The subtracted profile (keys ascending, values finite).
    n : int
        Number of components wanted.
    pixel_size : float
        s_x, for :func:`cccdask.kernels.fit.fit_gaussian`.
    first : GaussianFit, optional
        The single fit of ``values`` when already known (saves refitting it).

    Returns
    -------
    numpy.ndarray
        Shape ``(m, 3)`` with m <= n rows (height, mean, sigma): it stops at the first
        residual that has no valid single fit.
    """
    residual = np.asarray(values, dtype=np.float64).copy()
    starts = []
    for i in range(n):
        fit = first if (i == 0 and first is not None) else fit_gaussian(keys, residual, pixel_size)
        if not fit.ok:
            break
        starts.append((fit.height, abs(fit.mean), fit.sigma))
        residual -= fit.curve(keys)
    return np.asarray(starts, dtype=np.float64).reshape(-1, 3)


def residual_scatter(keys: np.ndarray, residual: np.ndarray, mean: float, sigma: float) -> float:
    """The scatter a bump of width ``sigma`` at ``mean`` has to stand out from.

    The RMS, within ``10 sigma`` of ``mean``, of the residual smoothed over ``+-sigma``
    (moving average over keys). Profile points at neighbouring distances share their
    noise (they average overlapping structures), so the point-to-point scatter is not
    the noise of a fitted height; the residual averaged at the component's own scale is.
    """
    smooth_keys, smooth = moving_average(keys, residual, sigma)  # one point per distinct window
    near = np.abs(smooth_keys - mean) < 10 * sigma
    return float(np.sqrt(np.mean(smooth[near] ** 2))) if near.any() else np.inf


def component_status(params: np.ndarray, keys: np.ndarray, values: np.ndarray, min_sigma: float) -> np.ndarray:
    """Status code per component of a joint fit (0 = supported); at most one failure reported.

    The first failing rule, in order of the components' heights (weakest first),
    fails that one component: the others are refitted without it before they are
    judged again.
    """
    status = np.zeros(len(params), dtype=np.int8)
    h, mu, s = params[:, 0], params[:, 1], params[:, 2]
    residual = values - gaussian_sum(keys, params)
    for i in np.argsort(h, kind="stable"):
        stronger = (h > h[i]) | ((h == h[i]) & (np.arange(len(h)) < i))
        too_close = stronger & (np.abs(mu - mu[i]) < s + s[i])
        if not np.all(np.isfinite(params[i])):
            status[i] = NOT_CONVERGED
        elif s[i] <= min_sigma:
            status[i] = TOO_NARROW
        elif not (keys[0] - min_sigma <= mu[i] <= keys[-1]):
            status[i] = MEAN_OUTSIDE
        elif too_close.any():
            status[i] = NOT_SEPARABLE
        elif not h[i] > MIN_HEIGHT_OVER_RESIDUAL * residual_scatter(keys, residual, mu[i], s[i]):
            status[i] = NO_HEIGHT
        if status[i]:
            return status
    return status


def _fit_m(keys, values, starts, m, min_sigma, total_y2) -> GaussianSumFit:
    """Joint fit of the first ``m`` starting values, dropping unsupported components."""
    status = np.full(m, NO_START, dtype=np.int8)
    alive = np.arange(min(m, len(starts)))
    params = starts[: len(alive)].copy()
    fitted = np.full((m, 3), np.nan)
    while len(alive):
        params, converged = joint_fit(keys, values, params, min_sigma)
        codes = component_status(params, keys, values, min_sigma)
        if not converged and not codes.any():
            codes[:] = NOT_CONVERGED
        if not codes.any():
            fitted[alive] = params
            status[alive] = OK
            break
        dropped = codes != 0
        status[alive[dropped]] = codes[dropped]
        alive, params = alive[~dropped], params[~dropped]
    ok = status == OK
    rss = float(np.sum((values - gaussian_sum(keys, fitted[ok])) ** 2)) if ok.any() else total_y2
    order = np.lexsort((np.arange(m), fitted[:, 1], ~ok))  # supported by mean, then failed
    return GaussianSumFit(fitted[order, 1], fitted[order, 2], fitted[order, 0], status[order], rss, len(keys))


def fit_gaussian_sums(keys: np.ndarray, values: np.ndarray, max_n: int, pixel_size: float,
                      first: GaussianFit | None = None) -> list[GaussianSumFit]:
    """Joint fits of 1, 2, ..., ``max_n`` Gaussians to a subtracted profile.

    Parameters
    ----------
    keys : numpy.ndarray
        Distances, ascending (physical units).
    values : numpy.ndarray
        Subtracted profile at ``keys``; non-finite points are left out.
    max_n : int
        Largest number of components (>= 1).
    pixel_size : float
        s_x (physical units), for the sequential single fits.
    first : GaussianFit, optional
        The ``n = 1`` fit of this profile when already computed.

    Returns
    -------
    list of GaussianSumFit
        Entry m - 1 has m components. Never raises for a profile that cannot be
        fitted: its components are failed with a reason.
    """
    if max_n < 1:
        raise ValueError(f"the number of Gaussians must be at least 1, not {max_n}.")
    keys = np.asarray(keys, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values) & np.isfinite(keys)
    keys, values = keys[finite], values[finite]
    total_y2 = float(values @ values)
    if len(keys) < 4 or not np.any(values > 0):
        starts = np.empty((0, 3))
        min_sigma = np.inf
    else:
        min_sigma = float(keys[1] - keys[0])  # 2.3.0's smallest meaningful width
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            starts = sequential_starts(keys, values, max_n, pixel_size, first)
    return [_fit_m(keys, values, starts, m, min_sigma, total_y2) for m in range(1, max_n + 1)]


def select_by_bic(fits: list[GaussianSumFit]) -> int:
    """Index of the fit ``"auto"`` reports: the smallest BIC among the complete fits.

    A fit is complete when every one of its components is supported; one with a
    failed component is a smaller model already in the list. Ties keep the fewest
    components; 0 when no fit is complete.
    """
    bic = np.array([f.bic if f.ok.all() else np.nan for f in fits], dtype=float)
    if not np.isfinite(bic).any():
        return 0
    return int(np.argmin(np.where(np.isfinite(bic), bic, np.inf)))


def component_confidence(keys: np.ndarray, original: np.ndarray, fit: GaussianSumFit) -> np.ndarray:
    """2.3.0's confidence per component: sum of G_i over sum of the original profile.

    Both sums run over the keys in the open interval ``mu_i +- 3 sigma_i`` (plain
    sums over keys). NaN for a failed component or an empty window.
    """
    keys = np.asarray(keys, dtype=np.float64)
    original = np.asarray(original, dtype=np.float64)
    curves = fit.components(keys)
    out = np.full(len(fit.mean), np.nan)
    for i in np.flatnonzero(fit.ok):
        inside = (keys > fit.mean[i] - 3 * fit.sigma[i]) & (keys < fit.mean[i] + 3 * fit.sigma[i])
        denominator = float(np.sum(original[inside]))
        if inside.any() and denominator != 0:
            out[i] = float(np.sum(curves[i, inside]) / denominator)
    return out


def sum_r_squared(keys: np.ndarray, subtracted: np.ndarray, fit: GaussianSumFit) -> float:
    """1 - SS_res / SS_tot of the sum model over component 1's ``[mu - 3 sigma, mu + 3 sigma)``.

    Component 1 is the supported component with the smallest mean. NaN without one.
    """
    if not fit.ok.any():
        return np.nan
    mu, s = fit.mean[0], fit.sigma[0]
    keys = np.asarray(keys, dtype=np.float64)
    inside = (keys >= mu - 3 * s) & (keys < mu + 3 * s)
    return coefficient_of_determination(np.asarray(subtracted, dtype=np.float64)[inside], fit.curve(keys[inside]))


def contribution_weight(distance: np.ndarray, fit: GaussianSumFit) -> np.ndarray:
    """2.3.0's weight of the contribution images: ``sum_i G_i(d) / sum_i h_i`` (supported i).

    For one component it is ``exp(-(d - mu)^2 / (2 sigma^2))``, the 2.2.3 weight.
    Zeros when no component is supported.
    """
    distance = np.asarray(distance, dtype=np.float64)
    ok = fit.ok
    if not ok.any():
        return np.zeros(distance.shape)
    weight = np.zeros(distance.shape)
    with np.errstate(under="ignore"):
        for h, mu, s in zip(fit.height[ok], fit.mean[ok], fit.sigma[ok]):
            weight += h * np.exp(-0.5 * ((distance - mu) / s) ** 2)
    return weight / float(np.sum(fit.height[ok]))
