"""The report files of a run with several Gaussians follow the plugin 2.3.0's layout."""

import csv

import numpy as np
import xarray as xr

import cccdask
from cccdask.io.reports import write_reports
from cccdask.io.store import FRAME_OK
from cccdask.synthetic import paired_spots


def _read(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_reports_list_each_component(tmp_path):
    scenes = [paired_spots((256, 256), distance=(0.4, 1.1), psf_sigma=0.1, n_pairs=100, n_decoys=25, seed=s)
              for s in (0, 1)]
    stack = lambda name: xr.DataArray(np.stack([getattr(s, name) for s in scenes]), dims=("t", "y", "x"))
    ds = cccdask.ccc(stack("image1"), stack("image2"), stack("mask"), spacing=0.05, n_gaussians=2)
    ds["frame"] = ("t", np.arange(2))
    ds["frame_status"] = ("t", np.full(2, FRAME_OK, dtype=np.int8))
    ds["frame_error"] = ("t", np.array(["", ""], dtype=object))
    store = tmp_path / "results.zarr"
    ds.to_zarr(store)
    folder = write_reports(store)

    fits = _read(folder / "fits.csv")
    header = fits[0]
    assert header[2:10] == ["mean1", "sigma1", "height1", "confidence1", "fit_ok1", "component_status1",
                            "mean2", "sigma2"]
    for t in (0, 1):
        row = dict(zip(header, fits[1 + t]))
        for i in (0, 1):
            assert float(row[f"mean{i + 1}"]) == ds["mean"].values[t, i] or not ds["fit_ok"].values[t, i]
        assert float(row["bic_n2"]) == ds["bic"].values[t, 1]

    best = int(ds["best_frame"])
    results = _read(folder / "results.csv")
    assert results[0] == ["frame", "t", "mean1", "sigma1", "height1", "confidence1", "mean2", "sigma2", "height2",
                          "confidence2", "r_squared", "units"]
    assert float(results[1][2]) == ds["mean"].values[best, 0]

    profile = _read(folder / "profile.csv")
    assert profile[0] == ["distance", "original", "subtracted", "fit", "gaussian1", "gaussian2"]
    columns = np.array([[float(v) for v in r] for r in profile[1:]])
    np.testing.assert_array_equal(columns[:, 4:].T, ds["profile_fit_component"].values[best])
    np.testing.assert_array_equal(columns[:, 3], ds["profile_fit"].values[best])

    summary = (folder / "summary.txt").read_text()
    assert "sum of 2 Gaussians; the best frame by component 1's confidence" in summary
    assert f"Gaussian 1: mean {ds['mean'].values[best, 0]:.6g} um" in summary
    for name in ("correlation_plot.png", "heatmap.png"):
        assert (folder / name).stat().st_size > 1000
