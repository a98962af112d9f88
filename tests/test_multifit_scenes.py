"""cccdask.ccc(..., n_gaussians=...) on scenes with a known answer: two populations, one, none."""

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import cccdask
from cccdask.kernels.multifit import NOT_SELECTED, OK, STATUS_MEANINGS
from cccdask.synthetic import paired_spots

# Poisson scenes (no hard core: a hard core leaves a negative baseline between the
# populations), 0.05 um pixels, PSF sigma 0.1 um, as in the issue. The two-population
# scenes keep the densities on 16x the area (2D: 2048², not 512²) and 8x the
# volume (3D: 96x384x384, not 48x192x192). Chance coincidences of the randomly placed
# spots put bumps of the PSF's width on the profile; relative to the pairs' peak they
# shrink only with the area (not with more spots), so on the frames the near
# population's mean scatters by about 4 % and "within 5 %" is a coin toss (5/10, 7/10
# and 3/10 seeds). On these frames all 10 seeds pass (bench_multifit.py --scenes --large).
TWO_2D_FAR = dict(shape=(2048, 2048), spacing=(0.05, 0.05), distance=(0.4, 1.1), psf_sigma=0.1,
                  n_pairs=6400, n_decoys=1600)
TWO_2D_NEAR = dict(TWO_2D_FAR, distance=(0.5, 0.9))
TWO_3D = dict(shape=(96, 384, 384), spacing=(0.15, 0.05, 0.05), distance=(0.5, 1.2), psf_sigma=0.1,
              n_pairs=2400, n_decoys=320)
TWO_2D_SMALL = dict(TWO_2D_FAR, shape=(512, 512), n_pairs=400, n_decoys=100)  # the frame size
ONE_2D = dict(shape=(512, 512), spacing=(0.05, 0.05), distance=1.0, psf_sigma=0.1, n_pairs=200, n_decoys=50)


def run(scene, seed, **options):
    s = paired_spots(seed=seed, **scene)
    max_distance = 3.0 if len(s.spacing) == 3 else None
    return s, cccdask.ccc(s.image1, s.image2, s.mask, spacing=s.spacing, max_distance=max_distance, **options)


@pytest.mark.parametrize("scene,seed", [(TWO_2D_FAR, 0), (TWO_2D_NEAR, 0), (TWO_3D, 0)],
                         ids=["2d-0.4+1.1", "2d-0.5+0.9", "3d-anisotropic-0.5+1.2"])
def test_two_populations_are_recovered_with_two_gaussians(scene, seed):
    s, ds = run(scene, seed, n_gaussians=2)
    assert ds["mean"].dims == ("component",) and ds["component"].values.tolist() == [1, 2]
    assert ds["fit_ok"].values.tolist() == [True, True]
    assert ds["component_status"].values.tolist() == [OK, OK]
    means = ds["mean"].values
    assert means[0] < means[1]
    np.testing.assert_allclose(means, s.expected_peaks, rtol=0.05)
    assert np.all(ds["confidence"].values > 0)
    # the sum model is the sum of its components
    np.testing.assert_allclose(ds["profile_fit"].values, ds["profile_fit_component"].sum("component").values,
                               rtol=1e-12)
    # one Gaussian fits neither population; the second lowers the residuals
    assert ds["rss"].sel(n_components=2) < ds["rss"].sel(n_components=1)
    assert int(ds["n_selected"]) == 2


def test_one_population_gives_one_component_and_rejects_the_second():
    s, ds = run(ONE_2D, 0, n_gaussians=2)
    assert ds["fit_ok"].values.tolist() == [True, False]
    assert float(ds["mean"][0]) == pytest.approx(s.expected_peak, rel=0.03)
    # rejected by the component checks (its height does not stand out from the noise)
    assert STATUS_MEANINGS[int(ds["component_status"][1])].startswith("no_height")
    assert np.isnan(ds["mean"][1]) and np.isnan(ds["confidence"][1])
    # "auto" keeps one Gaussian
    _, auto = run(ONE_2D, 0, n_gaussians="auto", max_gaussians=3)
    assert int(auto["n_selected"]) == 1
    assert auto["component_status"].values.tolist()[1:] == [NOT_SELECTED, NOT_SELECTED]


@pytest.mark.parametrize("n", [2, 3])
def test_pure_noise_fails_every_component(n):
    rng = np.random.default_rng(n)
    image1, image2 = rng.normal(size=(2, 256, 256)).astype(np.float32)
    ds = cccdask.ccc(image1, image2, spacing=0.05, n_gaussians=n, contributions=True)
    assert not ds["fit_ok"].any()
    assert np.all(ds["component_status"].values != OK)
    assert ds["mean"].isnull().all() and ds["confidence"].isnull().all()
    assert ds["profile_fit"].isnull().all() and np.isnan(float(ds["r_squared"]))
    assert not ds["contribution1"].any()


def test_one_gaussian_output_is_unchanged():
    s = paired_spots(seed=2, **ONE_2D)
    default = cccdask.ccc(s.image1, s.image2, s.mask, spacing=s.spacing)
    explicit = cccdask.ccc(s.image1, s.image2, s.mask, spacing=s.spacing, n_gaussians=1)
    xr.testing.assert_identical(default, explicit)
    assert "component" not in default.dims


def test_auto_picks_two_on_two_populations_and_reports_every_n_tried():
    s, ds = run(TWO_2D_SMALL, 0, n_gaussians="auto", max_gaussians=2)
    assert int(ds["n_selected"]) == 2
    n = ds.sizes["distance"]
    for m in (1, 2):
        rss = float(ds["rss"].sel(n_components=m))
        kept = 3 * m  # every component of both fits is supported in this scene
        assert float(ds["bic"].sel(n_components=m)) == pytest.approx(n * np.log(rss / n) + kept * np.log(n))
        assert float(ds["aic"].sel(n_components=m)) == pytest.approx(n * np.log(rss / n) + 2 * kept)
    assert ds["bic"].sel(n_components=2) < ds["bic"].sel(n_components=1)


def test_contribution_weight_and_lazy_series_match():
    s = paired_spots(seed=0, **dict(TWO_2D_SMALL, shape=(256, 256), n_pairs=100, n_decoys=25))
    eager = cccdask.ccc(s.image1, s.image2, s.mask, spacing=s.spacing, n_gaussians=2, intermediates=True)
    ok = eager["fit_ok"].values
    assert ok.any()
    d = np.hypot(*np.meshgrid(eager["shift_y"].values, eager["shift_x"].values, indexing="ij"))
    h, mu, sd = (eager[name].values[ok] for name in ("height", "mean", "sigma"))
    weight = sum(hi * np.exp(-0.5 * ((d - m) / si) ** 2) for hi, m, si in zip(h, mu, sd)) / h.sum()
    np.testing.assert_allclose(eager["ccf_gauss"].values, eager["ccf_subtracted"].values * weight,
                               rtol=2e-6, atol=1e-7)
    # a lazy time series of the same frame twice: the same numbers, component dims per frame
    stack = lambda a: xr.DataArray(da.from_array(np.stack([a, a]), chunks=(1,) + a.shape), dims=("t", "y", "x"))
    lazy = cccdask.ccc(stack(s.image1), stack(s.image2), s.mask, spacing=s.spacing, n_gaussians=2)
    assert lazy["mean"].dims == ("t", "component")
    computed = lazy.compute()
    for t in (0, 1):
        np.testing.assert_array_equal(computed["mean"].values[t], eager["mean"].values)
        np.testing.assert_array_equal(computed["component_status"].values[t], eager["component_status"].values)
    assert int(computed["best_frame"]) == 0  # equal frames: the earliest, by component 1's confidence


def test_bad_n_gaussians_are_refused():
    image = np.zeros((32, 32), dtype=np.float32)
    for bad in (0, -1, 1.5, "two", True):
        with pytest.raises(ValueError, match="n_gaussians must be a whole number >= 1"):
            cccdask.ccc(image, image, n_gaussians=bad)
    with pytest.raises(ValueError, match="max_gaussians must be a whole number >= 1"):
        cccdask.ccc(image, image, n_gaussians="auto", max_gaussians=0)
    with pytest.raises(ValueError, match="n_gaussians needs the Gaussian fit"):
        cccdask.ccc(image, image, mode="correlation", n_gaussians=2)
