"""The report plots and tables carry the numbers: frame times, fit values with units, quality."""

import numpy as np
import pytest
import xarray as xr

import cccdask
from cccdask.io.reports import correlation_plot, heatmap, heatmap_cells, per_frame_table, summary_text, time_edges
from cccdask.synthetic import paired_spots

TIMES = np.array([0.0, 1.0, 3.0, 7.0])  # uneven frame times (s)


def _series(offsets=(0.0, 0.0, 0.0, 0.0), times=TIMES):
    scenes = [paired_spots(shape=(128, 128), distance=0.3, psf_sigma=0.1, n_pairs=16, n_decoys=3, seed=i)
              for i in range(len(times))]
    t = xr.Variable("t", times, attrs={"units": "s"})
    image1 = xr.DataArray(np.stack([s.image1 + b for s, b in zip(scenes, offsets)]), dims=("t", "y", "x"),
                          coords={"t": t})
    image2 = xr.DataArray(np.stack([s.image2 + b for s, b in zip(scenes, offsets)]), dims=("t", "y", "x"),
                          coords={"t": t})
    ds = cccdask.ccc(image1, image2, scenes[0].mask, spacing=(0.05, 0.05), max_distance=1.5)
    ds = ds.assign_coords(frame=("t", np.arange(len(times))))
    ds["frame_status"] = ("t", np.ones(len(times), dtype=np.int8))
    ds["frame_error"] = ("t", np.array([""] * len(times), dtype=object))
    return ds


def test_time_edges_are_midpoints_between_frame_times():
    edges = time_edges(TIMES)
    assert edges.tolist() == [-0.5, 0.5, 2.0, 5.0, 9.0]
    # every frame inside its own cell; 0..7 s evenly: the last cell is 6.5-7.5 (not 6.125-7)
    assert np.all((edges[:-1] < TIMES) & (TIMES < edges[1:]))
    assert time_edges(np.arange(8.0))[-2:].tolist() == [6.5, 7.5]
    assert time_edges(np.array([4.0])).tolist() == [3.5, 4.5]


def test_heatmap_cells_follow_the_frame_times_and_the_plot_is_written(tmp_path):
    ds = _series()
    columns, t_edges, d_edges = heatmap_cells(ds)
    assert columns.tolist() == [0, 1, 2, 3]
    assert t_edges.tolist() == [-0.5, 0.5, 2.0, 5.0, 9.0]
    reach = np.abs(ds["mean"].values) + 5 * ds["sigma"].values
    assert d_edges[0] == 0 and d_edges[-1] == pytest.approx(min(1.5, np.percentile(reach, 95)), abs=1e-12)
    heatmap(ds, tmp_path / "heatmap.png")
    assert (tmp_path / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_python_api_keeps_time_and_profile_units():
    ds = _series()
    assert ds["t"].attrs["units"] == "s" and ds["t"].values.tolist() == TIMES.tolist()
    for name in ("profile_original", "profile_subtracted", "profile_fit"):
        assert ds[name].attrs["units"] == "intensity^2 / um^2"
    assert ds["mean"].attrs["units"] == "um" and ds["confidence"].attrs["units"] == "1"


def test_correlation_plot_title_carries_the_fit(tmp_path, monkeypatch):
    ds = _series()
    titles = []
    import matplotlib.axes

    original = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title",
                        lambda self, text, *a, **k: titles.append(text) or original(self, text, *a, **k))
    best = ds.attrs["best_frame"]
    frame = 2 if best != 2 else 3
    correlation_plot(ds, frame, tmp_path / "plot.png")
    correlation_plot(ds, best, tmp_path / "best.png")
    one = ds.isel(t=frame)
    expected = (f"frame {frame} (t = {TIMES[frame]:g} s)\nmean {float(one['mean']):.3g} um, sigma {float(one['sigma']):.3g} um, "
                f"confidence {float(one['confidence']):.3g}, R² {float(one['r_squared']):.3g}")
    assert titles[0] == expected
    assert titles[1].startswith(f"frame {best} (t = {TIMES[best]:g} s), best frame\nmean")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_quality_in_the_table_and_the_summary():
    ds = _series(offsets=(0.0, 0.0, 20.0, 20.0))
    header, rows = per_frame_table(ds)
    quality = [row[header.index("quality")] for row in rows]
    assert quality[:2] == ["ok", "ok"]
    assert all("low_confidence" in q and "flat_profile" in q for q in quality[2:])
    text = summary_text(ds)
    assert "Quality warnings in 4 frame(s): low_confidence 2" in text
    assert "If the images have an unsubtracted background, set preprocess.background" in text
