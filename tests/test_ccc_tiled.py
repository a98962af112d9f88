"""cccdask.ccc takes the tiled path by itself for frames over the memory budget."""

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from distributed import Client, LocalCluster

import cccdask
from cccdask.synthetic import paired_spots_series

SPACING = (0.15, 0.05, 0.05)


@pytest.fixture(scope="module")
def series():
    i1, i2, mask, _ = paired_spots_series(2, shape=(24, 64, 64), spacing=SPACING, distance=0.5,
                                          psf_sigma=0.08, n_pairs=12, n_decoys=3, min_separation=0.8)
    dims = ("t", "z", "y", "x")
    as_dask = lambda a: xr.DataArray(da.from_array(a, chunks=(1, 12, 32, 32)), dims=dims)
    return as_dask(i1), as_dask(i2), as_dask(mask)


def run(series, budget, **kwargs):
    return cccdask.ccc(*series, spacing=SPACING, max_distance=0.6, memory_budget=budget,
                       tile_shape=(12, 32, 32), **kwargs)


def test_tiled_path_equals_the_whole_frame(series):
    tiled = run(series, budget=1, contributions=True, intermediates=True)
    whole = run(series, budget=1e12, contributions=True, intermediates=True)
    names = [n for n in tiled.data_vars if n != "best_frame"]
    # the tiled graph has no whole-frame task
    assert not any("ccc_frame" in str(k) for k in dict(tiled.__dask_graph__()))
    assert any("tiled" in str(k) for k in dict(tiled.__dask_graph__()))
    tiled, whole = tiled.compute(scheduler="sync"), whole.compute(scheduler="sync")
    assert bool(whole["fit_ok"].any())  # a fitted frame, so contributions are non-zero
    for name in names:
        scale = float(np.nanmax(np.abs(whole[name].values.astype(float)))) or 1.0
        np.testing.assert_allclose(tiled[name].values.astype(float), whole[name].values.astype(float),
                                   rtol=1e-4, atol=1e-5 * scale, err_msg=name)
    assert int(tiled["best_frame"]) == int(whole["best_frame"])


def test_tiled_path_on_a_distributed_cluster(series):
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, memory_limit="1GiB") as cluster, Client(cluster):
        tiled = run(series, budget=1).compute()
    whole = run(series, budget=1e12).compute(scheduler="sync")
    np.testing.assert_allclose(tiled["mean"].values, whole["mean"].values, rtol=1e-4)
    np.testing.assert_allclose(tiled["profile_subtracted"].values, whole["profile_subtracted"].values,
                               rtol=1e-4, atol=1e-6 * float(np.abs(whole["profile_subtracted"]).max()))


def test_tiled_path_with_two_gaussians(series):
    # In this small hard-core scene (profile to 0.6 um) no component survives the checks:
    # this checks that the tiled path gives the same statuses, NaNs and zero contributions.
    tiled = run(series, budget=1, contributions=True, n_gaussians=2).compute(scheduler="sync")
    whole = run(series, budget=1e12, contributions=True, n_gaussians=2).compute(scheduler="sync")
    assert tiled["mean"].dims == ("t", "component")
    np.testing.assert_array_equal(tiled["component_status"].values, whole["component_status"].values)
    for name in ("mean", "sigma", "profile_fit_component", "contribution1"):
        finite = np.abs(whole[name].values)[np.isfinite(whole[name].values)]
        scale = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        np.testing.assert_allclose(tiled[name].values, whole[name].values, rtol=1e-4, atol=1e-5 * scale,
                                   err_msg=name)
