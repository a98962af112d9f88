"""End-to-end runs on a real cluster: files in, store out, equal to cccdask.ccc in memory."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import xarray as xr
import yaml

import cccdask
from cccdask.config import config_from_dict
from cccdask.io.store import FRAME_INVALID, FRAME_MISSING, FRAME_OK, read_completion, read_store_attrs
from cccdask.io.fingerprint import InputChangedError
from cccdask.pipeline import StoreConflictError, run
from cccdask.synthetic import paired_spots_series
from series_files import write_cells, write_paired_series

CCC_VARIABLES = ("profile_original", "profile_subtracted", "profile_fit", "mean", "sigma", "height",
                 "confidence", "r_squared", "fit_ok")


def _config(tmp_path, address, input_section, store="results.zarr", reports=False, **sections):
    data = {"input": input_section, "output": {"store": str(tmp_path / store), "reports": reports},
            "cluster": {"kind": "address", "address": address}}
    data.update(sections)
    return config_from_dict(data, base_dir=tmp_path)


def _assert_equal_to_ccc(stored: xr.Dataset, expected: xr.Dataset, names=CCC_VARIABLES):
    for name in names:  # profiles are stored in float32 (output.profile_range: auto)
        np.testing.assert_array_equal(stored[name].values, expected[name].values.astype(stored[name].dtype),
                                      err_msg=name)


def _write_imagej(path, image1, image2, pixel, interval):
    data = np.stack([image1, image2], axis=1)  # T, C, Y, X
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / pixel, 1 / pixel),
                     metadata={"axes": "TCYX", "unit": "um", "finterval": interval})


@pytest.fixture(scope="module")
def tiff_series(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiff")
    image1, image2, mask, distances = paired_spots_series(
        4, distances=[0.3, 0.45, 0.6, 0.75], shape=(96, 96), spacing=(0.04, 0.04), psf_sigma=0.08, n_pairs=60)
    # frame 2 is unusable: its mask is empty (recorded as data, not a crash)
    mask[2] = False
    _write_imagej(folder / "cells.tif", image1, image2, pixel=0.04, interval=2.5)
    tifffile.imwrite(folder / "mask.tif", mask.astype(np.uint8), imagej=True,
                     resolution=(1 / 0.04, 1 / 0.04), metadata={"axes": "TYX", "unit": "um"})
    return folder, image1, image2, mask


@pytest.fixture(scope="module")
def tiff_run(tiff_series, cluster_address):
    folder, image1, image2, mask = tiff_series
    config = _config(folder, cluster_address, {
        "image1": {"path": "cells.tif", "channel": 0},
        "image2": {"path": "cells.tif", "channel": 1},
        "mask": "mask.tif",
    }, reports=True, ccc={"max_distance": 1.5, "contributions": True})
    return run(config), config


def test_imagej_tiff_time_series_equals_ccc_in_memory(tiff_series, tiff_run):
    folder, image1, image2, mask = tiff_series
    store, _ = tiff_run
    stored = xr.open_zarr(store)
    # spacing and frame interval come from the TIFF's ImageJ metadata
    assert stored.attrs["spacing"] == [0.04, 0.04]
    np.testing.assert_allclose(stored["t"].values, 2.5 * np.arange(4))
    np.testing.assert_array_equal(stored["frame"].values, np.arange(4))

    valid = [0, 1, 3]
    expected = cccdask.ccc(
        xr.DataArray(image1[valid], dims=("t", "y", "x")), xr.DataArray(image2[valid], dims=("t", "y", "x")),
        mask[valid], spacing=(0.04, 0.04), max_distance=1.5, contributions=True,
    )
    np.testing.assert_array_equal(stored["distance"].values, expected["distance"].values)
    _assert_equal_to_ccc(stored.isel(t=valid), expected, CCC_VARIABLES + ("contribution1", "contribution2"))
    assert stored["contribution1"].encoding["chunks"] == (1, 96, 96)

    # the empty-mask frame is a result with its reason, not a crash; its values are NaN
    status = stored["frame_status"].values
    assert list(status) == [FRAME_OK, FRAME_OK, FRAME_INVALID, FRAME_OK]
    assert "no voxel" in str(stored["frame_error"].values[2]) or "empty" in str(stored["frame_error"].values[2])
    assert np.isnan(stored["mean"].values[2])
    assert stored.attrs["cccdask_status"] == "complete"
    assert stored.attrs["best_frame"] == int(np.nanargmax(np.where(np.isnan(stored["confidence"].values), -np.inf,
                                                                   stored["confidence"].values)))
    # OME-Zarr metadata names the image-sized arrays with their physical scale
    multiscales = stored.attrs["ome"]["multiscales"]
    assert [m["name"] for m in multiscales] == ["contribution1", "contribution2"]
    assert multiscales[0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [2.5, 0.04, 0.04]


def test_reports_beside_the_store(tiff_run):
    store, _ = tiff_run
    folder = store.parent / "results-reports"
    stored = xr.open_zarr(store)
    import csv

    rows = list(csv.DictReader((folder / "fits.csv").open()))
    assert [int(r["frame"]) for r in rows] == [0, 1, 2, 3]
    np.testing.assert_allclose([float(r["mean"]) for r in rows], stored["mean"].values, equal_nan=True)
    assert rows[2]["status"] == "invalid frame" and rows[2]["reason"]
    best = stored.attrs["best_frame"]
    result = next(csv.DictReader((folder / "results.csv").open()))
    assert int(result["frame"]) == best
    assert float(result["sigma"]) == pytest.approx(float(stored["sigma"].values[best]))
    profile = np.loadtxt(folder / "profile.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(profile[:, 2], stored["profile_subtracted"].values[best])
    for name in ("correlation_plot.png", "heatmap.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (folder / "summary.txt").read_text()
    assert "frame 2: invalid frame" in summary
    low = np.flatnonzero(stored["confidence"].values < 0.1)
    for i in low:
        assert f"frame {i}: confidence" in summary


def test_workflow_script_plots_a_store(tiff_run, tmp_path):
    store, _ = tiff_run
    script = Path(__file__).parents[1] / "workflows" / "inspect_results.py"
    png = tmp_path / "plot.png"
    done = subprocess.run([sys.executable, str(script), str(store), str(png)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = xr.open_zarr(store).attrs["best_frame"]
    assert f"best frame {best}" in done.stdout


def test_ome_zarr_3d_time_series_equals_ccc_in_memory(tmp_path, cluster_address):
    spacing = (0.1, 0.05, 0.05)
    image1, image2, mask, _ = paired_spots_series(
        3, distances=[0.3, 0.35, 0.4], shape=(12, 40, 40), spacing=spacing, psf_sigma=0.06, n_pairs=25, n_decoys=5)
    write_cells(tmp_path, image1, image2, spacing, mask, units="um", time_interval=30.0, time_units="s")
    config = _config(tmp_path, cluster_address, {
        "image1": {"path": "cells.ome.zarr", "channel": 0},
        "image2": {"path": "cells.ome.zarr", "channel": 1},
        "mask": "mask.ome.zarr",
    }, ccc={"max_distance": 0.8}, execution={"frames_per_task": 2})
    stored = xr.open_zarr(run(config))
    assert stored.attrs["spacing"] == list(spacing)
    np.testing.assert_allclose(stored["t"].values, [0.0, 30.0, 60.0])
    expected = cccdask.ccc(xr.DataArray(image1, dims=("t", "z", "y", "x")),
                           xr.DataArray(image2, dims=("t", "z", "y", "x")), mask, spacing=spacing, max_distance=0.8)
    np.testing.assert_array_equal(stored["distance"].values, expected["distance"].values)
    _assert_equal_to_ccc(stored, expected)
    assert stored["mean"].encoding["chunks"] == (3,)  # small results: one block of up to 1024 frames
    assert list(stored["frame_status"].values) == [FRAME_OK] * 3


def test_coefficients_in_the_same_run(tmp_path, cluster_address):
    from cccdask.coefficients import coefficients

    image1, image2, mask, _ = paired_spots_series(2, distances=[0.3, 0.5], shape=(64, 64), n_pairs=30)
    np.save(tmp_path / "c1.npy", image1)
    np.save(tmp_path / "c2.npy", image2)
    np.save(tmp_path / "mask.npy", mask[0].astype(np.uint8))
    config = _config(tmp_path, cluster_address, {
        "image1": {"path": "c1.npy", "dims": "tyx"}, "image2": {"path": "c2.npy", "dims": "tyx"},
        "mask": "mask.npy", "spacing": [0.05, 0.05], "units": "um",
    }, ccc={"mode": "no_confidence", "max_distance": 1.0}, coefficients={"threshold": 0.1, "van_steensel_shifts": 5})
    stored = xr.open_zarr(run(config))
    expected = coefficients(xr.DataArray(image1, dims=("t", "y", "x")), xr.DataArray(image2, dims=("t", "y", "x")),
                            mask[0], threshold=0.1, van_steensel_shifts=5, spacing=(0.05, 0.05)).compute()
    for name in ("pearson", "m1", "m2", "overlap", "van_steensel"):
        np.testing.assert_allclose(stored[name].values, expected[name].values, rtol=1e-12, atol=1e-12, err_msg=name)
    assert "confidence" not in stored
    expected_ccc = cccdask.ccc(xr.DataArray(image1, dims=("t", "y", "x")), xr.DataArray(image2, dims=("t", "y", "x")),
                               mask[0], spacing=(0.05, 0.05), mode="no_confidence", max_distance=1.0)
    _assert_equal_to_ccc(stored, expected_ccc, ("mean", "sigma", "profile_subtracted"))


def test_existing_store_of_another_config_is_refused(tiff_series, tiff_run, cluster_address):
    folder, *_ = tiff_series
    store, _ = tiff_run
    before = read_completion(store).status.copy()
    other = _config(folder, cluster_address, {
        "image1": {"path": "cells.tif", "channel": 0}, "image2": {"path": "cells.tif", "channel": 1},
        "mask": "mask.tif"}, reports=True, ccc={"max_distance": 1.0})
    with pytest.raises(StoreConflictError, match="different config"):
        run(other)
    np.testing.assert_array_equal(read_completion(store).status, before)
    assert read_store_attrs(store)["cccdask_status"] == "complete"


def _complete_frames(store: Path) -> np.ndarray:
    try:
        return read_completion(store).status != FRAME_MISSING
    except Exception:  # store not created yet
        return np.zeros(0, dtype=bool)


def test_run_killed_midway_resumes_to_the_same_store(tmp_path, cluster_address):
    n = 20
    image1, image2, mask = write_paired_series(tmp_path, n, np.linspace(0.3, 0.9, n), shape=(288, 288), n_pairs=120,
                                               with_mask=True)
    section = {"image1": {"path": "cells.ome.zarr", "channel": 0}, "image2": {"path": "cells.ome.zarr", "channel": 1},
               "mask": "mask.ome.zarr"}
    common = {"input": section, "ccc": {"contributions": True}, "execution": {"frames_per_task": 1},
              "cluster": {"kind": "address", "address": cluster_address}}
    killed_output = {"store": "killed.zarr", "reports": False}
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump({**common, "output": killed_output}))
    store = tmp_path / "killed.zarr"

    process = subprocess.Popen([sys.executable, "-m", "cccdask", "run", str(config_file)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and not _complete_frames(store).any():
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    complete = _complete_frames(store)
    assert 0 < complete.sum() < n, "the run was not caught midway"
    assert read_store_attrs(store)["cccdask_status"] == "running"

    clean = run(config_from_dict({**common, "output": {"store": "clean.zarr", "reports": False}}, base_dir=tmp_path))
    clean_ds = xr.open_zarr(clean)
    # frames recorded complete by the killed run already hold their final data
    killed_ds = xr.open_zarr(store)
    done = np.flatnonzero(complete)
    for name in ("mean", "profile_subtracted", "contribution1"):
        np.testing.assert_array_equal(killed_ds[name].values[done], clean_ds[name].values[done])
    # a frame's own chunks (contributions; small results are written in blocks by the driver)
    chunk_times = {i: os.stat(store / "contribution1" / "c" / str(i) / "0" / "0").st_mtime_ns for i in done}

    resumed = run(config_from_dict({**common, "output": killed_output}, base_dir=tmp_path))
    resumed_ds = xr.open_zarr(resumed)
    # only the missing frames were computed again
    assert {i: os.stat(store / "contribution1" / "c" / str(i) / "0" / "0").st_mtime_ns for i in done} == chunk_times
    assert resumed_ds.attrs["cccdask_status"] == "complete"
    for name in list(clean_ds.data_vars) + list(clean_ds.coords):
        np.testing.assert_array_equal(resumed_ds[name].values, clean_ds[name].values, err_msg=name)


def test_frame_that_cannot_fit_a_worker_is_refused_before_any_work(tmp_path, cluster_address):
    import zarr

    from cccdask.pipeline import FrameTooLargeError

    # 2 frames of 16384 x 16384 float32 (1 GiB per channel per frame), never written: no data on disk
    group = zarr.open_group(str(tmp_path / "huge.zarr"), mode="w", zarr_format=3)
    group.create_array("image", shape=(2, 2, 16384, 16384), chunks=(1, 1, 16384, 16384), dtype="float32",
                       dimension_names=["t", "c", "y", "x"])
    config = _config(tmp_path, cluster_address, {
        "image1": {"path": "huge.zarr", "channel": 0}, "image2": {"path": "huge.zarr", "channel": 1}})
    with pytest.raises(FrameTooLargeError) as caught:
        run(config)
    message = str(caught.value)
    assert "(16384, 16384)" in message and "per thread" in message and "1.50 GiB" in message
    needed = float(message.split("needs about ")[1].split(" GiB")[0])
    # at least the two float32 channels plus their padded FFTs (1.5 x 1.5 x the frame, complex halves)
    assert needed > 2 * 16384**2 * 4 * (1 + 2.25) / 2**30
    assert not (tmp_path / "results.zarr").exists()


def test_a_worker_killed_mid_run_loses_nothing(tmp_path, killable_cluster_address):
    import threading

    from distributed import Client

    n = 24
    image1, image2, mask = write_paired_series(tmp_path, n, np.linspace(0.3, 0.8, n), shape=(256, 256), n_pairs=100)
    cluster_address = killable_cluster_address
    config = _config(tmp_path, cluster_address, {
        "image1": {"path": "cells.ome.zarr", "channel": 0}, "image2": {"path": "cells.ome.zarr", "channel": 1}},
        ccc={"contributions": True, "max_distance": 1.5}, execution={"frames_per_task": 1})
    store = tmp_path / "results.zarr"
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.setdefault("path", run(config)))
    with Client(cluster_address) as client:
        pids = list(client.run(os.getpid).values())
        runner.start()
        deadline = time.monotonic() + 300  # generous: the first task may take long on a loaded machine
        while time.monotonic() < deadline and not _complete_frames(store).any():
            time.sleep(0.01)
        recorded_at_kill = _complete_frames(store).sum()
        os.kill(pids[0], signal.SIGKILL)  # its tasks run again on the other worker (or its restart)
        runner.join(600)
    assert 0 < recorded_at_kill < n, "the worker was not killed mid-run"
    assert outcome.get("path") == store
    stored = xr.open_zarr(store)
    assert stored.attrs["cccdask_status"] == "complete"
    expected = cccdask.ccc(xr.DataArray(image1, dims=("t", "y", "x")), xr.DataArray(image2, dims=("t", "y", "x")),
                           spacing=(0.05, 0.05), max_distance=1.5, contributions=True)
    _assert_equal_to_ccc(stored, expected, CCC_VARIABLES + ("contribution1",))


def test_single_frame_with_background_subtraction(tmp_path, cluster_address):
    image1, image2, mask, _ = paired_spots_series(1, distances=[0.4], shape=(80, 80), n_pairs=40)
    image1, image2 = image1[0] + 5.0, image2[0] + 3.0
    tifffile.imwrite(tmp_path / "one.tif", np.stack([image1, image2]), imagej=True, resolution=(20, 20),
                     metadata={"axes": "CYX", "unit": "um"})
    config = _config(tmp_path, cluster_address, {
        "image1": {"path": "one.tif", "channel": 0}, "image2": {"path": "one.tif", "channel": 1}},
        reports=True, ccc={"max_distance": 1.2},
        preprocess={"background": {"image1": {"method": "median"}, "image2": {"method": "constant", "value": 3.0}}})
    stored = xr.open_zarr(run(config))
    assert stored.sizes["t"] == 1 and stored.attrs["time_series"] is False
    np.testing.assert_allclose(stored["background1"].values, [np.median(image1)], rtol=1e-6)
    np.testing.assert_array_equal(stored["background2"].values, [3.0])
    expected = cccdask.ccc(image1 - np.float32(np.median(image1)), image2 - np.float32(3.0), spacing=(0.05, 0.05),
                           max_distance=1.2)
    for name in ("mean", "sigma", "confidence", "profile_subtracted"):
        np.testing.assert_allclose(stored[name].values[0], expected[name].values, rtol=1e-5, err_msg=name)
    reports = tmp_path / "results-reports"
    assert (reports / "correlation_plot.png").exists() and not (reports / "heatmap.png").exists()


def test_a_task_that_fails_leaves_an_incomplete_store_that_resumes(tmp_path, cluster_address):
    from cccdask.pipeline import PipelineError

    n = 4
    image1, image2, mask = write_paired_series(tmp_path, n, [0.3, 0.4, 0.5, 0.6], shape=(64, 64), n_pairs=30)
    chunk = tmp_path / "cells.ome.zarr" / "0" / "c" / "2" / "1" / "0" / "0"  # frame 2, channel 1
    good = chunk.read_bytes()
    chunk.write_bytes(b"not a blosc chunk")
    config = _config(tmp_path, cluster_address, {
        "image1": {"path": "cells.ome.zarr", "channel": 0}, "image2": {"path": "cells.ome.zarr", "channel": 1}},
        ccc={"max_distance": 1.0}, execution={"retries": 0})
    with pytest.raises(PipelineError, match=r"frames 2-2: .*the store .* is incomplete|frames 2-2"):
        run(config)
    store = tmp_path / "results.zarr"
    assert list(read_completion(store).status) == [FRAME_OK, FRAME_OK, FRAME_MISSING, FRAME_OK]
    assert xr.open_zarr(store).attrs["cccdask_status"] == "running"
    chunk.write_bytes(good)
    with pytest.raises(InputChangedError, match="its chunk files changed in size"):  # repaired = changed
        run(config)
    stored = xr.open_zarr(run(config, overwrite=True))
    expected = cccdask.ccc(xr.DataArray(image1, dims=("t", "y", "x")), xr.DataArray(image2, dims=("t", "y", "x")),
                           spacing=(0.05, 0.05), max_distance=1.0)
    _assert_equal_to_ccc(stored, expected)
    assert stored.attrs["cccdask_status"] == "complete"


def test_frames_over_the_task_budget_are_correlated_tile_by_tile(tmp_path, cluster_address):
    image1, image2, mask = write_paired_series(tmp_path, 2, [0.3, 0.45], shape=(384, 384), n_pairs=150,
                                               with_mask=True)
    config = _config(tmp_path, cluster_address, {
        "image1": {"path": "cells.ome.zarr", "channel": 0}, "image2": {"path": "cells.ome.zarr", "channel": 1},
        "mask": "mask.ome.zarr"}, ccc={"max_distance": 0.6}, execution={"memory_budget": "4MiB"})
    logged = []
    stored = xr.open_zarr(run(config, log=logged.append))
    assert any("tile by tile" in line for line in logged)
    expected = cccdask.ccc(xr.DataArray(image1, dims=("t", "y", "x")), xr.DataArray(image2, dims=("t", "y", "x")),
                           mask, spacing=(0.05, 0.05), max_distance=0.6)
    # the tiled correlation equals the whole-frame one up to float32 rounding
    for name in ("profile_original", "profile_subtracted", "mean", "sigma", "confidence"):
        np.testing.assert_allclose(stored[name].values, expected[name].values, rtol=1e-4, atol=1e-6, err_msg=name)
    assert list(stored["frame_status"].values) == [FRAME_OK, FRAME_OK]
    # without a maximum distance there is no tiled path: refused before any work
    from cccdask.pipeline import FrameTooLargeError

    unbounded = _config(tmp_path, cluster_address, {
        "image1": {"path": "cells.ome.zarr", "channel": 0}, "image2": {"path": "cells.ome.zarr", "channel": 1}},
        store="unbounded.zarr", execution={"memory_budget": "4MiB"})
    with pytest.raises(FrameTooLargeError, match="ccc.max_distance is not set"):
        run(unbounded)
    assert not (tmp_path / "unbounded.zarr").exists()


def test_a_mask_generated_once_is_stored_and_used_for_every_frame(tmp_path, cluster_address):
    from cccdask.preprocess import Preprocessing, generate_shared_mask

    image1, image2, _, _ = paired_spots_series(3, distances=[0.3, 0.4, 0.5], shape=(72, 72), n_pairs=30)
    np.save(tmp_path / "c1.npy", image1)
    np.save(tmp_path / "c2.npy", image2)
    section = {"mask": {"source": "image1", "sigma": 0.1, "method": "otsu", "from_frame": 1}}
    config = _config(tmp_path, cluster_address, {
        "image1": {"path": "c1.npy", "dims": "tyx"}, "image2": {"path": "c2.npy", "dims": "tyx"},
        "spacing": [0.05, 0.05]}, ccc={"max_distance": 1.0}, preprocess=section)
    stored = xr.open_zarr(run(config))
    settings = Preprocessing.model_validate(section)
    generated, _ = generate_shared_mask(image1[1], image2[1], None, settings, (0.05, 0.05))
    np.testing.assert_array_equal(stored["generated_mask"].values != 0, generated)
    expected = cccdask.ccc(xr.DataArray(image1, dims=("t", "y", "x")), xr.DataArray(image2, dims=("t", "y", "x")),
                           generated, spacing=(0.05, 0.05), max_distance=1.0)
    for name in ("mean", "sigma", "profile_subtracted"):
        np.testing.assert_allclose(stored[name].values, expected[name].values, rtol=1e-6, err_msg=name)
