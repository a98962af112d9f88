"""Costes' automatic threshold, the presets, against brute force and hand-computed cases."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import scipy.stats as ss
import xarray as xr
from skimage import measure

from cccdask import coefficients
from cccdask.kernels.coefficients import joint_table
from cccdask.kernels.costes_tools import costes_threshold


# ---------------------------------------------------------------------------------------
# Brute force: every candidate evaluated directly on the voxels
# ---------------------------------------------------------------------------------------
def orthogonal_line(x, y):
    """Total least squares line: the main axis of the covariance ellipse (eigenvector)."""
    cov = np.cov(np.vstack([x, y]))
    values, vectors = np.linalg.eigh(cov)
    vx, vy = vectors[:, np.argmax(values)]
    slope = vy / vx
    return slope, y.mean() - slope * x.mean()


def r_below(x, y, t, slope, intercept):
    below = (x < t) | (y < slope * t + intercept)
    if below.sum() < 2 or np.ptp(x[below]) == 0 or np.ptp(y[below]) == 0:
        return np.nan
    return ss.pearsonr(x[below], y[below])[0]


def r_below_all(x, y, candidates, slope, intercept):
    """r-below at every candidate, each summed over its own voxel set (vectorised brute force)."""
    xc, yc = x - x.mean(), y - y.mean()  # centred copies keep the direct sums precise
    out = []
    for block in np.array_split(np.asarray(candidates, float), max(1, len(candidates) // 256)):
        below = ((x[None, :] < block[:, None]) | (y[None, :] < slope * block[:, None] + intercept)).astype(float)
        n = below.sum(1)
        sx, sy = below @ xc, below @ yc
        with np.errstate(invalid="ignore", divide="ignore"):
            cov = below @ (xc * yc) - sx * sy / n
            vx = below @ (xc * xc) - sx * sx / n
            vy = below @ (yc * yc) - sy * sy / n
            r = cov / np.sqrt(vx * vy)
        r[(n < 2) | ~(vx > 1e-9 * (below @ (xc * xc))) | ~(vy > 1e-9 * (below @ (yc * yc)))] = np.nan
        out.append(r)
    return np.concatenate(out)


def brute_costes(x, y, candidates, line):
    """Walk the candidates down from the top; the first with r-below <= 0."""
    slope, intercept = line
    curve = r_below_all(x, y, candidates, slope, intercept)
    hits = np.flatnonzero(curve <= 0)
    if not hits.size:
        return np.nan, np.nan
    t = candidates[hits[0]]
    return t, slope * t + intercept


def correlated_pair(rng, shape, dtype, scale):
    signal = rng.gamma(1.5, scale, shape)
    a = signal + rng.normal(0, scale / 3, shape)
    b = 0.8 * signal + rng.normal(0, scale / 3, shape) + scale / 5
    if np.dtype(dtype).kind in "ui":
        info = np.iinfo(dtype)
        return (np.clip(np.rint(a), 0, info.max).astype(dtype), np.clip(np.rint(b), 0, info.max).astype(dtype))
    return a.astype(dtype), b.astype(dtype)


@pytest.mark.parametrize("dtype, scale", [("uint8", 30.0), ("uint16", 600.0), ("uint16", 8000.0)])
def test_one_pass_threshold_equals_brute_force_on_integer_images(dtype, scale):
    rng = np.random.default_rng(int(scale))
    R, G = correlated_pair(rng, (40, 45), dtype, scale)
    mask = rng.random(R.shape) > 0.15
    x, y = R[mask].astype(float), G[mask].astype(float)
    line = orthogonal_line(x, y)
    expected = brute_costes(x, y, np.arange(x.max(), x.min() - 1, -1), line)
    result = costes_threshold(joint_table(R[mask], G[mask]))
    assert result.reason == "" and result.resolution == 1.0
    assert result.slope == pytest.approx(line[0], rel=1e-9)
    assert result.intercept == pytest.approx(line[1], rel=1e-9, abs=1e-9)
    assert result.threshold1 == expected[0]
    assert result.threshold2 == pytest.approx(expected[1], rel=1e-12)
    # the stored curve is r-below at its candidates
    for t, r in list(zip(result.curve_threshold1, result.curve_r_below))[::97]:
        if np.isfinite(t):
            np.testing.assert_allclose(r, r_below(x, y, t, *line), rtol=1e-9, atol=1e-12)


def test_float_threshold_within_the_stated_resolution():
    rng = np.random.default_rng(5)
    R, G = correlated_pair(rng, (50, 50), "float64", 1.0)
    x, y = R.ravel(), G.ravel()
    result = costes_threshold(joint_table(x, y))
    line = (result.slope, result.intercept)
    assert result.resolution < 1e-6 * np.ptp(x)
    # r-below is <= 0 at the threshold and > 0 one resolution step above it
    assert r_below(x, y, result.threshold1, *line) <= 0
    assert r_below(x, y, result.threshold1 + result.resolution, *line) > 0
    # and an independent brute-force walk on a coarse grid brackets it
    grid = np.linspace(x.max(), x.min(), 400)
    coarse = brute_costes(x, y, grid, orthogonal_line(x, y))[0]
    assert coarse <= result.threshold1 <= coarse + (grid[0] - grid[1])


def test_costes_in_coefficients_equals_manual_thresholds_and_is_chunking_invariant():
    rng = np.random.default_rng(9)
    R, G = correlated_pair(rng, (36, 40), "uint16", 300.0)
    mask = rng.random(R.shape) > 0.1
    auto = coefficients(R, G, mask, threshold="costes", maps=True, van_steensel_shifts=3)
    t1, t2 = auto.threshold.values
    expected = brute_costes(R[mask].astype(float), G[mask].astype(float),
                            np.arange(int(R[mask].max()), int(R[mask].min()) - 1, -1),
                            orthogonal_line(R[mask].astype(float), G[mask].astype(float)))
    assert t1 == expected[0] and t2 == pytest.approx(expected[1], rel=1e-9)
    manual = coefficients(R, G, mask, threshold=(t1, t2), maps=True, van_steensel_shifts=3)
    for name in manual.data_vars:
        if manual[name].dtype.kind == "f":
            np.testing.assert_allclose(auto[name].values, manual[name].values, rtol=1e-10, atol=1e-13, err_msg=name)
    chunked = coefficients(da.from_array(R, chunks=(7, 11)), da.from_array(G, chunks=(9, 8)),
                           da.from_array(mask, chunks=13), threshold="costes", maps=True,
                           van_steensel_shifts=3).compute()
    for name in auto.data_vars:
        if auto[name].dtype.kind == "f":
            np.testing.assert_allclose(chunked[name].values, auto[name].values, rtol=1e-10, atol=1e-13, err_msg=name)
    assert auto.attrs["threshold_method"] == "costes"
    assert auto.costes_r_below.dims == ("costes_candidate",)


def test_costes_undefined_for_anticorrelated_channels_gives_nan_with_reason():
    rng = np.random.default_rng(10)
    R = rng.integers(0, 200, (20, 20)).astype(np.uint8)
    G = (255 - R).astype(np.uint8)
    ds = coefficients(R, G, threshold="costes", maps=True)
    assert np.isnan(ds.threshold.values).all() and np.isnan(float(ds.pearson))
    assert "slope is not positive" in str(ds.nan_reason.sel(coefficient="costes").values)
    assert "Costes threshold undefined" in str(ds.nan_reason.sel(coefficient="m1").values)
    assert np.isnan(ds.pearson_map.values).all()


# ---------------------------------------------------------------------------------------
# Presets on hand-computed cases
# ---------------------------------------------------------------------------------------
R_HAND = np.array([[0, 2, 4], [6, 8, 10]], dtype=np.uint8)
G_HAND = np.array([[0, 5, 0], [5, 10, 1]], dtype=np.uint8)


@pytest.mark.parametrize(
    "preset, m1, m2",
    [
        # Huygens: R' = max(R - 3, 0) = 0 0 1 3 5 7; G above 5: only 10 -> m1 = 5 / 16
        #          G' = max(G - 5, 0) = 0 0 0 0 5 0; R above 3: 4 6 8 10 -> m2 = 5 / 5
        ("huygens", 5 / 16, 5 / 5),
        # Coloc 2: raw values, G >= 5 and G > 0: 2 6 8 -> m1 = 16 / 30; R >= 3: G 0 5 10 1 -> m2 = 16 / 21
        ("coloc2", 16 / 30, 16 / 21),
        # JACoP: R > 3 and G > 5: 8 -> m1 = 8 / (4 + 6 + 8 + 10); G > 5 and R > 3: 10 -> m2 = 10 / 10
        ("jacop", 8 / 28, 10 / 10),
        # scikit-image: manders_coloc_coeff(R, G > 5) = 8 / 30; (G, R > 3) = 16 / 21
        ("skimage", 8 / 30, 16 / 21),
    ],
)
def test_manders_presets_on_a_hand_computed_case(preset, m1, m2):
    ds = coefficients(R_HAND, G_HAND, threshold=(3, 5), preset=preset, van_steensel_shifts=None, maps=True)
    assert float(ds.m1) == pytest.approx(m1, rel=1e-12)
    assert float(ds.m2) == pytest.approx(m2, rel=1e-12)
    assert float(ds.m1_map.sum()) == pytest.approx(m1, rel=1e-12)
    if preset == "skimage":
        assert float(ds.m1) == pytest.approx(measure.manders_coloc_coeff(R_HAND, G_HAND > 5), rel=1e-12)


def test_icq_zero_products_and_background_subtraction_by_preset():
    R = np.array([[1, 2], [3, 2]], dtype=np.uint8)
    G = np.array([[5, 1], [9, 7]], dtype=np.uint8)
    # means 2 and 5.5: products 0.5, 0, 3.5, 0 -> two positive, two zero
    assert float(coefficients(R, G, preset="huygens", van_steensel_shifts=None).icq) == pytest.approx(2 / 4 - 0.5)
    assert float(coefficients(R, G, preset="jacop", van_steensel_shifts=None).icq) == pytest.approx(2 / 4 - 0.5)
    assert float(coefficients(R, G, preset="coloc2", van_steensel_shifts=None).icq) == pytest.approx(4 / 4 - 0.5)
    # a threshold changes Pearson only where values are background-corrected (Huygens)
    rng = np.random.default_rng(1)
    A, B = correlated_pair(rng, (20, 20), "uint8", 30.0)
    raw = ss.pearsonr(A.ravel().astype(float), B.ravel().astype(float))[0]
    for preset in ("coloc2", "jacop", "skimage"):
        assert float(coefficients(A, B, threshold=20, preset=preset, van_steensel_shifts=None).pearson) == \
            pytest.approx(raw, rel=1e-12)
    huygens = ss.pearsonr(np.maximum(A.ravel() - 20.0, 0), np.maximum(B.ravel() - 20.0, 0))[0]
    assert float(coefficients(A, B, threshold=20, van_steensel_shifts=None).pearson) == pytest.approx(huygens, rel=1e-12)


def test_unknown_preset_raises():
    with pytest.raises(ValueError, match="preset 'fiji' is unknown"):
        coefficients(R_HAND, G_HAND, preset="fiji")


# ---------------------------------------------------------------------------------------
# Significance test
# ---------------------------------------------------------------------------------------
def smooth_noise(rng, shape, sigma=1.5):
    from scipy import ndimage

    return ndimage.gaussian_filter(rng.random(shape), sigma)


def test_block_shape_is_anisotropic_from_physical_units():
    from cccdask.kernels.costes import block_shape

    assert block_shape(0.6, (0.2, 0.05, 0.05)) == (3, 12, 12)
    with pytest.raises(ValueError, match="psf_width"):
        block_shape(-1.0, (1.0, 1.0))


def test_significance_p_values_spread_on_independent_images_and_small_on_correlated():
    from cccdask.coefficients import costes_significance

    n = 39
    p_values = []
    for seed in range(16):
        rng = np.random.default_rng(100 + seed)
        a, b = smooth_noise(rng, (48, 48)), smooth_noise(rng, (48, 48))
        ds = costes_significance(a, b, psf_width=4, n_randomizations=n, seed=seed)
        p = float(ds.costes_p_value)
        assert 0 < p <= 1
        # the empirical p-value is the count over the returned null distribution
        null = ds.costes_null_r.values
        assert p == pytest.approx((np.sum(null >= float(ds.costes_observed_r)) + 1) / (n + 1))
        assert float(ds.costes_null_sd) == pytest.approx(np.std(null, ddof=1))
        p_values.append(p)
    assert ss.kstest(p_values, "uniform").pvalue > 0.01
    assert len(set(p_values)) > 5

    rng = np.random.default_rng(7)
    a = smooth_noise(rng, (48, 48))
    correlated = costes_significance(a, a + 0.2 * smooth_noise(rng, (48, 48)), psf_width=4, n_randomizations=n)
    assert float(correlated.costes_p_value) == pytest.approx(1 / (n + 1))
    assert float(correlated.costes_coloc2_p_value) > 0.999
    expected = ss.norm.cdf(float(correlated.costes_observed_r), float(correlated.costes_null_mean),
                           float(correlated.costes_null_sd))
    assert float(correlated.costes_coloc2_p_value) == pytest.approx(expected)


def test_significance_shuffles_inside_the_mask_only_and_is_seeded():
    from cccdask.coefficients import costes_significance

    rng = np.random.default_rng(3)
    a, b = smooth_noise(rng, (40, 40)), smooth_noise(rng, (40, 40))
    mask = np.zeros((40, 40), bool)
    mask[5:33, 3:30] = True
    a_nan = a.copy()
    a_nan[~mask] = np.nan  # any voxel from outside the mask would turn r into NaN
    ds = costes_significance(a_nan, b, mask, psf_width=4, n_randomizations=30, seed=5)
    assert np.isfinite(ds.costes_null_r.values).all()
    # blocks of 4 tiled from the origin and entirely inside: rows 8..31, columns 4..27
    inside_blocks = np.zeros_like(mask)
    inside_blocks[8:32, 4:28] = True
    assert int(ds.costes_n_blocks) == 6 * 6
    assert float(ds.costes_observed_r) == pytest.approx(ss.pearsonr(a[inside_blocks], b[inside_blocks])[0], rel=1e-10)
    again = costes_significance(da.from_array(a_nan, chunks=16), b, mask, psf_width=4, n_randomizations=30,
                                seed=5).compute()
    np.testing.assert_array_equal(again.costes_null_r.values, ds.costes_null_r.values)
    other = costes_significance(a_nan, b, mask, psf_width=4, n_randomizations=30, seed=6)
    assert not np.array_equal(other.costes_null_r.values, ds.costes_null_r.values)


def test_significance_runs_on_a_distributed_cluster():
    distributed = pytest.importorskip("distributed")
    from cccdask.coefficients import costes_significance

    rng = np.random.default_rng(4)
    a, b = smooth_noise(rng, (32, 32)), smooth_noise(rng, (32, 32))
    local = costes_significance(a, b, psf_width=4, n_randomizations=20, seed=2, tasks=4)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster):
        remote = costes_significance(da.from_array(a, chunks=16), b, psf_width=4, n_randomizations=20, seed=2,
                                     tasks=4).compute()
    np.testing.assert_array_equal(remote.costes_null_r.values, local.costes_null_r.values)


# ---------------------------------------------------------------------------------------
# Cytofluorogram
# ---------------------------------------------------------------------------------------
def test_cytofluorogram_variable_and_png(tmp_path):
    import matplotlib.image

    from cccdask.coefficients import plot_cytofluorogram

    rng = np.random.default_rng(11)
    R, G = correlated_pair(rng, (30, 34), "uint16", 200.0)
    mask = rng.random(R.shape) > 0.2
    ds = coefficients(R, G, mask, threshold="costes", cytofluorogram=32, van_steensel_shifts=None)
    low1, high1, low2, high2 = R[mask].min(), R[mask].max(), G[mask].min(), G[mask].max()
    expected, e1, e2 = np.histogram2d(R[mask].astype(float), G[mask].astype(float), bins=32,
                                      range=[(low1 - 0.5, high1 + 0.5), (low2 - 0.5, high2 + 0.5)])
    np.testing.assert_array_equal(ds.cytofluorogram.values, expected)
    np.testing.assert_allclose(ds.cytofluorogram_edges1.values, e1)
    np.testing.assert_allclose(ds.cytofluorogram_edges2.values, e2)
    path = tmp_path / "cytofluorogram.png"
    plot_cytofluorogram(ds, str(path))
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.std() > 0
    with pytest.raises(ValueError, match="cytofluorogram"):
        coefficients(R, G, cytofluorogram=0)


def test_significance_of_a_time_series_is_per_frame_and_lazy_equals_eager():
    from cccdask.coefficients import costes_significance

    rng = np.random.default_rng(21)
    a = np.stack([smooth_noise(rng, (40, 36)) for _ in range(3)])
    b = a + np.stack([smooth_noise(rng, (40, 36)) for _ in range(3)])
    masks = np.ones((3, 40, 36), bool)
    masks[1, :, 20:] = False  # frames with their own masks: fewer blocks in frame 1
    dims = ("t", "y", "x")
    eager = costes_significance(*(xr.DataArray(x, dims=dims) for x in (a, b, masks)), psf_width=4,
                                n_randomizations=20, seed=3)
    lazy = costes_significance(*(xr.DataArray(da.from_array(x, chunks=(2, 16, 36)), dims=dims) for x in (a, b, masks)),
                               psf_width=4, n_randomizations=20, seed=3)
    assert isinstance(lazy.costes_null_r.data, da.Array)
    for name in eager.data_vars:
        np.testing.assert_array_equal(lazy[name].values, eager[name].values, err_msg=name)
    for t in range(3):
        single = costes_significance(a[t], b[t], masks[t], psf_width=4, n_randomizations=20, seed=3)
        assert float(eager.costes_observed_r[t]) == pytest.approx(float(single.costes_observed_r), rel=1e-12)
        assert int(eager.costes_n_blocks[t]) == int(single.costes_n_blocks)
    assert int(eager.costes_n_blocks[1]) == 10 * 5 and int(eager.costes_n_blocks[0]) == 10 * 9


# ---------------------------------------------------------------------------------------
# The tools' rules (JACoP 2.1.4, Coloc 2) on small arrays
# ---------------------------------------------------------------------------------------
def test_below_sets_and_or_by_hand():
    from cccdask.kernels.costes import below_set_sums

    A = np.array([1, 1, 5, 5, 2])
    B = np.array([1, 5, 1, 5, 2])
    table = joint_table(A, B)
    # A < 3 and B < 3: (1, 1), (2, 2)
    np.testing.assert_array_equal(below_set_sums(table, [3.0], [3.0], "and")[:, 0], [2, 3, 3, 5, 5, 5])
    # A < 3 or B < 3: (1, 1), (1, 5), (5, 1), (2, 2)
    np.testing.assert_array_equal(below_set_sums(table, [3.0], [3.0], "or")[:, 0], [4, 9, 9, 31, 31, 15])
    # a chain moving the thresholds in opposite directions (a negative slope), against brute force
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 30, 200), rng.integers(0, 30, 200)
    t1, t2 = np.arange(29, -1, -1.0), np.arange(0, 30.0)
    for combine, rule in (("and", np.logical_and), ("or", np.logical_or)):
        sums = below_set_sums(joint_table(x, y), t1, t2, combine)
        for k in range(30):
            below = rule(x < t1[k], y < t2[k])
            xs, ys = x[below], y[below]
            assert sums[:, k].tolist() == [below.sum(), xs.sum(), ys.sum(), xs @ xs, ys @ ys, xs @ ys]


def test_java_rounding_and_truncation():
    from cccdask.kernels.costes_tools import java_int, java_round

    assert [java_round(v) for v in (2.5, -2.5, 2.4999999, -2.5000001, 0.49999999999999994, np.nan)] == \
        [3, -2, 2, -3, 0, 0]
    assert [java_int(v) for v in (2.9, -2.9, np.nan, 1e12, -1e12)] == [2, -2, 0, 2 ** 31 - 1, -(2 ** 31)]


def test_jacop_candidate_range_truncation_and_ols():
    from java_tool_ports import JacopPort

    rng = np.random.default_rng(198)
    A = rng.integers(0, 40, 60)
    B = np.clip(np.rint(0.6 * A + rng.normal(0, 4, 60) + 5), 8, 20).astype(int)
    a, b = np.polyfit(A.astype(float), B.astype(float), 1)
    result = costes_threshold(joint_table(A, B), "jacop")
    assert result.slope == pytest.approx(a, rel=1e-12) and result.intercept == pytest.approx(b, rel=1e-12)
    # LoopMax = (int) min(Amax, (Bmax - b) / a) = 32 < Amax; LoopMin = (int) max(Amin, (Bmin - b) / a) = 1
    loop_max, loop_min = int(min(A.max(), (B.max() - b) / a)), int(max(A.min(), (B.min() - b) / a))
    assert (loop_max, loop_min) == (32, 1) and A.max() == 39 and A.min() == 0
    candidates = result.curve_threshold1[np.isfinite(result.curve_threshold1)]
    np.testing.assert_array_equal(candidates, np.arange(32, 0, -1))
    # channel 2's threshold is truncated: a 9 + b = 10.94 gives 10 (rounding would give 11)
    assert result.threshold1 == 9 and a * 9 + b == pytest.approx(10.943, abs=1e-3) and result.threshold2 == 10
    # r below each candidate over A < i AND B < (int)(a i + b), and the port's choice
    for i, r in zip(candidates, result.curve_r_below):
        below = (A < i) & (B < int(a * i + b))
        expected = ss.pearsonr(A[below], B[below])[0] if below.sum() > 1 and np.ptp(A[below]) and np.ptp(B[below]) \
            else np.nan
        np.testing.assert_allclose(r, expected, rtol=1e-12)
    port = JacopPort(A, B).CostesAutoThr()
    assert (result.threshold1, result.threshold2) == (port["threshold1"], port["threshold2"])


def test_jacop_ties_go_to_the_lowest_candidate_and_the_first_is_excluded():
    # a low cluster with r = -1 exactly and a high one on the diagonal: every candidate whose
    # below set is the whole low cluster has r = -1 (the same voxels): the lowest is chosen
    low = np.array([(0, 1), (1, 0)] * 5)
    high = np.array([(v, v) for v in range(20, 26)] * 2)
    A, B = np.concatenate([low, high]).T
    result = costes_threshold(joint_table(A, B), "jacop")
    a, b = np.polyfit(A.astype(float), B.astype(float), 1)
    candidates = result.curve_threshold1[np.isfinite(result.curve_threshold1)]
    whole_low = [i for i in candidates if i > 1 and int(a * i + b) > 1 and i <= 20 and int(a * i + b) <= 20]
    r = dict(zip(candidates, result.curve_r_below))
    assert len(whole_low) > 5 and all(r[i] == -1.0 for i in whole_low)
    assert result.threshold1 == min(whole_low) and result.threshold2 == int(a * min(whole_low) + b)
    # the first candidate is never chosen, even at the minimum: one candidate -> start values
    single = costes_threshold(joint_table(np.array([0, 0, 1, 1, 3]), np.array([0, 1, 0, 1, 3])), "jacop")
    assert "start values" in single.note


def test_negative_slope_as_each_tool_reports_it():
    from java_tool_ports import Coloc2Port, JacopPort

    rng = np.random.default_rng(12)
    R = rng.integers(0, 200, 400)
    G = np.clip(220 - R + rng.integers(-30, 30, 400), 0, 255)
    table = joint_table(R, G)
    jacop = costes_threshold(table, "jacop")
    assert jacop.slope < 0 and (jacop.threshold1, jacop.threshold2) == (R.max(), G.max())
    assert "start values" in jacop.note and jacop.reason == ""
    port = JacopPort(R, G).CostesAutoThr()
    assert (port["threshold1"], port["threshold2"]) == (R.max(), G.max())
    for search, implementation in (("stepper", "Costes"), ("bisection", "Bisection")):
        coloc2 = costes_threshold(table, "coloc2", search, (0, 255))
        expected = Coloc2Port(R, G, (0, 255)).execute(implementation)
        assert coloc2.slope < 0 and "slope <= 0" in coloc2.note
        assert (coloc2.threshold1, coloc2.threshold2) == (expected["threshold1"], expected["threshold2"])
    huygens = costes_threshold(table)
    assert np.isnan(huygens.threshold1) and "not positive" in huygens.reason
    ds = coefficients(R.reshape(20, 20), G.reshape(20, 20), threshold="costes", preset="jacop", van_steensel_shifts=None)
    assert ds.threshold.values.tolist() == [R.max(), G.max()] and "start values" in str(ds.costes_note.values)


@pytest.mark.parametrize("seed", range(12))
def test_coloc2_stepper_and_bisection_equal_the_port_on_small_arrays(seed):
    from java_tool_ports import Coloc2Port

    rng = np.random.default_rng(300 + seed)
    n = 150
    signal = rng.gamma(2.0, 20.0, n)
    slope = [0.4, 0.9, 1.0, 1.6][seed % 4]  # either channel walked
    R = np.clip(np.rint(signal + rng.normal(0, 12, n)), 0, 255).astype(np.uint8)
    G = np.clip(np.rint(slope * signal + rng.normal(0, 12, n) + 5), 0, 255).astype(np.uint8)
    table = joint_table(R, G)
    for search, implementation in (("stepper", "Costes"), ("bisection", "Bisection")):
        result = costes_threshold(table, "coloc2", search, (0, 255))
        port = Coloc2Port(R, G, (0, 255))
        expected = port.execute(implementation)
        assert (result.threshold1, result.threshold2) == (expected["threshold1"], expected["threshold2"])
        assert result.slope == pytest.approx(expected["slope"], rel=1e-9)
        if search == "stepper":
            # every step evaluated is on the curve; the last is the first that stops
            steps = result.curve_threshold1[np.isfinite(result.curve_threshold1)]
            assert len(steps) == expected["steps"]
            walked_channel_1 = -1 < result.slope < 1
            if walked_channel_1:
                np.testing.assert_array_equal(steps, R.max() - np.arange(len(steps)))
            # thresholds are Math.round of the line (not truncated)
            m, b = result.slope, result.intercept
            t2 = np.floor(m * result.threshold1 + b + 0.5) if walked_channel_1 else result.threshold2
            t1 = result.threshold1 if walked_channel_1 else np.floor((result.threshold2 - b) / m + 0.5)
            assert (result.threshold1, result.threshold2) == (t1, t2)


def test_coloc2_stepper_stops_at_the_first_r_below_1e4_or_the_first_rise():
    from java_tool_ports import Coloc2Port

    reasons = set()
    for seed in range(16):
        rng = np.random.default_rng(500 + seed)
        if seed % 2:  # a correlated bulk: r below falls until it drops under 1e-4
            signal = rng.gamma(2.0, 20.0, 120)
            R = np.clip(np.rint(signal + rng.normal(0, 15, 120)), 0, 255).astype(np.uint8)
            G = np.clip(np.rint(0.7 * signal + rng.normal(0, 15, 120) + 5), 0, 255).astype(np.uint8)
        else:  # a tight diagonal and a few (low R, high G) voxels: r below wobbles and rises
            v = rng.integers(0, 101, 200)
            R = np.concatenate([v, [20] * 4]).astype(np.uint8)
            G = np.concatenate([np.clip(v + rng.integers(-3, 4, 200), 0, 255), [80] * 4]).astype(np.uint8)
        result = costes_threshold(joint_table(R, G), "coloc2", "stepper", (0, 255))
        r = result.curve_r_below[np.isfinite(result.curve_threshold1)]
        port = Coloc2Port(R, G, (0, 255))
        steps = result.curve_threshold1[np.isfinite(result.curve_threshold1)]
        if -1 < result.slope < 1:  # channel 1 walked: r at each step, directly over the voxels
            line = result.slope * steps + result.intercept
            direct = [port.pearson_below(t1, np.floor(t2 + 0.5)) for t1, t2 in zip(steps, line)]
            np.testing.assert_array_equal(r, direct)  # Coloc 2's arithmetic: to the last bit
        previous = np.concatenate([[1.0], r[:-1]])
        with np.errstate(invalid="ignore"):
            stops = (r < 1e-4) | (r > previous)
        assert not stops[:-1].any() and (stops[-1] or steps[-1] < 2)
        reasons.add("below 1e-4" if r[-1] < 1e-4 else "rise" if r[-1] > previous[-1] else "bottom")
    assert {"below 1e-4", "rise"} <= reasons


def test_coloc2_thresholds_swap_with_the_channels():
    rng = np.random.default_rng(31)
    signal = rng.gamma(2.0, 25.0, (30, 30))
    R = np.clip(np.rint(signal + rng.normal(0, 10, (30, 30))), 0, 255).astype(np.uint8)
    G = np.clip(np.rint(0.6 * signal + rng.normal(0, 10, (30, 30)) + 4), 0, 255).astype(np.uint8)
    for search in ("stepper", "bisection"):
        forward = costes_threshold(joint_table(R.ravel(), G.ravel()), "coloc2", search, (0, 255))
        backward = costes_threshold(joint_table(G.ravel(), R.ravel()), "coloc2", search, (0, 255))
        assert (forward.threshold1, forward.threshold2) == (backward.threshold2, backward.threshold1)


def test_tool_presets_lazy_equals_eager_and_bad_search():
    rng = np.random.default_rng(41)
    R, G = correlated_pair(rng, (40, 36), "uint16", 300.0)
    mask = rng.random(R.shape) > 0.2
    for preset, search in (("coloc2", "stepper"), ("coloc2", "bisection"), ("jacop", None)):
        eager = coefficients(R, G, mask, threshold="costes", preset=preset, costes_search=search,
                             van_steensel_shifts=2, maps=True)
        lazy = coefficients(da.from_array(R, chunks=(9, 11)), da.from_array(G, chunks=(13, 7)),
                            da.from_array(mask, chunks=10), threshold="costes", preset=preset,
                            costes_search=search, van_steensel_shifts=2, maps=True).compute()
        for name in eager.data_vars:
            if eager[name].dtype.kind == "f":
                np.testing.assert_allclose(lazy[name].values, eager[name].values, rtol=1e-10, atol=1e-13,
                                           err_msg=name)
            else:
                np.testing.assert_array_equal(lazy[name].values, eager[name].values, err_msg=name)
        extras = [n for n in eager.data_vars if n.startswith(preset)]
        assert extras and all(np.isfinite(float(eager[n])) for n in extras)
    with pytest.raises(ValueError, match="applies to preset='coloc2' only"):
        coefficients(R, G, threshold="costes", costes_search="bisection")
    with pytest.raises(ValueError, match="costes_search 'golden' is unknown"):
        coefficients(R, G, threshold="costes", preset="coloc2", costes_search="golden")


def test_coloc2_bisection_stays_where_r_below_is_exactly_zero():
    # a square of four voxels below the first step (10, 10): cov = 4 - 4 * 4 / 4 = 0 exactly;
    # r = 0 moves the bisection neither way, so the difference is 0 and it is finished
    R = np.array([0, 0, 2, 2] + list(range(10, 21)))
    G = np.array([0, 2, 0, 2] + list(range(10, 21)))
    result = costes_threshold(joint_table(R, G), "coloc2", "bisection", (0, 255))
    assert (result.slope, result.intercept) == (1.0, 0.0)
    assert (result.threshold1, result.threshold2) == (10, 10)
    assert result.curve_r_below[0] == 0.0 and np.isnan(result.curve_r_below[1])
