"""The Gaussian fit and its statistics against independent computations."""

import numpy as np
import pytest
from scipy.optimize import least_squares, minimize

from cccdask.kernels.fit import (
    GaussianFit,
    confidence,
    fit_gaussian,
    gaussian,
    initial_guess,
    levenberg_marquardt,
    mirrored_tail,
    r_squared,
)


def test_noise_free_gaussian_is_recovered():
    keys = np.linspace(0, 5, 400)
    fit = fit_gaussian(keys, gaussian(keys, 2.5, 1.7, 0.4), pixel_size=0.05)
    assert fit.ok
    assert fit.mean == pytest.approx(1.7, rel=1e-8)
    assert fit.sigma == pytest.approx(0.4, rel=1e-8)
    assert fit.height == pytest.approx(2.5, rel=1e-8)
    assert fit.smoothing == 0.0


def test_levenberg_marquardt_reaches_the_least_squares_minimum():
    rng = np.random.default_rng(0)
    keys = np.sort(rng.random(5000) * 6)
    values = gaussian(keys, 1.3, 2.0, 0.6) + rng.normal(scale=0.2, size=keys.size)
    x, y = mirrored_tail(keys, values)
    p0 = initial_guess(x, y)
    params, converged = levenberg_marquardt(x, y, p0)
    # independent minimisations of the same cost: MINPACK, and derivative-free
    cost = lambda q: np.sum((gaussian(x, *q) - y) ** 2)
    minpack = least_squares(lambda q: gaussian(x, *q) - y, p0, method="lm", xtol=1e-12, ftol=1e-12).x
    reference = minimize(cost, p0, method="Nelder-Mead", options=dict(xatol=1e-10, fatol=1e-12, maxiter=20000)).x
    assert converged
    assert cost(params) <= cost(reference) * (1 + 1e-9)
    assert cost(params) <= cost(minpack) * (1 + 1e-9)
    np.testing.assert_allclose(params[:2], minpack[:2], rtol=1e-5)
    np.testing.assert_allclose(params[:2], reference[:2], rtol=1e-5)
    assert abs(params[2]) == pytest.approx(abs(reference[2]), rel=1e-5)


def test_mirrored_tail_follows_the_plugin_rule():
    keys = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    values = np.array([0.1, 0.5, 0.2, 0.1, 0.05, 0.0])
    x, y = mirrored_tail(keys, values)  # maxLoc = 1: keys > 2 mirrored to 2 - key
    np.testing.assert_array_equal(x, [-3, -2, -1, 0, 1, 2, 3, 4, 5])  # sorted by x
    np.testing.assert_array_equal(y, [0.0, 0.05, 0.1, 0.1, 0.5, 0.2, 0.1, 0.05, 0.0])
    # the maximum at the first key (or no positive value): maxLoc = 0, every key > 0 mirrored
    x, _ = mirrored_tail(keys, -values)
    assert len(x) == 11 and x.min() == -5


def test_support_window_gives_the_full_sums():
    # points far beyond 39 sigma only add a constant: same fit with or without them
    rng = np.random.default_rng(2)
    keys = np.linspace(0, 3, 3000)
    values = gaussian(keys, 1.0, 1.0, 0.1) + rng.normal(scale=0.05, size=keys.size)
    far_keys = np.linspace(10, 1000, 200000)
    far_values = rng.normal(scale=0.05, size=far_keys.size)
    x, y = mirrored_tail(keys, values)
    near, _ = levenberg_marquardt(x, y, initial_guess(x, y))
    xa, ya = mirrored_tail(np.concatenate([keys, far_keys]), np.concatenate([values, far_values]))
    both, converged = levenberg_marquardt(xa, ya, initial_guess(x, y))
    assert converged
    cost = lambda q, xx, yy: np.sum((gaussian(xx, *q) - yy) ** 2)
    # the same minimum of the full cost
    minpack = least_squares(lambda q: gaussian(xa, *q) - ya, initial_guess(x, y), method="lm", xtol=1e-12,
                            ftol=1e-12).x
    assert cost(both, xa, ya) <= cost(minpack, xa, ya) * (1 + 1e-12)
    np.testing.assert_allclose(both[:2], minpack[:2], rtol=1e-6)


def test_unfittable_profiles_are_flagged_not_raised():
    keys = np.linspace(0, 5, 100)
    for values in (np.zeros(100), -np.ones(100), np.full(100, np.nan)):
        fit = fit_gaussian(keys, values, pixel_size=0.1)
        assert not fit.ok
        assert np.isnan(fit.mean) and np.isnan(fit.sigma)
        assert np.isnan(confidence(keys, values, values, fit))
        assert np.isnan(r_squared(keys, values, fit))


def test_narrow_peak_is_invalid_then_smoothing_decides():
    # sigma below the pixel size is invalid by the plugin's rules
    keys = np.linspace(0, 5, 501)
    fit = fit_gaussian(keys, gaussian(keys, 1.0, 2.0, 0.02), pixel_size=0.1)
    assert not fit.ok or fit.sigma > 0.1


def test_confidence_and_r_squared_by_hand():
    keys = np.arange(0, 10, 0.5)
    rng = np.random.default_rng(5)
    subtracted = gaussian(keys, 1.0, 3.0, 1.0) + rng.normal(scale=0.05, size=keys.size)
    original = subtracted + 2.0
    fit = GaussianFit(mean=3.0, sigma=1.0, height=1.0, ok=True, smoothing=0.0)
    strictly = [k for k in range(len(keys)) if 0.0 < keys[k] < 6.0]
    assert confidence(keys, subtracted, original, fit) == pytest.approx(
        sum(subtracted[strictly]) / sum(original[strictly])
    )
    half_open = [k for k in range(len(keys)) if 0.0 <= keys[k] < 6.0]
    v = subtracted[half_open]
    g = gaussian(keys[half_open], 1.0, 3.0, 1.0)
    expected = 1 - np.sum((v - g) ** 2) / np.sum((v - v.mean()) ** 2)
    assert r_squared(keys, subtracted, fit) == pytest.approx(expected)


def test_curve_uses_absolute_mean():
    fit = GaussianFit(mean=-0.05, sigma=1.0, height=2.0, ok=True, smoothing=0.0)
    np.testing.assert_allclose(fit.curve(np.array([0.05])), [2.0])
