"""cccdask.ccc end to end: known answers, time series, laziness, contributions, bad input."""

import sys

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

import cccdask
from cccdask.frames import InvalidFrameError
from cccdask.kernels.ccc import ccc_frame
from cccdask.synthetic import paired_spots, paired_spots_series

# Well-separated pairs (a hard-core scene: no chance coincidences near the pairing
# distance), so the fitted mean is set by the pairs, not by the luck of the draw.
SCENE_2D = dict(shape=(256, 256), spacing=(0.05, 0.05), distance=1.0, psf_sigma=0.1,
                n_pairs=20, n_decoys=5, min_separation=1.5)
SCENE_3D = dict(shape=(40, 96, 96), spacing=(0.15, 0.05, 0.05), distance=0.7, psf_sigma=0.08,
                n_pairs=20, n_decoys=5, min_separation=1.0)


@pytest.mark.parametrize("scene", [SCENE_2D, SCENE_3D], ids=["2d", "3d-anisotropic"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paired_spots_give_the_known_distance(scene, seed):
    s = paired_spots(seed=seed, **scene)
    ds = cccdask.ccc(s.image1, s.image2, s.mask, spacing=s.spacing)
    assert bool(ds["fit_ok"])
    # the radial profile of a peak at d peaks at d - s^2/(2d) (ring) or d - s^2/d (shell)
    assert float(ds["mean"]) == pytest.approx(s.expected_peak, rel=0.03)
    # the hard core leaves a negative baseline (no chance pairs to subtract), which
    # narrows the part of the peak above zero: sigma only within a factor here
    assert 0.4 * s.correlation_sigma < float(ds["sigma"]) < 1.5 * s.correlation_sigma
    assert float(ds["confidence"]) > 0.2
    assert float(ds["r_squared"]) > 0.5


def test_dense_random_pairs_in_2d():
    # no hard core: chance coincidences from 125 spots per channel, still within 3%
    s = paired_spots((384, 384), distance=1.0, psf_sigma=0.1, n_pairs=100, n_decoys=25, seed=4)
    ds = cccdask.ccc(s.image1, s.image2, s.mask, spacing=s.spacing)
    assert float(ds["mean"]) == pytest.approx(s.expected_peak, rel=0.03)
    # a Poisson scene has no baseline: sigma is the correlation width sqrt(2) psf
    assert float(ds["sigma"]) == pytest.approx(s.correlation_sigma, rel=0.2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_independent_spots_give_low_confidence(seed):
    kwargs = dict(shape=(256, 256), distance=1.0, psf_sigma=0.1, n_pairs=100, n_decoys=25, seed=seed)
    independent = cccdask.ccc(*_scene(paired_spots(independent=True, **kwargs)))
    paired = cccdask.ccc(*_scene(paired_spots(**kwargs)))
    conf = float(independent["confidence"])
    assert np.isnan(conf) or conf < 0.1
    assert float(paired["confidence"]) > 2 * (0 if np.isnan(conf) else conf)


def _scene(s):
    return xr.DataArray(s.image1, dims=("y", "x"), coords={"y": np.arange(s.image1.shape[0]) * s.spacing[0],
                                                         "x": np.arange(s.image1.shape[1]) * s.spacing[1]}), \
        s.image2, s.mask


def test_spacing_from_dataarray_coordinates():
    s = paired_spots(**SCENE_2D)
    coords = {"y": ("y", np.arange(256) * 0.05, {"units": "um"}), "x": ("x", np.arange(256) * 0.05, {"units": "um"})}
    a1 = xr.DataArray(s.image1, dims=("y", "x"), coords=coords)
    a2 = xr.DataArray(s.image2, dims=("y", "x"), coords=coords)
    ds = cccdask.ccc(a1, a2, s.mask)
    explicit = cccdask.ccc(s.image1, s.image2, s.mask, spacing=(0.05, 0.05))
    assert ds.attrs["units"] == "um" and ds["distance"].attrs["units"] == "um"
    np.testing.assert_allclose(ds["profile_subtracted"], explicit["profile_subtracted"])
    assert float(ds["mean"]) == float(explicit["mean"])


def test_time_series_tracks_the_distance_and_picks_the_best_frame():
    distances = [0.6, 0.8, 1.0, 1.2]
    scene = {k: v for k, v in SCENE_2D.items() if k != "distance"}
    scene.update(min_separation=1.6, n_pairs=15)
    i1, i2, mask, truth = paired_spots_series(len(distances), distances=distances, **scene)
    dims = ("t", "y", "x")
    lazy = cccdask.ccc(
        xr.DataArray(da.from_array(i1, chunks=(1, 256, 256)), dims=dims),
        xr.DataArray(da.from_array(i2, chunks=(1, 256, 256)), dims=dims),
        xr.DataArray(mask, dims=dims),
        spacing=SCENE_2D["spacing"],
    )
    assert isinstance(lazy["mean"].data, da.Array)
    result = lazy.compute()
    sigma2 = 2 * SCENE_2D["psf_sigma"] ** 2
    np.testing.assert_allclose(result["mean"].values, truth - sigma2 / (2 * truth), rtol=0.03)
    conf = result["confidence"].values
    assert int(result["best_frame"]) == int(np.argmax(conf))
    # frame by frame calls agree with the series
    for t in range(len(distances)):
        one = cccdask.ccc(i1[t], i2[t], mask[t], spacing=SCENE_2D["spacing"])
        assert float(one["mean"]) == pytest.approx(float(result["mean"][t]), rel=1e-12)
    # no confidence mode: identical fits, best frame by smallest sigma
    nc = cccdask.ccc(xr.DataArray(i1, dims=dims), xr.DataArray(i2, dims=dims), xr.DataArray(mask, dims=dims),
                     mode="no_confidence", spacing=SCENE_2D["spacing"])
    np.testing.assert_allclose(nc["mean"].values, result["mean"].values, rtol=1e-6)
    assert "confidence" not in nc and "profile_original" not in nc
    assert nc.attrs["best_frame"] == int(np.argmin(nc["sigma"].values))


def test_best_frame_ties_keep_the_earliest_and_skip_failed_fits():
    from cccdask.ccc import best_frame

    assert best_frame(np.array([0.2, 0.5, 0.5, np.nan]), "full") == 1
    assert best_frame(np.array([np.nan, 0.3, 0.1, 0.1]), "no_confidence") == 2
    assert best_frame(np.array([np.nan, np.nan]), "full") == -1


def test_each_frame_is_one_task_computing_all_outputs():
    i1, i2, mask, _ = paired_spots_series(3, shape=(64, 64), distance=0.5, n_pairs=10, n_decoys=2)
    dims = ("t", "y", "x")
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return ccc_frame(*args, **kwargs)

    arrays = [xr.DataArray(da.from_array(a, chunks=(1, 64, 64)), dims=dims) for a in (i1, i2)]
    module = sys.modules["cccdask.ccc"]  # the package's `ccc` attribute is the function

    original = module.ccc_frame
    module.ccc_frame = counted
    try:
        ds = cccdask.ccc(*arrays, mask[0], contributions=True, intermediates=True, spacing=0.05)
        assert not calls  # building the graph computes nothing
        with dask.config.set(scheduler="sync"):
            ds.compute()
    finally:
        module.ccc_frame = original
    assert len(calls) == 3


def mirror_single(i, n):
    """imglib2's extendMirrorSingle, written out: reflect about the edge voxel until inside."""
    if n == 1:
        return 0
    while not 0 <= i < n:
        i = -i if i < 0 else 2 * (n - 1) - i
    return i


def brute_filter(image, kernel, lo, correlate):
    """out(p) = sum_s K(s) image(p -/+ s), the image mirrored without repeating its edge voxel."""
    out = np.zeros_like(image, dtype=float)
    for j in np.ndindex(*kernel.shape):
        s = np.array(j) + np.array(lo)
        shift = s if correlate else -s
        take = [[mirror_single(p + sh, n) for p in range(n)] for sh, n in zip(shift, image.shape)]
        out += kernel[j] * image[np.ix_(*take)]
    return out


@pytest.mark.parametrize("max_distance,tiled", [(None, False), (0.3, False), (0.3, True)])
def test_contributions_equal_direct_sums(max_distance, tiled):
    # spots 4 px from the border, partners 6 px away, G reaching 10 px: the mirror counts
    s = paired_spots((24, 30), spacing=(0.05, 0.05), distance=0.3, psf_sigma=0.05, n_pairs=6, n_decoys=0,
                     noise=0.0, margin=0.2, seed=3)
    inputs = [da.from_array(a, chunks=(12, 15)) for a in (s.image1, s.image2, s.mask)] if tiled else \
        [s.image1, s.image2, s.mask]
    ds = cccdask.ccc(*inputs, spacing=s.spacing, max_distance=max_distance, contributions=True,
                     intermediates=True, dtype="float64", memory_budget=1 if tiled else None,
                     tile_shape=(12, 15) if tiled else None)
    if tiled:
        assert any("tiled-contributions" in str(k) for k in dict(ds.__dask_graph__()))
        ds = ds.compute(scheduler="sync")
    assert bool(ds["fit_ok"])
    i1m, i2m = np.where(s.mask, s.image1, 0.0), np.where(s.mask, s.image2, 0.0)
    g = ds["ccf_gauss"].values
    lo = [int(round(c[0] / sp)) for c, sp in zip((ds.shift_y.values, ds.shift_x.values), s.spacing)]
    # G = S x Gaussian(d(s)) with |mean| and sigma
    d = np.sqrt(ds.shift_y.values[:, None] ** 2 + ds.shift_x.values[None, :] ** 2)
    expected_g = ds["ccf_subtracted"].values * np.exp(-0.5 * ((d - abs(float(ds["mean"]))) / float(ds["sigma"])) ** 2)
    np.testing.assert_allclose(g, expected_g, rtol=1e-10, atol=1e-14)
    c1 = brute_filter(i2m, g, lo, correlate=False) * i1m
    c2 = brute_filter(i1m, g, lo, correlate=True) * i2m
    np.testing.assert_allclose(ds["contribution1"].values, c1, rtol=1e-8, atol=1e-12 * np.abs(c1).max())
    np.testing.assert_allclose(ds["contribution2"].values, c2, rtol=1e-8, atol=1e-12 * np.abs(c2).max())


def test_correlation_mode_has_no_fit():
    s = paired_spots(**SCENE_2D)
    ds = cccdask.ccc(s.image1, s.image2, s.mask, spacing=s.spacing, mode="correlation")
    full = cccdask.ccc(s.image1, s.image2, s.mask, spacing=s.spacing)
    assert set(ds.data_vars) == {"profile_original"}
    np.testing.assert_allclose(ds["profile_original"], full["profile_original"])


def test_unfittable_frame_is_flagged_not_raised():
    rng = np.random.default_rng(0)
    i1 = rng.random((64, 64))
    i2 = np.zeros((64, 64))  # S is identically 0: nothing to fit
    ds = cccdask.ccc(i1, i2, contributions=True)
    assert not bool(ds["fit_ok"])
    for name in ("mean", "sigma", "height", "confidence", "r_squared"):
        assert np.isnan(float(ds[name]))
    assert np.all(np.isnan(ds["profile_fit"].values))
    assert np.all(ds["contribution1"].values == 0)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda a: cccdask.ccc(a, a[:-1]), "differ in shape"),
        (lambda a: cccdask.ccc(a, a, np.zeros_like(a)), "no voxel inside"),
        (lambda a: cccdask.ccc(np.where(a > 0.5, np.nan, a), a), "NaN or infinite"),
        (lambda a: cccdask.ccc(np.where(a > 0.5, np.inf, a), a), "NaN or infinite"),
        (lambda a: cccdask.ccc(a, a, spacing=(0.1, 0)), "positive and finite"),
        (lambda a: cccdask.ccc(a, a, spacing=(0.1, -1)), "positive and finite"),
        (lambda a: cccdask.ccc(a, a, spacing=(0.1, 0.1, 0.1)), "spatial axes"),
        (lambda a: cccdask.ccc(a[0], a[0]), "1 dims"),
        (lambda a: cccdask.ccc(a[None, None], a[None, None]), "4 dims"),
        (lambda a: cccdask.ccc(a, a, mode="fast"), "unknown mode"),
        (lambda a: cccdask.ccc(a, a, mask=np.ones((3, 3))), "mask shape"),
        (lambda a: cccdask.ccc(a.astype(complex), a), "not a real number type"),
        (lambda a: cccdask.ccc(a, a, max_distance=-1), "max_distance"),
        (lambda a: cccdask.ccc(a, a, mode="correlation", contributions=True), "need the Gaussian fit"),
    ],
)
def test_bad_input_names_the_problem(call, message):
    a = np.random.default_rng(0).random((16, 16))
    with pytest.raises(ValueError, match=message):
        call(a)


def test_lazy_invalid_frame_raises_at_compute():
    a = da.zeros((16, 16), chunks=8)
    ds = cccdask.ccc(a, a, np.zeros((16, 16)))
    with pytest.raises(InvalidFrameError, match="no voxel inside"):
        ds.compute(scheduler="sync")


def test_contributions_cropped_to_the_gaussian_support_equal_the_full_kernel():
    from cccdask.kernels.contributions import contribution_images

    # psf 0.05: a first fit with sigma > s_x (at 0.04 only the retries fitted, and no window
    # is valid once identical windows count once)
    s = paired_spots((160, 200), spacing=(0.05, 0.05), distance=0.3, psf_sigma=0.05, n_pairs=30, n_decoys=5,
                     min_separation=0.5, seed=5)
    ds = cccdask.ccc(s.image1, s.image2, s.mask, spacing=s.spacing, contributions=True, intermediates=True,
                     dtype="float64")
    reach = abs(float(ds["mean"])) + 39 * float(ds["sigma"])
    assert reach < 0.05 * 70  # the support is smaller than the frame: the crop is active
    i1m, i2m = np.where(s.mask, s.image1, 0.0), np.where(s.mask, s.image2, 0.0)
    c1, c2 = contribution_images(i1m, i2m, ds["ccf_gauss"].values, (-80, -100))
    np.testing.assert_allclose(ds["contribution1"].values, c1, rtol=1e-6, atol=1e-7 * np.abs(c1).max())
    np.testing.assert_allclose(ds["contribution2"].values, c2, rtol=1e-6, atol=1e-7 * np.abs(c2).max())
