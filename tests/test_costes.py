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
from cccdask.kernels.costes import costes_threshold


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
