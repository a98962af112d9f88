"""The Levenberg-Marquardt loop shared by the single-Gaussian and the sum-of-Gaussians fits.

The caller supplies the residuals and their Jacobian (:func:`levenberg_marquardt_loop`);
the loop owns the damping, the step and the stopping rules. One loop serves
:func:`cccdask.kernels.fit.levenberg_marquardt` (3 parameters, points near the peak only)
and :func:`cccdask.kernels.multifit.joint_fit` (3n parameters, bounds by
reparametrisation), so both stop by the same rules.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from cccdask.kernels.commons_math import TOLERANCE

# evaluate(q, with_jacobian) -> (cost, residuals, jacobian); residuals and jacobian
# may be None when with_jacobian is False.
Evaluate = Callable[[np.ndarray, bool], tuple]


def levenberg_marquardt_loop(evaluate: Evaluate, start: np.ndarray, max_iterations: int):
    """Minimise a sum of squares by Levenberg-Marquardt from ``start``.

    Marquardt's diagonal scaling of the normal equations, Nielsen's damping update
    (initial damping 1e-3, shrunk by ``max(1/3, 1 - (2 rho - 1)^3)`` after an accepted
    step, grown 2x, 4x, 8x ... after rejected ones); convergence when the actual and
    predicted relative reductions of the cost are both below 1e-10, or the relative
    step is (Commons-Math's and MINPACK's tolerances), or when a rejected step's
    predicted reduction is already below 1e-10 of the cost (at a minimum to the
    cost tolerance).

    Parameters
    ----------
    evaluate : callable
        ``evaluate(q, with_jacobian)`` returns ``(cost, r, jac)``: the sum of squares
        at the parameters ``q``, and with ``with_jacobian`` the residuals ``r`` (shape
        ``(N,)``, model minus data) and their Jacobian ``jac`` (shape ``(k, N)``, one row
        per parameter) over the points that carry a gradient. ``cost`` may cover more
        points than ``r`` (points where the model is exactly 0 add a constant).
    start : numpy.ndarray
        The k starting parameters.
    max_iterations : int
        Steps tried at most (accepted or not).

    Returns
    -------
    params : numpy.ndarray
        The last accepted parameters.
    converged : bool
        A tolerance was met within ``max_iterations``; False also when the damped
        normal equations are singular.
    """
    q = np.asarray(start, dtype=np.float64).copy()
    cost, r, jac = evaluate(q, True)
    damping, growth = 1e-3, 2.0
    for _ in range(max_iterations):
        a = jac @ jac.T
        g = jac @ r
        scale = np.maximum(np.diag(a), 1e-300)
        try:
            step = np.linalg.solve(a + damping * np.diag(scale), -g)
        except np.linalg.LinAlgError:
            return q, False
        trial = q + step
        trial_cost, _, _ = evaluate(trial, False)
        # reduction the linear model predicts: -(2 g.step + step.A.step)
        predicted = -(2 * g @ step + step @ a @ step)
        actual = cost - trial_cost
        if np.isfinite(trial_cost) and actual > 0 and predicted > 0:
            rho = actual / predicted
            damping *= max(1 / 3, 1 - (2 * rho - 1) ** 3)
            growth = 2.0
            small_step = np.all(np.abs(step) <= TOLERANCE * (np.abs(trial) + TOLERANCE))
            q = trial
            if (actual <= TOLERANCE * cost and predicted <= TOLERANCE * cost) or small_step:
                return q, True
            cost, r, jac = evaluate(q, True)
        else:
            if predicted <= TOLERANCE * cost:
                return q, True  # at a minimum to the cost tolerance: no step can lower it
            damping *= growth
            growth *= 2
    return q, False
