"""cccdask.coefficients against independent computations.

scipy.stats (pearsonr, spearmanr, kendalltau), scikit-image's colocalization measures
where the definitions coincide, and brute force written from the spec's formulas for
the rest (object variants, soft thresholds, ICQ, Van Steensel, maps).
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.stats as ss
import xarray as xr
from skimage import measure

from cccdask import coefficients
from cccdask.kernels.coefficients import COEFFICIENT_NAMES, MAP_NAMES, JointTable, Moments, joint_table
from cccdask.kernels.coefficients import van_steensel as kernels
from cccdask.kernels.coefficients.ranks import _ranks_of_ties, _weighted_inversions


# ---------------------------------------------------------------------------------------
# Brute force from the spec's formulas (no code shared with the package)
# ---------------------------------------------------------------------------------------
def corrected(v, level):
    v = v.astype(np.float64)
    return v if level is None else np.maximum(v - level, 0.0)


def weight(v, level, soft_range):
    v = v.astype(np.float64)
    t = 0.0 if level is None else level
    if soft_range == 0:
        return (v > t).astype(float)
    lo, hi = t - soft_range / 2, t + soft_range / 2
    out = np.empty_like(v)
    for i, value in np.ndenumerate(v):
        if value <= lo:
            out[i] = 0.0
        elif value >= hi:
            out[i] = 1.0
        else:
            out[i] = (value - lo) / soft_range
    return out


def shifted_pairs(r, g, inside, dx, axis):
    """Pairs (r at x - dx, g at x) along ``axis``, both inside, no wrap-around."""
    rs, gs = [], []
    length = r.shape[axis]
    for x in range(length):
        xs = x - dx
        if 0 <= xs < length:
            both = np.take(inside, xs, axis) & np.take(inside, x, axis)
            rs.append(np.take(r, xs, axis)[both])
            gs.append(np.take(g, x, axis)[both])
    return np.concatenate(rs), np.concatenate(gs)


def brute_force(R, G, mask=None, t1=None, t2=None, rho1=0.0, rho2=0.0, shifts=3, axis=-1):
    inside = np.ones(R.shape, bool) if mask is None else mask != 0
    r, g = corrected(R, t1), corrected(G, t2)
    wr, wg = weight(R, t1, rho1), weight(G, t2, rho2)
    obj = inside & ((R > (t1 or 0)) | (G > (t2 or 0)))
    ri, gi, wri, wgi = r[inside], g[inside], wr[inside], wg[inside]
    out = {
        "pearson": ss.pearsonr(ri, gi)[0],
        "object_pearson": ss.pearsonr(r[obj], g[obj])[0],
        "spearman": ss.spearmanr(ri, gi)[0],
        "object_spearman": ss.spearmanr(r[obj], g[obj])[0],
        "kendall_tau": ss.kendalltau(ri, gi)[0],
        "overlap": np.sum(ri * gi) / np.sqrt(np.sum(ri**2) * np.sum(gi**2)),
        "k1": np.sum(ri * gi) / np.sum(ri**2),
        "k2": np.sum(ri * gi) / np.sum(gi**2),
        "m1": np.sum(ri * wgi) / np.sum(ri),
        "m2": np.sum(gi * wri) / np.sum(gi),
        "intersection": np.sum(wri * wgi) / (np.sum(wri) + np.sum(wgi) - np.sum(wri * wgi)),
        "i1": np.sum(wri * wgi) / np.sum(wri),
        "i2": np.sum(wri * wgi) / np.sum(wgi),
        "icq": np.mean((ri - ri.mean()) * (gi - gi.mean()) > 0) - 0.5,
    }
    out["van_steensel"] = np.array(
        [ss.pearsonr(*shifted_pairs(r, g, inside, dx, axis))[0] for dx in range(-shifts, shifts + 1)]
    )
    return out


def assert_matches(ds, expected, rtol=1e-10, atol=1e-12):
    for name, value in expected.items():
        np.testing.assert_allclose(ds[name].values, value, rtol=rtol, atol=atol, err_msg=name)


def two_channel(rng, shape, kind="poisson"):
    if kind == "poisson":  # integer, many ties
        a = rng.poisson(4, shape)
        b = rng.poisson(2, shape) + (a * rng.integers(0, 2, shape))
        return a.astype(np.uint16), b.astype(np.uint16)
    a = rng.gamma(2.0, 10.0, shape)
    b = 0.5 * a + rng.gamma(2.0, 10.0, shape)
    return a.astype(np.float32), b.astype(np.float64)


# ---------------------------------------------------------------------------------------
# Every coefficient against scipy / brute force
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["poisson", "gamma"])
@pytest.mark.parametrize(
    "t1, t2, rho1, rho2",
    [(None, None, 0.0, 0.0), (2, 3, 0.0, 0.0), (3.5, 1.0, 2.0, 3.0), (None, 4, 0.0, 5.0)],
)
def test_all_coefficients_match_brute_force(kind, t1, t2, rho1, rho2):
    rng = np.random.default_rng(7)
    R, G = two_channel(rng, (23, 31), kind)
    if kind == "gamma":
        t1, t2 = (None if t is None else 10 * t for t in (t1, t2))
        rho1, rho2 = 10 * rho1, 10 * rho2
    mask = rng.random(R.shape) > 0.2
    ds = coefficients(R, G, mask, threshold=(t1, t2), threshold_range=(rho1, rho2), van_steensel_shifts=4)
    assert_matches(ds, brute_force(R, G, mask, t1, t2, rho1, rho2, shifts=4))
    assert (ds.nan_reason.values == "").all()


def test_no_threshold_is_the_textbook_definitions_of_scipy():
    rng = np.random.default_rng(0)
    R, G = two_channel(rng, (40, 30))
    ds = coefficients(R, G, van_steensel_shifts=None)
    x, y = R.ravel().astype(float), G.ravel().astype(float)
    assert float(ds.pearson) == pytest.approx(ss.pearsonr(x, y)[0], rel=1e-12)
    assert float(ds.spearman) == pytest.approx(ss.spearmanr(x, y)[0], rel=1e-12)
    assert float(ds.kendall_tau) == pytest.approx(ss.kendalltau(x, y)[0], rel=1e-12)
    assert "van_steensel" not in ds


def test_skimage_measures_where_definitions_coincide():
    rng = np.random.default_rng(3)
    R, G = two_channel(rng, (37, 29))
    mask = rng.random(R.shape) > 0.3
    t1, t2 = 2, 1
    ds = coefficients(R, G, mask, threshold=(t1, t2), van_steensel_shifts=None)
    r, g = corrected(R, t1), corrected(G, t2)
    # Pearson and the overlap coefficient of the background-corrected channels
    assert float(ds.pearson) == pytest.approx(measure.pearson_corr_coeff(r, g, mask)[0], rel=1e-10)
    assert float(ds.overlap) == pytest.approx(measure.manders_overlap_coeff(r, g, mask), rel=1e-10)
    # Manders with a hard threshold: corrected channel over the other channel's binary mask
    assert float(ds.m1) == pytest.approx(measure.manders_coloc_coeff(r, G > t2, mask), rel=1e-10)
    assert float(ds.m2) == pytest.approx(measure.manders_coloc_coeff(g, R > t1, mask), rel=1e-10)
    # intersection coefficients: fraction of one binary mask overlapping the other
    assert float(ds.i1) == pytest.approx(measure.intersection_coeff(R > t1, G > t2, mask), rel=1e-10)
    assert float(ds.i2) == pytest.approx(measure.intersection_coeff(G > t2, R > t1, mask), rel=1e-10)


def test_spearman_threshold_ties_background_into_one_rank():
    rng = np.random.default_rng(5)
    R, G = two_channel(rng, (30, 30))
    ds = coefficients(R, G, threshold=3, van_steensel_shifts=None)
    background_as_one_value = np.where(R > 3, R.astype(int), -1), np.where(G > 3, G.astype(int), -1)
    expected = ss.spearmanr(background_as_one_value[0].ravel(), background_as_one_value[1].ravel())[0]
    assert float(ds.spearman) == pytest.approx(expected, rel=1e-12)


def test_van_steensel_along_z_and_y_in_3d():
    rng = np.random.default_rng(11)
    R, G = two_channel(rng, (9, 8, 10))
    mask = rng.random(R.shape) > 0.25
    for axis_name, axis in (("z", 0), ("y", 1)):
        ds = coefficients(R, G, mask, threshold=1, van_steensel_shifts=3, van_steensel_axis=axis_name)
        expected = brute_force(R, G, mask, 1, 1, shifts=3, axis=axis)["van_steensel"]
        np.testing.assert_allclose(ds.van_steensel.values, expected, rtol=1e-10, atol=1e-12)
        assert ds["shift"].attrs["axis"] == axis_name


def test_van_steensel_peaks_at_the_known_shift():
    rng = np.random.default_rng(2)
    base = rng.random((20, 60))
    R = base[:, 5:55]
    G = base[:, 2:52]  # G(x) = base[x + 2] = R(x - 3): R shifted by +3 matches G
    ds = coefficients(R, G, van_steensel_shifts=6)
    assert int(ds["shift"][np.argmax(ds.van_steensel.values)]) == 3
    assert float(ds.van_steensel.sel(shift=3)) == pytest.approx(1.0, abs=1e-12)


def test_maps_sum_to_their_coefficients_and_match_per_voxel_formulas():
    rng = np.random.default_rng(4)
    R, G = two_channel(rng, (21, 19))
    mask = rng.random(R.shape) > 0.3
    t1, t2, rho1, rho2 = 1, 2, 2.0, 1.0
    ds = coefficients(R, G, mask, threshold=(t1, t2), threshold_range=(rho1, rho2), maps=True,
                      van_steensel_shifts=None)
    for name in MAP_NAMES:
        assert float(ds[f"{name}_map"].sum()) == pytest.approx(float(ds[name]), rel=1e-10, abs=1e-12)
        assert (ds[f"{name}_map"].values[~mask] == 0).all()
    r, g = corrected(R, t1), corrected(G, t2)
    ri, gi = r[mask], g[mask]
    pearson_map = (r - ri.mean()) * (g - gi.mean()) / np.sqrt(np.sum((ri - ri.mean()) ** 2) * np.sum((gi - gi.mean()) ** 2))
    np.testing.assert_allclose(ds.pearson_map.values[mask], pearson_map[mask], rtol=1e-10, atol=1e-14)
    rank1, rank2 = ss.rankdata(ri), ss.rankdata(gi)
    mean_rank = (mask.sum() + 1) / 2
    spearman_map = (rank1 - mean_rank) * (rank2 - mean_rank) / np.sqrt(
        np.sum((rank1 - mean_rank) ** 2) * np.sum((rank2 - mean_rank) ** 2))
    np.testing.assert_allclose(ds.spearman_map.values[mask], spearman_map, rtol=1e-10, atol=1e-14)
    wr, wg = weight(R, t1, rho1), weight(G, t2, rho2)
    np.testing.assert_allclose(ds.m1_map.values[mask], (ri * wg[mask]) / ri.sum(), rtol=1e-10, atol=1e-12)
    union = wr[mask].sum() + wg[mask].sum() - (wr * wg)[mask].sum()
    np.testing.assert_allclose(ds.intersection_map.values[mask], (wr * wg)[mask] / union, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------
# Undefined values and invalid inputs
# ---------------------------------------------------------------------------------------
def test_undefined_coefficients_are_nan_with_a_reason_and_never_raise():
    rng = np.random.default_rng(8)
    R, G = two_channel(rng, (12, 14))
    empty = coefficients(R, G, np.zeros(R.shape, bool))
    assert np.isnan([float(empty[n]) for n in COEFFICIENT_NAMES]).all()
    assert np.isnan(empty.van_steensel.values).all()
    assert set(empty.nan_reason.values.tolist()) == {"empty mask", "undefined at 41 of 41 shifts: no voxels"}

    constant = coefficients(R, np.full(R.shape, 5, np.uint16), van_steensel_shifts=2)
    assert np.isnan(float(constant.pearson))
    assert "zero variance" in str(constant.nan_reason.sel(coefficient="pearson").values)
    assert "all values of a channel are tied" in str(constant.nan_reason.sel(coefficient="kendall_tau").values)
    assert float(constant.m2) == pytest.approx(np.sum(5 * (R > 0)) / (5 * R.size), rel=1e-12)

    above_all = coefficients(R, G, threshold=1000, van_steensel_shifts=None)
    for name in ("k1", "m1", "intersection", "i1", "object_pearson", "object_spearman"):
        assert np.isnan(float(above_all[name])), name
        assert str(above_all.nan_reason.sel(coefficient=name).values) != ""

    with_nan = R.astype(np.float64)
    with_nan[3, 4] = np.nan
    ds = coefficients(with_nan, G)
    assert np.isnan([float(ds[n]) for n in COEFFICIENT_NAMES]).all()
    assert "1 NaN/Inf voxels" in str(ds.nan_reason.sel(coefficient="pearson").values)
    masked_out = np.ones(R.shape, bool)
    masked_out[3, 4] = False  # the NaN voxel outside the mask does not matter
    ok = coefficients(with_nan, G, masked_out, van_steensel_shifts=2)
    assert_matches(ok, brute_force(np.nan_to_num(with_nan), G, masked_out, shifts=2))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(threshold_range=-1.0), "threshold_range"),
        (dict(threshold_range=(0.0, -2.0)), "channel 2"),
        (dict(threshold=(1, 2, 3)), "pair"),
        (dict(threshold="otsu"), "not supported"),
        (dict(threshold=float("nan")), "finite"),
        (dict(van_steensel_shifts=-1), "van_steensel_shifts"),
        (dict(van_steensel_axis="z"), "van_steensel_axis"),
    ],
)
def test_invalid_arguments_raise_value_errors_that_name_the_problem(kwargs, message):
    a = np.ones((5, 6))
    with pytest.raises(ValueError, match=message):
        coefficients(a, a, **kwargs)


def test_invalid_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        coefficients(np.ones((5, 6)), np.ones((5, 7)))
    with pytest.raises(ValueError, match="not a real number type"):
        coefficients(np.ones((5, 6)), np.full((5, 6), "a"))


# ---------------------------------------------------------------------------------------
# Time series, laziness, cluster
# ---------------------------------------------------------------------------------------
def test_time_series_gives_frame_by_frame_values():
    rng = np.random.default_rng(9)
    frames = [two_channel(rng, (15, 17)) for _ in range(3)]
    R = xr.DataArray(np.stack([f[0] for f in frames]), dims=("t", "y", "x"), coords={"t": [0.0, 1.5, 3.0]})
    G = xr.DataArray(np.stack([f[1] for f in frames]), dims=("t", "y", "x"))
    masks = rng.random((3, 15, 17)) > 0.2
    masks[1] = False  # one frame with an empty mask does not stop the others
    ds = coefficients(R, G, masks, threshold=(1, 2), maps=True, van_steensel_shifts=2)
    assert ds.pearson.dims == ("t",) and list(ds.t.values) == [0.0, 1.5, 3.0]
    assert ds.pearson_map.dims == ("t", "y", "x")
    for i in range(3):
        single = coefficients(frames[i][0], frames[i][1], masks[i], threshold=(1, 2), maps=True,
                              van_steensel_shifts=2)
        for name in single.data_vars:
            np.testing.assert_array_equal(ds[name].isel(t=i).values, single[name].values, err_msg=name)
    assert str(ds.nan_reason.sel(t=1.5, coefficient="pearson").values) == "empty mask"


def test_lazy_time_series_in_any_t_chunking_gives_frame_by_frame_values():
    """Input chunks of several frames (split per frame), per-frame masks chunked otherwise,
    and per-frame results packed several frames per chunk (a remainder at the end)."""
    rng = np.random.default_rng(19)
    frames = [two_channel(rng, (15, 17)) for _ in range(5)]
    R = np.stack([f[0] for f in frames])
    G = np.stack([f[1] for f in frames])
    masks = rng.random((5, 15, 17)) > 0.3
    frame_bytes = 15 * 17 * (R.itemsize + G.itemsize)
    with dask.config.set({"array.chunk-size": 2 * frame_bytes + 1}):  # 2 frames per result chunk
        ds = coefficients(*(xr.DataArray(da.from_array(a, chunks=c), dims=("t", "y", "x")) for a, c in (
            (R, (3, 8, 17)), (G, (2, 15, 6)), (masks, (4, 15, 17)))), threshold=1, van_steensel_shifts=3)
    assert ds.pearson.chunks == ((2, 2, 1),)
    assert ds.van_steensel.chunks == ((2, 2, 1), (7,))
    computed = ds.compute()
    for i in range(5):
        single = coefficients(frames[i][0], frames[i][1], masks[i], threshold=1, van_steensel_shifts=3)
        for name in single.data_vars:
            if single[name].dtype.kind == "f":
                np.testing.assert_allclose(computed[name].isel(t=i).values, single[name].values, rtol=1e-10, atol=1e-12,
                                           err_msg=name)
            else:
                np.testing.assert_array_equal(computed[name].isel(t=i).values, single[name].values, err_msg=name)


def test_dask_input_is_lazy_and_equals_numpy():
    rng = np.random.default_rng(10)
    R, G = two_channel(rng, (24, 26))
    eager = coefficients(R, G, threshold=1, maps=True, van_steensel_shifts=3)
    lazy = coefficients(da.from_array(R, chunks=(7, 5)), da.from_array(G, chunks=(6, 9)), threshold=1,
                        maps=True, van_steensel_shifts=3)
    assert all(isinstance(v.data, da.Array) for v in lazy.data_vars.values())
    computed = lazy.compute()
    for name in eager.data_vars:
        if eager[name].dtype.kind == "f":
            np.testing.assert_allclose(computed[name].values, eager[name].values, rtol=1e-10, atol=1e-12, err_msg=name)
        else:
            np.testing.assert_array_equal(computed[name].values, eager[name].values, err_msg=name)


def test_runs_on_a_distributed_cluster():
    distributed = pytest.importorskip("distributed")
    rng = np.random.default_rng(12)
    R, G = two_channel(rng, (20, 22))
    expected = brute_force(R, G, None, 1, 1, shifts=2)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster):
        ds = coefficients(da.from_array(R, chunks=8), da.from_array(G, chunks=8), threshold=1,
                          van_steensel_shifts=2).compute()
    assert_matches(ds, expected)


# ---------------------------------------------------------------------------------------
# Kernels alone
# ---------------------------------------------------------------------------------------
def test_chan_merge_equals_direct_moments_in_any_order():
    rng = np.random.default_rng(13)
    x = rng.normal(1e4, 1.0, 500)  # large offset: a naive sum-of-squares would cancel
    y = 0.3 * x + rng.normal(0, 1.0, 500)
    parts = np.split(rng.permutation(500), [3, 50, 51, 300])
    merged = Moments.empty()
    for idx in parts:
        merged = merged.merge(Moments.from_weighted(x[idx], y[idx], np.ones(len(idx))))
    assert float(merged.n) == 500
    assert float(merged.mean_x) == pytest.approx(x.mean(), rel=1e-14)
    assert float(merged.m2_x) == pytest.approx(np.sum((x - x.mean()) ** 2), rel=1e-10)
    assert float(merged.c_xy) == pytest.approx(np.sum((x - x.mean()) * (y - y.mean())), rel=1e-10)
    assert float(merged.pearson()[0]) == pytest.approx(ss.pearsonr(x, y)[0], rel=1e-10)


def test_weighted_inversions_and_tied_ranks_against_brute_force():
    rng = np.random.default_rng(14)
    codes = rng.integers(0, 37, 60)
    weights = rng.integers(1, 5, 60)
    brute = sum(weights[i] * weights[j] for i in range(60) for j in range(i + 1, 60) if codes[i] > codes[j])
    assert _weighted_inversions(codes, weights) == brute
    values = rng.integers(0, 9, 40)
    counts = rng.integers(1, 4, 40)
    distinct, index, ties = JointTable(values, np.zeros(40, np.int64), counts).marginals[0]
    expanded = np.repeat(values, counts)
    np.testing.assert_allclose(_ranks_of_ties(ties)[index], ss.rankdata(expanded)[np.cumsum(counts) - 1])
    np.testing.assert_array_equal(distinct[index], values)


def test_joint_table_counts_every_pair():
    rng = np.random.default_rng(15)
    # a bulk of values near a background level (counted in a dense window) and bright
    # outliers far from it (sorted), with negative values in the second channel
    bulk = np.concatenate([rng.normal(1000, 30, 4000), rng.uniform(0, 60000, 300)])
    bulk2 = np.concatenate([rng.normal(-200, 90, 4000), rng.uniform(-30000, 30000, 300)])
    for a, b in [(rng.integers(0, 300, 500).astype(np.uint16), rng.integers(-5, 5, 500).astype(np.int8)),
                 (rng.integers(0, 4, 500).astype(np.float32), rng.normal(size=500)),
                 (bulk.astype(np.uint16), bulk2.astype(np.int16)),
                 # float32 (coded by their bits), negative and positive, and float64 values
                 # float32 holds exactly, against integers
                 ((bulk2 / 7).astype(np.float32), rng.integers(-3, 3, 4300).astype(np.int32)),
                 ((bulk2 / 8).astype(np.float32).astype(np.float64), rng.normal(size=4300))]:
        pairs, counts = np.unique(np.stack([a.astype(float), b.astype(float)]), axis=1, return_counts=True)
        half = a.size // 3
        for table in (joint_table(a, b), joint_table(a[:half], b[:half]).merge(joint_table(a[half:], b[half:]))):
            np.testing.assert_array_equal(table.values1, pairs[0])
            np.testing.assert_array_equal(table.values2, pairs[1])
            np.testing.assert_array_equal(table.counts, counts)


@pytest.mark.parametrize("level", [None, 2])
@pytest.mark.parametrize("kind", ["poisson", "gamma"])
def test_shifted_moments_mix_full_and_masked_rows(kind, level, monkeypatch):
    """Rows wholly inside the mask take the fast path, the others the masked one; float
    chunks go in strips. Every shift's moments equal the brute-force pairs' moments."""
    monkeypatch.setattr(kernels, "STRIP_VOXELS", 40)  # several strips of float rows
    rng = np.random.default_rng(21)
    R, G = two_channel(rng, (12, 37), kind)
    mask = np.ones(R.shape, bool)
    mask[3, 5:9] = False  # rows 3 and 7 partly outside, the rest wholly inside
    mask[7, ::3] = False
    if kind == "gamma":
        R = R.astype(np.float64)
        R[9, 4] = np.nan  # a voxel that does not count: row 9 takes the masked path
    inside = mask & np.isfinite(R) & np.isfinite(G)
    shifts = np.arange(-6, 7)
    thresholds = kernels.Thresholds(kernels.ChannelThreshold(level), kernels.ChannelThreshold(level))
    moments = kernels.shifted_moments(R, G, mask, thresholds, shifts, (0, R.shape[1]))
    for k, dx in enumerate(shifts):
        r, g = shifted_pairs(corrected(R, level), corrected(G, level), inside, dx, -1)
        assert moments.n[k] == r.size
        np.testing.assert_allclose(moments.mean_x[k], r.mean(), rtol=1e-12)
        np.testing.assert_allclose(moments.mean_y[k], g.mean(), rtol=1e-12)
        np.testing.assert_allclose(moments.m2_x[k], np.sum((r - r.mean()) ** 2), rtol=1e-10)
        np.testing.assert_allclose(moments.m2_y[k], np.sum((g - g.mean()) ** 2), rtol=1e-10)
        np.testing.assert_allclose(moments.c_xy[k], np.sum((r - r.mean()) * (g - g.mean())), rtol=1e-10,
                                   atol=1e-12 * np.sqrt(np.sum((r - r.mean()) ** 2) * np.sum((g - g.mean()) ** 2)))
