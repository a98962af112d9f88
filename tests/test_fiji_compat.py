"""fiji_compat: the Fiji CCC plugin 2.2.3's four fitting rules, on hand-made cases.

Every expected number here is worked out by hand (or by a plain Python port of the
plugin's loop) from the rules as the plugin's source states them:

1. keys: per voxel, ``sqrt`` of a float64 running sum x first of
   ``((p_d - c_d) * s_d) ** 2``, ``c = (N - 1) / 2``; every distinct float64 value a key;
2. moving average over ``[k - w, k + w)``, points stored by their new key;
3. retry windows accumulated in float64, the plugin's retry conditions;
4. Commons Math 3.6.1's ParameterGuesser (its half-height quirk, its fallback) and
   MINPACK's LM with Commons Math's iteration limits.
"""

import math

import numpy as np
import pytest
from scipy.optimize import leastsq

import cccdask
from cccdask.kernels import fit as fit_module
from cccdask.kernels.commons_math import java_window_means
from cccdask.kernels.fit import (
    commons_math_guess,
    fit_gaussian,
    gaussian,
    initial_guess,
    levenberg_marquardt,
    minpack_levenberg_marquardt,
    mirrored_tail,
    moving_average,
    retry_windows,
)
from cccdask.kernels.profile import profile_geometry, radial_profile
from cccdask.synthetic import paired_spots

FWHM_PER_SIGMA = 2 * math.sqrt(2 * math.log(2))

# ------------------------------------------------------------------ rule 1: the keys


def plugin_keys(shape, spacing):
    """The plugin's profile loop in plain Python floats: {key: voxel count}.

    ``shape``/``spacing`` in (z,) y, x order; the plugin's axes run x, y, z.
    """
    keys = {}
    for position in np.ndindex(*shape):
        total = 0.0
        for axis in reversed(range(len(shape))):  # x first
            offset = (float(position[axis]) - (shape[axis] - 1.0) / 2) * spacing[axis]
            total += offset * offset
        key = math.sqrt(total)
        keys[key] = keys.get(key, 0) + 1
    return keys


def test_equal_distances_that_round_differently_are_two_keys():
    g = profile_geometry((256, 256), (0.1, 0.1), fiji_compat=True)
    # offsets (4.5, 11.5) and (6.5, 10.5) voxels: 4.5^2 + 11.5^2 = 6.5^2 + 10.5^2 = 152.5
    a = math.sqrt((4.5 * 0.1) ** 2 + (11.5 * 0.1) ** 2)
    b = math.sqrt((6.5 * 0.1) ** 2 + (10.5 * 0.1) ** 2)
    assert (a, b) == (1.234908903522847, 1.2349089035228469)
    i, j = np.searchsorted(g.distances, [a, b])
    assert g.distances[i] == a and g.distances[j] == b and i == j + 1
    # (2a)^2 + (2b)^2 = 610 with odd 2a, 2b only as 9^2 + 23^2 and 13^2 + 21^2: 8 voxels each
    assert g.counts[i] == 8 and g.counts[j] == 8
    # each key's value is the mean of its own 8 voxels
    correlogram = np.random.default_rng(0).random(g.ccf_shape).astype(np.float32)
    profile = radial_profile(correlogram, g)
    centre = 127.5
    for key_index, (u, v) in ((i, (4.5, 11.5)), (j, (6.5, 10.5))):
        voxels = [correlogram[int(centre + sy * y), int(centre + sx * x)]
                  for x, y in ((u, v), (v, u)) for sx in (-1, 1) for sy in (-1, 1)]
        assert profile[key_index] == pytest.approx(np.mean(np.asarray(voxels, dtype=np.float64)), rel=1e-14)


def test_256_squared_at_spacing_0_1_has_the_plugins_6196_keys():
    g = profile_geometry((256, 256), (0.1, 0.1), fiji_compat=True)
    assert len(g.distances) == 6196
    assert g.counts.sum() == 256 * 256
    # equal distances merged (exact integers in half voxels): 5473
    half = np.arange(256) * 2 - 255
    assert len(np.unique(np.add.outer(half**2, half**2))) == 5473


def test_3d_keys_equal_the_plugins_loop_summed_x_first():
    shape, spacing = (5, 6, 7), (0.3, 0.1, 0.103)
    expected = plugin_keys(shape, spacing)
    g = profile_geometry(shape, spacing, fiji_compat=True)
    np.testing.assert_array_equal(g.distances, sorted(expected))
    np.testing.assert_array_equal(g.counts, [expected[k] for k in sorted(expected)])
    # the order of the sum matters here: z first gives other float64 values
    z_first = set()
    for p in np.ndindex(*shape):
        total = 0.0
        for axis in range(3):
            offset = (float(p[axis]) - (shape[axis] - 1.0) / 2) * spacing[axis]
            total += offset * offset
        z_first.add(math.sqrt(total))
    assert z_first != set(expected)


def test_default_keys_merge_equal_distances():
    g = profile_geometry((256, 256), (0.1, 0.1))
    # true zero shift at 128: integer offsets -128..127, merged on exact squared distance
    offsets = np.arange(-128, 128)
    assert len(g.distances) == len(np.unique(np.add.outer(offsets**2, offsets**2)))


# ------------------------------------------------------------ rule 2: window collapse


@pytest.mark.parametrize("java_means", [False, True])
def test_identical_windows_give_one_point(java_means):
    keys = np.array([1.0, 1.5, 2.5, 4.0])
    values = np.array([2.0, 4.0, 6.0, 8.0])
    # w = 1: [0, 2) -> {1, 1.5}; [0.5, 2.5) -> {1, 1.5} (2.5 excluded); [1.5, 3.5) -> {1.5, 2.5};
    # [3, 5) -> {4}: three windows, three points, not four
    k, v = moving_average(keys, values, 1.0, java_means=java_means)
    np.testing.assert_array_equal(k, [1.25, 2.0, 4.0])
    np.testing.assert_array_equal(v, [3.0, 5.0, 8.0])


def test_moving_average_matches_the_window_sets_by_brute_force():
    rng = np.random.default_rng(1)
    keys = np.sort(rng.random(300) * 3)
    values = rng.normal(size=300)
    w = 0.05
    windows = sorted({tuple(np.nonzero((keys >= x - w) & (keys < x + w))[0]) for x in keys})
    expected_keys = np.array([keys[list(s)].mean() for s in windows])
    expected_values = np.array([values[list(s)].mean() for s in windows])
    order = np.argsort(expected_keys)
    for java_means in (False, True):
        k, v = moving_average(keys, values, w, java_means=java_means)
        assert len(k) == len(windows) < len(keys)
        np.testing.assert_allclose(k, expected_keys[order], rtol=1e-14)
        np.testing.assert_allclose(v, expected_values[order], rtol=1e-12, atol=1e-14)


def test_java_means_are_compensated_sums():
    # 1e16 + 1 rounds back to 1e16: a plain running sum loses a one, Kahan keeps it
    data = np.array([1e16, 1.0, 1.0, -1e16, 1.0, 5.0])
    means = java_window_means(data, np.array([0, 5]), np.array([5, 6]))
    np.testing.assert_array_equal(means, [3.0 / 5, 5.0])
    assert sum(data[:5].tolist()) / 5 != 3.0 / 5  # the plain running sum does not


# --------------------------------------------------- rule 3: retry windows and loop


def test_retry_windows_accumulate_in_float64():
    fiji = retry_windows(0.103, fiji_compat=True)
    assert len(fiji) == 4
    # by hand: 0.0103, 0.0206, 0.0309, 0.0412; the fifth, 0.0412 + 0.0103, rounds to
    # 0.051500000000000004 (the issue prints it 0.05150000000000001, Java's older
    # Double.toString) > 0.103 / 2 = 0.0515
    assert fiji == (0.0103, 0.0206, 0.0309, 0.0412)
    assert fiji[-1] + 0.103 / 10 == 0.051500000000000004 > 0.0515 == 0.103 / 2
    assert len(retry_windows(0.1, fiji_compat=True)) == 5
    assert retry_windows(0.1, fiji_compat=True)[0] == 0.1 / 10
    assert len(retry_windows(0.103)) == 5  # default: always 0.1 .. 0.5 s_x


class ScriptedOptimiser:
    """Returns the scripted results one call after the other (None: no result)."""

    def __init__(self, results):
        self.results, self.calls = list(results), 0

    def __call__(self, x, y, p0, max_iterations):
        result = self.results[self.calls]
        self.calls += 1
        expected_limit = 100 if self.calls == 1 else 50
        assert max_iterations == expected_limit
        return (np.array(result, dtype=float), True) if result is not None else (np.asarray(p0), False)


PROFILE_KEYS = np.linspace(0, 3, 200)
PROFILE = gaussian(PROFILE_KEYS, 1.0, 0.8, 0.3)


@pytest.mark.parametrize(
    "script,calls,expected",
    [
        # s_x = 0.1. A fit invalid from height < 0 alone is never retried
        ([(-1.0, 0.5, 0.5)], 1, None),
        # mu in [-s_x, 0) is valid: no retry at all
        ([(1.0, -0.05, 0.5)], 1, (-0.05, 0.5, 0.0)),
        # no result -> sigma <= s_x -> height < 0: the loop stops there, invalid
        ([None, (1.0, 0.5, 0.05), (-1.0, 0.5, 0.5)], 3, None),
        # mu < -s_x: retried while mu < 0, through all five windows; the last is valid
        ([(1.0, -0.2, 0.5)] + [(1.0, -0.05, 0.5)] * 5, 6, (-0.05, 0.5, 0.05)),
        # a retry without result keeps the previous result (and its window)
        ([(1.0, 0.5, 0.05), (1.0, -0.05, 0.5), None, None, None, None], 6, (-0.05, 0.5, 0.01)),
        # every retry without result: no result at all
        ([None] * 6, 6, None),
    ],
)
def test_fiji_retry_loop_follows_the_plugin(monkeypatch, script, calls, expected):
    optimiser = ScriptedOptimiser(script)
    monkeypatch.setattr(fit_module, "minpack_levenberg_marquardt", optimiser)
    fit = fit_gaussian(PROFILE_KEYS, PROFILE, pixel_size=0.1, fiji_compat=True)
    assert optimiser.calls == calls
    if expected is None:
        assert not fit.ok and np.isnan(fit.mean)
    else:
        assert fit.ok
        assert (fit.mean, fit.sigma, fit.smoothing) == pytest.approx(expected, rel=1e-12)


def test_default_retries_stop_at_the_first_valid_fit(monkeypatch):
    optimiser = ScriptedOptimiser([(1.0, -0.2, 0.5), (-1.0, 0.5, 0.5), (1.0, 0.5, 0.4), (1.0, 0.6, 0.4)])
    monkeypatch.setattr(fit_module, "levenberg_marquardt", optimiser)
    fit = fit_gaussian(PROFILE_KEYS, PROFILE, pixel_size=0.1)
    # height < 0 is retried in the default mode; the third fit (window 0.2 s_x) is valid
    assert optimiser.calls == 3
    assert (fit.mean, fit.sigma, fit.smoothing) == pytest.approx((0.5, 0.4, 0.02), rel=1e-12)


# --------------------------------------------------- rule 4: the guess and the LM


def test_commons_math_guess_mixes_x_and_y_in_the_half_height():
    x = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    y = np.array([0.0, 1.0, 2.0, 1.2, 0.5, 0.2, 0.0])
    # ymax = 2 at x = 1: level = 2 + (1 - 2) / 2 = 1.5 (the true half maximum is 1)
    # left: between (0.5, 1) and (1, 2): 0.5 + (1.5 - 1) * 0.5 / (2 - 1) = 0.75
    # right: between (1, 2) and (1.5, 1.2): 1 + (1.5 - 2) * 0.5 / (1.2 - 2) = 1.3125
    order = np.random.default_rng(0).permutation(len(x))  # the guesser sorts by x itself
    guess = commons_math_guess(x[order], y[order])
    np.testing.assert_array_equal(guess, [2.0, 1.0, 0.5625 / FWHM_PER_SIGMA])
    # the default guess uses the true half maximum: 0.5 (exact point) .. 1.5 + 0.2/0.7 * 0.5
    assert initial_guess(x, y)[2] == pytest.approx((1.5 + 0.2 / 0.7 * 0.5 - 0.5) / FWHM_PER_SIGMA)


def test_commons_math_guess_falls_back_to_the_full_span():
    keys = np.arange(9.0)
    values = np.array([0.1, 0.2, 0.5, 1.0, 0.4, 0.1, 0.05, 0.02, 0.01])
    # maxLoc = 3: keys 7 and 8 (> 6) mirrored to -1 and -2
    x, y = mirrored_tail(keys, values)
    np.testing.assert_array_equal(x, [-2, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8])
    # level = 1 + (3 - 1) / 2 = 2 > every y: no crossing, FWHM = 8 - (-2) = 10
    np.testing.assert_array_equal(commons_math_guess(x, y), [1.0, 3.0, 10 / FWHM_PER_SIGMA])


def test_commons_math_guess_takes_an_end_point_on_the_level():
    x = np.array([0.0, 1.0, 2.0, 3.0])
    y = np.array([0.25, 0.5, 0.25, 0.125])
    # ymax 0.5 at x = 1: level = 0.5 + (1 - 0.5) / 2 = 0.75 > 0.5: no crossing, span 3
    assert commons_math_guess(x, y)[2] == 3 / FWHM_PER_SIGMA
    y = np.array([0.25, 1.5, 1.0, 0.5])
    # ymax 1.5 at x = 1: level 1.25; left (0, .25)-(1, 1.5): 0 + 1.0 * 1 / 1.25 = 0.8;
    # right (1, 1.5)-(2, 1.0): 1 + (-0.25) * 1 / (-0.5) = 1.5
    assert commons_math_guess(x, y)[2] == pytest.approx(0.7 / FWHM_PER_SIGMA, rel=1e-15)
    y = np.array([1.25, 1.5, 1.0, 0.5])  # left end point exactly on the level: its own x
    assert commons_math_guess(x, y)[2] == pytest.approx(1.5 / FWHM_PER_SIGMA, rel=1e-15)


def noisy_profile(seed=0):
    rng = np.random.default_rng(seed)
    keys = np.sort(rng.random(3000) * 3)
    values = gaussian(keys, 1.3, 1.0, 0.3) + rng.normal(scale=0.1, size=keys.size)
    return mirrored_tail(keys, values)


def test_minpack_lm_iteration_limit_is_commons_maths():
    x, y = noisy_profile()
    p0 = commons_math_guess(x, y)
    jacobian_calls = []

    def jacobian(p):
        jacobian_calls.append(p)
        h, mu, s = p
        e = np.exp(-(x - mu) ** 2 / (2 * s * s))
        return np.column_stack([e, h * e * (x - mu) / s**2, h * e * (x - mu) ** 2 / s**3])

    direct, _, info, _, ier = leastsq(lambda p: gaussian(x, *p) - y, p0, Dfun=jacobian, full_output=True,
                                      ftol=1e-10, xtol=1e-10, gtol=1e-10, maxfev=10**6, factor=100)
    assert ier in (1, 2, 3, 4)
    iterations = info["njev"]  # MINPACK's outer iterations = Commons Math's iterations
    assert iterations > 3
    params, converged = minpack_levenberg_marquardt(x, y, p0, iterations)
    assert converged
    np.testing.assert_allclose(params, direct, rtol=1e-9)
    # one iteration less: Commons Math throws TooManyIterationsException, no result
    assert not minpack_levenberg_marquardt(x, y, p0, iterations - 1)[1]


def test_minpack_lm_reaches_the_same_minimum_as_the_default_lm():
    x, y = noisy_profile(1)
    p0 = commons_math_guess(x, y)
    fiji, ok_fiji = minpack_levenberg_marquardt(x, y, p0)
    default, ok_default = levenberg_marquardt(x, y, initial_guess(x, y))
    assert ok_fiji and ok_default
    np.testing.assert_allclose(fiji, default, rtol=1e-6)


def test_minpack_lm_never_steps_to_a_non_positive_sigma():
    # a start far too wide whose first steps would overshoot sigma through 0
    x, y = noisy_profile(2)
    params, converged = minpack_levenberg_marquardt(x, y, [1.3, 1.0, 0.01])
    assert not converged or params[2] > 0


# ---------------------------------------------------------------- end to end


def test_fiji_compat_runs_every_rule_end_to_end():
    s = paired_spots((64, 64), spacing=(0.1, 0.1), distance=0.4, psf_sigma=0.1, n_pairs=12, n_decoys=2,
                     noise=0.02, seed=4)
    fiji = cccdask.ccc(s.image1, s.image2, s.mask, spacing=s.spacing, fiji_compat=True, dtype="float64")
    default = cccdask.ccc(s.image1, s.image2, s.mask, spacing=s.spacing, dtype="float64")
    assert len(fiji.distance) == len(profile_geometry((64, 64), (0.1, 0.1), fiji_compat=True).distances)
    assert bool(fiji["fit_ok"]) and bool(default["fit_ok"])
    # the same fit, re-derived from the profile with the plugin's rules
    expected = fit_gaussian(fiji.distance.values, fiji.profile_subtracted.values, 0.1, fiji_compat=True)
    assert float(fiji["mean"]) == expected.mean and float(fiji["sigma"]) == expected.sigma
    # both read the same distance from the same scene (the key sets differ)
    assert float(fiji["mean"]) == pytest.approx(float(default["mean"]), abs=0.05)
    assert fiji.attrs["fiji_compat"] == 1
