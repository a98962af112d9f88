"""Ports of the Apache Commons Math 3.6.1 (and Java) pieces behind the plugin's fit.

The Fiji CCC plugin 2.2.3 fits its Gaussian with Commons Math's GaussianCurveFitter:
the starting point from ``GaussianCurveFitter.ParameterGuesser`` (:func:`commons_math_guess`)
and Levenberg-Marquardt from ``LevenbergMarquardtOptimizer``, a port of MINPACK's
lmder (:func:`minpack_levenberg_marquardt` runs MINPACK itself). Its moving average
takes window means with Java's ``DoubleStream.average()`` (:func:`java_window_means`).
Used by :func:`cccdask.kernels.fit.fit_gaussian` with ``fiji_compat=True``.
"""

from __future__ import annotations

import numpy as np

MAX_ITERATIONS = 100  # the plugin's first fit; its retries allow 50
TOLERANCE = 1e-10  # Commons Math's cost, parameter and orthogonality tolerances
# 2 sqrt(2 ln 2): FWHM / sigma of a Gaussian (the library's expression)
_FWHM_PER_SIGMA = 2 * np.sqrt(2 * np.log(2))


def commons_math_guess(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Height, centre and width as Commons Math 3.6.1's GaussianCurveFitter guesses them.

    A port of ``GaussianCurveFitter.ParameterGuesser``, quirk included. The points
    are sorted by x (then y); height = the largest y (its first occurrence), mean =
    its x. The half-height level is ``ymax + (x_at_ymax - ymax) / 2`` (x and y mixed,
    as in the library). From the peak outward on each side, the first pair of
    neighbours whose y values bracket that level (inclusive) gives the crossing by
    linear interpolation (an end point equal to the level gives its own x); if
    either side has no such pair, the FWHM is the full x span of the points. sigma =
    FWHM / (2 sqrt(2 ln 2)).

    Parameters
    ----------
    x, y : numpy.ndarray
        The fitting points (profile and mirrored tail), any order.

    Returns
    -------
    numpy.ndarray
        height, mean, sigma (sigma may be 0 or negative for degenerate points).
    """
    order = np.lexsort((y, x))
    xs, ys = np.asarray(x, dtype=np.float64)[order], np.asarray(y, dtype=np.float64)[order]
    peak = int(np.argmax(ys))
    height, mean = float(ys[peak]), float(xs[peak])
    level = height + (mean - height) / 2

    def crossing(step):
        # pairs (i, i + step) from the peak outward; p1 is the left point of the pair
        i = np.arange(peak, 0, -1) if step < 0 else np.arange(peak, len(xs) - 1)
        a, b = ys[i], ys[i + step]
        bracket = np.nonzero(((level >= a) & (level <= b)) | ((level >= b) & (level <= a)))[0]
        if len(bracket) == 0:
            return None
        left, right = sorted((int(i[bracket[0]]), int(i[bracket[0]]) + step))
        if ys[left] == level:
            return float(xs[left])
        if ys[right] == level:
            return float(xs[right])
        return float(xs[left] + ((level - ys[left]) * (xs[right] - xs[left])) / (ys[right] - ys[left]))

    lo = crossing(-1)
    hi = crossing(1) if lo is not None else None
    fwhm = hi - lo if hi is not None else float(xs[-1] - xs[0])
    return np.array([height, mean, fwhm / _FWHM_PER_SIGMA])


# Commons Math's model is +inf for sigma <= 0 (the library rejects such a Gaussian);
# MINPACK then rejects the step as Commons Math does (cost up: actual reduction -1,
# step bound times 0.1). A large finite value gives MINPACK exactly that branch
# (its norm of an infinite vector would be NaN).
_REJECTED_RESIDUAL = 1e200


class _IterationLimit(Exception):
    """Commons Math's TooManyIterationsException: the fit gives no result."""


def minpack_levenberg_marquardt(x, y, p0, max_iterations=MAX_ITERATIONS):
    """Unweighted least squares of :func:`gaussian` as Commons Math 3.6.1 solves it.

    Commons Math's LevenbergMarquardtOptimizer is a port of MINPACK's lmder, run here
    by :func:`scipy.optimize.leastsq` (MINPACK itself) with the library's settings:
    initial step bound factor 100, cost, parameter and orthogonality tolerances
    1e-10, scaling by the Jacobian's column norms, no limit on evaluations, the
    library's Gaussian and gradient (any sigma <= 0 is an infinitely bad point).
    Commons Math counts an iteration per Jacobian (MINPACK's outer iteration) and
    throws when iteration ``max_iterations + 1`` begins: no result. MINPACK's own
    stops on too small tolerances (the library throws) give no result either.

    Returns
    -------
    params : numpy.ndarray
        height, mu, sigma (p0 when there is no result).
    converged : bool
        Whether the optimiser returned a result.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    p0 = np.asarray(p0, dtype=np.float64)
    if len(x) < 3 or not np.all(np.isfinite(p0)) or not p0[2] > 0:
        return p0, False  # the library's first evaluation would be infinite

    def residuals(p):
        height, mu, sigma = p
        if not sigma > 0:
            return np.full(len(x), _REJECTED_RESIDUAL)
        diff = x - mu
        return height * np.exp(-diff * diff * (1 / (2 * sigma * sigma))) - y

    jacobians = 0

    def jacobian(p):
        nonlocal jacobians
        jacobians += 1
        # leastsq checks the Jacobian's shape once before MINPACK runs: call 1
        if jacobians > max_iterations + 1:
            raise _IterationLimit
        height, mu, sigma = p
        i2s2 = 1 / (2 * sigma * sigma)
        diff = x - mu
        e = np.exp(-diff * diff * i2s2)
        m = height * e * 2 * i2s2 * diff
        return np.column_stack([e, m, m * diff / sigma])

    from scipy.optimize import leastsq  # here: scipy.optimize is a slow import most runs never need

    try:
        params, _, _, _, info = leastsq(residuals, p0, Dfun=jacobian, full_output=True, ftol=TOLERANCE,
                                        xtol=TOLERANCE, gtol=TOLERANCE, maxfev=2**31 - 1, factor=100.0)
    except _IterationLimit:
        return p0, False
    return np.asarray(params, dtype=np.float64), info in (1, 2, 3, 4)


def java_window_means(data, lo, hi):
    """Java's ``DoubleStream.average()`` of ``data[lo:hi]`` for every window.

    Java sums a stream with Kahan compensation and returns ``(sum - compensation) /
    count`` (JDK 18 and later; the plugin runs on Fiji's Java 21). Windows are summed
    term by term, all windows at once.

    Parameters
    ----------
    data : numpy.ndarray
        float64 values.
    lo, hi : numpy.ndarray
        Window bounds (``hi > lo``), one pair per window.
    """
    n = hi - lo
    order = np.argsort(-n, kind="stable")  # longest windows first: the active ones are a prefix
    lo_sorted, n_sorted = lo[order], n[order]
    total = np.zeros(len(lo))
    compensation = np.zeros(len(lo))
    active = len(lo)
    for j in range(int(n_sorted[0]) if len(n_sorted) else 0):
        while n_sorted[active - 1] <= j:
            active -= 1
        term = data[lo_sorted[:active] + j] - compensation[:active]
        running = total[:active] + term
        compensation[:active] = (running - total[:active]) - term
        total[:active] = running
    means = np.empty(len(lo))
    means[order] = (total - compensation) / n_sorted
    return means
