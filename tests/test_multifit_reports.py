"""A YAML run with several Gaussians: the store equals cccdask.ccc in memory, and the
report files follow the plugin 2.3.0's layout (Mean1, StDev1, Height1, Confidence1, ...)."""

import csv

import numpy as np
import pytest
import tifffile
import xarray as xr

import cccdask
from cccdask.config import config_from_dict
from cccdask.pipeline import run
from cccdask.synthetic import paired_spots


def _read(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_yaml_run_with_two_gaussians(tmp_path, cluster_address):
    scenes = [paired_spots((256, 256), distance=(0.4, 1.1), psf_sigma=0.1, n_pairs=100, n_decoys=25, seed=s)
              for s in (0, 1)]
    image1, image2, mask = (np.stack([getattr(s, n) for s in scenes]) for n in ("image1", "image2", "mask"))
    tifffile.imwrite(tmp_path / "cells.tif", np.stack([image1, image2], axis=1), imagej=True,
                     resolution=(20, 20), metadata={"axes": "TCYX", "unit": "um", "finterval": 1.0})
    tifffile.imwrite(tmp_path / "mask.tif", mask.astype(np.uint8), imagej=True, resolution=(20, 20),
                     metadata={"axes": "TYX", "unit": "um"})
    config = config_from_dict({
        "input": {"image1": {"path": "cells.tif", "channel": 0}, "image2": {"path": "cells.tif", "channel": 1},
                  "mask": "mask.tif"},
        "ccc": {"n_gaussians": 2},
        "output": {"store": "results.zarr", "reports": True},
        "cluster": {"kind": "address", "address": cluster_address},
    }, base_dir=tmp_path)
    store = run(config)

    ds = xr.open_zarr(store).load()
    expected = cccdask.ccc(xr.DataArray(image1, dims=("t", "y", "x")), xr.DataArray(image2, dims=("t", "y", "x")),
                           mask, spacing=0.05, n_gaussians=2)
    for name in ("mean", "sigma", "height", "confidence", "fit_ok", "component_status", "profile_fit",
                 "profile_fit_component", "r_squared", "rss", "bic", "aic", "n_selected"):
        wanted = expected[name]
        if "distance" in wanted.dims:  # the store keeps the profiles' first points, as float32
            wanted = wanted.isel(distance=slice(0, ds.sizes["distance"]))
        np.testing.assert_array_equal(ds[name].values, wanted.values.astype(ds[name].dtype), err_msg=name)
    assert ds["mean"].dims == ("t", "component") and ds["component"].values.tolist() == [1, 2]
    assert ds["component_status"].attrs["flag_meanings"].split()[:3] == ["ok", "no_start", "no_height"]
    best = int(np.nanargmax(ds["confidence"].values[:, 0]))  # component 1's confidence decides
    assert ds.attrs["best_frame"] == best == int(expected["best_frame"])

    folder = store.parent / "results-reports"
    fits = _read(folder / "fits.csv")
    header = fits[0]
    assert header[2:10] == ["mean1", "sigma1", "height1", "confidence1", "fit_ok1", "component_status1",
                            "mean2", "sigma2"]
    for t in (0, 1):
        row = dict(zip(header, fits[1 + t]))
        assert float(row["mean2"]) == pytest.approx(ds["mean"].values[t, 1], rel=1e-15)
        assert float(row["bic_n2"]) == pytest.approx(ds["bic"].values[t, 1], rel=1e-15)
    results = _read(folder / "results.csv")
    assert results[0] == ["frame", "t", "mean1", "sigma1", "height1", "confidence1", "mean2", "sigma2", "height2",
                          "confidence2", "r_squared", "units"]
    assert float(results[1][2]) == pytest.approx(ds["mean"].values[best, 0], rel=1e-15)
    profile = np.array([[float(v) for v in r] for r in _read(folder / "profile.csv")[1:]])
    assert _read(folder / "profile.csv")[0] == ["distance", "original", "subtracted", "fit", "gaussian1", "gaussian2"]
    np.testing.assert_allclose(profile[:, 4:].T, ds["profile_fit_component"].values[best], rtol=1e-15)
    summary = (folder / "summary.txt").read_text()
    assert "sum of 2 Gaussians; the best frame by component 1's confidence" in summary
    assert f"Gaussian 1: mean {ds['mean'].values[best, 0]:.6g} um" in summary
    for name in ("correlation_plot.png", "heatmap.png"):
        assert (folder / name).stat().st_size > 1000


def test_yaml_refuses_bad_n_gaussians(tmp_path):
    base = {"input": {"image1": {"path": "a.tif"}, "image2": {"path": "b.tif"}}, "output": {"store": "r.zarr"}}
    for bad in (0, 1.5, "two", True):
        with pytest.raises(ValueError, match="ccc.n_gaussians: give a whole number >= 1 or .auto."):
            config_from_dict({**base, "ccc": {"n_gaussians": bad}}, base_dir=tmp_path)
    with pytest.raises(ValueError, match="n_gaussians needs the Gaussian fit"):
        config_from_dict({**base, "ccc": {"n_gaussians": "auto", "mode": "correlation"}}, base_dir=tmp_path)
    assert config_from_dict({**base, "ccc": {"n_gaussians": "auto"}}, base_dir=tmp_path).ccc.max_gaussians == 3
