"""The sum-of-Gaussians fit (kernels/multifit.py) against independent computations."""

import numpy as np
import pytest
from scipy.optimize import approx_fprime, least_squares

from cccdask.kernels.fit import fit_gaussian, gaussian
from cccdask.kernels.multifit import (
    MEAN_OUTSIDE,
    NO_HEIGHT,
    NO_START,
    NOT_SELECTED,
    NOT_SEPARABLE,
    OK,
    STATUS_MEANINGS,
    TOO_NARROW,
    GaussianSumFit,
    _model_and_jacobian,
    component_confidence,
    component_status,
    contribution_weight,
    fit_gaussian_sums,
    gaussian_sum,
    joint_fit,
    select_by_bic,
    sequential_starts,
    sum_r_squared,
)

KEYS = np.sqrt(np.arange(0, 12000) * 0.00075)  # 0..3 ascending, denser at large d, like a profile
STEP = KEYS[1] - KEYS[0]


def two_peaks(noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    values = gaussian(KEYS, 1.0, 0.38, 0.14) + gaussian(KEYS, 0.35, 1.09, 0.15)
    return values + rng.normal(scale=noise, size=KEYS.size)


@pytest.mark.parametrize("heights", [(1.0, 0.35), (0.35, 1.0)], ids=["near-higher", "far-higher"])
def test_noise_free_two_gaussians_are_recovered_sorted(heights):
    values = gaussian(KEYS, heights[0], 0.38, 0.14) + gaussian(KEYS, heights[1], 1.09, 0.15)
    two = fit_gaussian_sums(KEYS, values, 2, pixel_size=0.05)[1]
    assert two.status.tolist() == [OK, OK]
    np.testing.assert_allclose(two.mean, [0.38, 1.09], rtol=1e-7)
    np.testing.assert_allclose(two.sigma, [0.14, 0.15], rtol=1e-7)
    np.testing.assert_allclose(two.height, heights, rtol=1e-7)
    assert two.rss == pytest.approx(0.0, abs=1e-16)


def test_sequential_starts_fit_each_residual_in_turn():
    values = two_peaks(noise=0.01)
    starts = sequential_starts(KEYS, values, 2, pixel_size=0.05)
    first = fit_gaussian(KEYS, values, 0.05)
    second = fit_gaussian(KEYS, values - first.curve(KEYS), 0.05)
    np.testing.assert_allclose(starts[0], [first.height, first.mean, first.sigma])
    np.testing.assert_allclose(starts[1], [second.height, abs(second.mean), second.sigma])


def test_jacobian_is_the_derivative_of_the_model():
    p = np.array([1.0, 0.4, 0.13, 0.3, 1.1, 0.2])
    x = KEYS[::40]
    _, jac = _model_and_jacobian(x, p)
    for row in (3, 17, 50, 80):
        numeric = approx_fprime(p, lambda q: gaussian_sum(x[row], q), 1e-7)
        np.testing.assert_allclose(jac[row], numeric, rtol=1e-5, atol=1e-7)


def test_joint_fit_reaches_the_bounded_least_squares_minimum():
    values = two_peaks(noise=0.05, seed=3)
    start = sequential_starts(KEYS, values, 2, pixel_size=0.05)
    params, converged = joint_fit(KEYS, values, start, STEP)
    # an independent solver of the same bounded problem: scipy's trust-region reflective
    reference = least_squares(lambda q: gaussian_sum(KEYS, q) - values, start.ravel(), method="trf",
                              bounds=(np.tile([0, -np.inf, 1e-6], 2), np.inf), xtol=1e-14, ftol=1e-14,
                              gtol=1e-14).x
    cost = lambda q: np.sum((gaussian_sum(KEYS, q) - values) ** 2)
    assert converged
    assert cost(params) <= cost(reference) * (1 + 1e-9)
    np.testing.assert_allclose(params.ravel(), reference, rtol=1e-5)


def test_heights_stay_non_negative_and_sigmas_positive():
    # a dip the model would fit with a negative height: the bound holds it at 0
    values = gaussian(KEYS, 1.0, 0.5, 0.1) - gaussian(KEYS, 0.5, 1.2, 0.1)
    params, _ = joint_fit(KEYS, values, np.array([[1.0, 0.5, 0.1], [0.3, 1.2, 0.1]]), STEP)
    assert np.all(params[:, 0] >= 0) and np.all(params[:, 2] > 0)
    assert params[1, 0] == pytest.approx(0.0, abs=1e-3)  # h = u^2 approaches its bound slowly
    np.testing.assert_allclose(params[0], [1.0, 0.5, 0.1], rtol=1e-5)


def test_one_population_gives_one_component_and_a_failed_second():
    rng = np.random.default_rng(1)
    values = gaussian(KEYS, 1.0, 0.9, 0.14) + rng.normal(scale=0.05, size=KEYS.size)
    fits = fit_gaussian_sums(KEYS, values, 3, pixel_size=0.05)
    for fit in fits[1:]:
        assert fit.status[0] == OK and fit.mean[0] == pytest.approx(0.9, rel=0.01)
        assert np.all(fit.status[1:] != OK)
        assert np.all(np.isnan(fit.mean[1:])) and np.all(np.isnan(fit.height[1:]))
    assert select_by_bic(fits) == 0


def test_pure_noise_fails_every_component_without_raising():
    rng = np.random.default_rng(7)
    for n in (2, 3):
        for values in (rng.normal(scale=1.0, size=KEYS.size), np.zeros(KEYS.size), np.full(KEYS.size, np.nan)):
            fits = fit_gaussian_sums(KEYS, values, n, pixel_size=0.05)
            assert not fits[-1].ok.any()
            assert np.all(np.isnan(fits[-1].curve(KEYS)))
            assert set(fits[-1].status.tolist()) <= {NO_START, NO_HEIGHT, TOO_NARROW, MEAN_OUTSIDE, NOT_SEPARABLE}


def test_component_rules_name_the_reason():
    values = two_peaks(noise=0.01)
    good = [1.0, 0.38, 0.14]
    cases = {
        TOO_NARROW: [0.3, 1.09, STEP / 2],
        MEAN_OUTSIDE: [0.3, KEYS[-1] + 1.0, 0.15],
        NO_HEIGHT: [1e-4, 1.09, 0.15],
        NOT_SEPARABLE: [0.3, 0.38 + 0.2, 0.15],  # 0.2 < 0.14 + 0.15
    }
    for code, bad in cases.items():
        status = component_status(np.array([good, bad]), KEYS, values, STEP)
        assert status.tolist() == [OK, code], STATUS_MEANINGS[code]
    assert component_status(np.array([good, [0.35, 1.09, 0.15]]), KEYS, values, STEP).tolist() == [OK, OK]


def test_information_criteria_by_hand():
    values = two_peaks(noise=0.05, seed=2)
    fits = fit_gaussian_sums(KEYS, values, 2, pixel_size=0.05)
    n = KEYS.size
    assert fits[1].ok.all()
    for fit in fits:
        kept = np.flatnonzero(fit.ok)
        model = sum((gaussian(KEYS, fit.height[i], fit.mean[i], fit.sigma[i]) for i in kept), np.zeros(n))
        rss = np.sum((values - model) ** 2)
        assert fit.rss == pytest.approx(rss, rel=1e-12)
        assert fit.bic == pytest.approx(n * np.log(rss / n) + 3 * len(kept) * np.log(n), rel=1e-12)
        assert fit.aic == pytest.approx(n * np.log(rss / n) + 6 * len(kept), rel=1e-12)
    assert fits[1].bic < fits[0].bic
    assert select_by_bic(fits) == 1


def test_statistics_follow_the_2_3_0_definitions():
    keys = np.arange(0, 5, 0.05)
    rng = np.random.default_rng(4)
    subtracted = gaussian(keys, 1.0, 1.0, 0.2) + gaussian(keys, 0.5, 2.5, 0.3) + rng.normal(scale=0.02, size=keys.size)
    original = subtracted + 1.5
    fit = GaussianSumFit(np.array([1.0, 2.5, np.nan]), np.array([0.2, 0.3, np.nan]), np.array([1.0, 0.5, np.nan]),
                         np.array([OK, OK, NOT_SELECTED], dtype=np.int8), 0.0, keys.size)
    expected = []
    for h, mu, s in ((1.0, 1.0, 0.2), (0.5, 2.5, 0.3)):
        inside = [i for i, k in enumerate(keys) if mu - 3 * s < k < mu + 3 * s]
        expected.append(sum(gaussian(keys[i], h, mu, s) for i in inside) / sum(original[i] for i in inside))
    got = component_confidence(keys, original, fit)
    np.testing.assert_allclose(got[:2], expected, rtol=1e-12)
    assert np.isnan(got[2])
    inside = [i for i, k in enumerate(keys) if 1.0 - 0.6 <= k < 1.0 + 0.6]
    v = subtracted[inside]
    model = gaussian(keys[inside], 1.0, 1.0, 0.2) + gaussian(keys[inside], 0.5, 2.5, 0.3)
    expected = 1 - np.sum((v - model) ** 2) / np.sum((v - v.mean()) ** 2)
    assert sum_r_squared(keys, subtracted, fit) == pytest.approx(expected)
    d = np.linspace(0, 4, 50)
    weight = (gaussian(d, 1.0, 1.0, 0.2) + gaussian(d, 0.5, 2.5, 0.3)) / 1.5
    np.testing.assert_allclose(contribution_weight(d, fit), weight, rtol=1e-12)
    one = GaussianSumFit(np.array([1.0]), np.array([0.2]), np.array([7.0]), np.array([OK], dtype=np.int8), 0.0, 1)
    np.testing.assert_allclose(contribution_weight(d, one), np.exp(-0.5 * ((d - 1.0) / 0.2) ** 2), rtol=1e-12)


def test_padding_and_curves():
    fit = fit_gaussian_sums(KEYS, two_peaks(), 2, pixel_size=0.05)[1].padded(3)
    assert fit.status.tolist() == [OK, OK, NOT_SELECTED]
    components = fit.components(KEYS)
    assert np.all(np.isnan(components[2]))
    np.testing.assert_allclose(fit.curve(KEYS), two_peaks(), atol=1e-9)


def test_bad_number_of_components_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        fit_gaussian_sums(KEYS, two_peaks(), 0, pixel_size=0.05)


def test_auto_chooses_among_complete_fits_only():
    def fit(status, rss):
        n = len(status)
        return GaussianSumFit(np.arange(n, dtype=float), np.ones(n), np.ones(n), np.array(status, dtype=np.int8),
                              rss, 1000)

    # a two-component fit with a failed component is the one-component model (its RSS
    # may differ by rounding): never reported as "2"
    assert select_by_bic([fit([OK], 10.0), fit([OK, NO_HEIGHT], 9.0)]) == 0
    # complete fits: BIC = 1000 ln(RSS/1000) + 3m ln 1000; 1000 ln(10/9) = 105 > 3 ln 1000 = 21
    assert select_by_bic([fit([OK], 10.0), fit([OK, OK], 9.0), fit([OK, OK, OK], 8.99)]) == 1
    assert select_by_bic([fit([NO_HEIGHT], 10.0), fit([NO_HEIGHT, NO_START], 10.0)]) == 0  # none complete
