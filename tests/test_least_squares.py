"""The Levenberg-Marquardt loop that the single and the sum-of-Gaussians fits share."""

import numpy as np
from scipy.optimize import least_squares

from cccdask.kernels.least_squares import levenberg_marquardt_loop


def _problem(model_and_jacobian, y):
    def evaluate(q, with_jacobian):
        model, jac = model_and_jacobian(q)
        r = model - y
        return float(r @ r), r, (jac if with_jacobian else None)
    return evaluate


def test_linear_problem_reaches_the_normal_equations_solution():
    rng = np.random.default_rng(0)
    design = rng.normal(size=(50, 4))
    y = design @ np.array([1.0, -2.0, 0.5, 3.0]) + rng.normal(scale=0.1, size=50)
    q, converged = levenberg_marquardt_loop(_problem(lambda q: (design @ q, design.T), y), np.zeros(4), 100)
    assert converged
    np.testing.assert_allclose(q, np.linalg.lstsq(design, y, rcond=None)[0], rtol=1e-7, atol=1e-9)


def test_nonlinear_problem_matches_minpack():
    t = np.linspace(0, 4, 60)
    rng = np.random.default_rng(1)
    y = 2.5 * np.exp(-1.3 * t) + 0.4 + rng.normal(scale=0.02, size=t.size)

    def model_and_jacobian(q):
        a, k, c = q
        e = np.exp(-k * t)
        return a * e + c, np.stack([e, -a * t * e, np.ones_like(t)])

    q, converged = levenberg_marquardt_loop(_problem(model_and_jacobian, y), np.array([1.0, 0.5, 0.0]), 100)
    assert converged
    reference = least_squares(lambda q: model_and_jacobian(q)[0] - y, [1.0, 0.5, 0.0], method="lm",
                              xtol=1e-14, ftol=1e-14, gtol=1e-14).x
    np.testing.assert_allclose(q, reference, rtol=1e-6)


def test_iteration_limit_reports_no_convergence():
    t = np.linspace(0, 4, 60)
    y = 2.5 * np.exp(-1.3 * t)

    def model_and_jacobian(q):
        e = np.exp(-q[1] * t)
        return q[0] * e, np.stack([e, -q[0] * t * e])

    start = np.array([1.0, 3.0])
    q, converged = levenberg_marquardt_loop(_problem(model_and_jacobian, y), start, 2)
    assert not converged
    q_full, converged_full = levenberg_marquardt_loop(_problem(model_and_jacobian, y), start, 200)
    assert converged_full
    np.testing.assert_allclose(q_full, [2.5, 1.3], rtol=1e-7)
