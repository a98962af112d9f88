"""Reliability: worker loss, a killed run, per-frame trouble, determinism.

Every store here is compared with a clean run's byte for byte (values, chunk files,
array metadata, attrs except versions and how the work ran), on real processes: the
session's scheduler with two worker processes on 127.0.0.1, `cccdask run`
subprocesses killed with SIGKILL, in-process thread pools and the synchronous kind.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
import zarr
from typer.testing import CliRunner

import cccdask
from cccdask.cli import app
from cccdask.config import config_from_dict
from cccdask.frames import InvalidFrameError
from cccdask.io.store import (
    FRAME_FIT_FAILED,
    FRAME_INVALID,
    FRAME_MISSING,
    FRAME_OK,
    read_completion,
)
from cccdask.pipeline import FIT_FAILED_REASON, run
from cccdask.synthetic import paired_spots_series
from kill_points import kill_environment
from series_files import write_cells, write_paired_series

SPACING = (0.05, 0.05)
N_FRAMES = 8
runner = CliRunner()
# attrs that say how and with what the work ran, not what it wrote
RUN_ATTRS = ("versions", "config")


# --------------------------------------------------------------------------- helpers


def _files(store: Path) -> dict[str, bytes]:
    """Every file of a store but the root metadata (its attrs are compared separately)."""
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and str(p.relative_to(store)) != "zarr.json"}


def _analysis_config(attrs: dict) -> dict:
    config = json.loads(attrs["config"])
    return {k: v for k, v in config.items() if k not in ("cluster", "output")}


def assert_same_store(store: Path, reference: Path) -> None:
    """Bit-identical results: every array's values and chunk files, metadata and attrs."""
    got = zarr.open_group(str(store), mode="r", use_consolidated=False)
    want = zarr.open_group(str(reference), mode="r", use_consolidated=False)
    assert sorted(got.array_keys()) == sorted(want.array_keys())
    for name in want.array_keys():
        a, b = got[name], want[name]
        assert (a.dtype, a.shape, a.chunks) == (b.dtype, b.shape, b.chunks), name
        va, vb = a[...], b[...]
        if va.dtype.kind in "OTU":
            assert va.tolist() == vb.tolist(), name
        else:
            assert va.tobytes() == vb.tobytes(), name
    files, expected = _files(store), _files(reference)
    assert sorted(files) == sorted(expected)
    for name in expected:
        assert files[name] == expected[name], name
    attrs, expected_attrs = dict(got.attrs), dict(want.attrs)
    assert _analysis_config(attrs) == _analysis_config(expected_attrs)
    for key in RUN_ATTRS:
        attrs.pop(key), expected_attrs.pop(key)
    assert attrs == expected_attrs
    assert attrs["cccdask_status"] == "complete"


def assert_same_reports(store: Path, reference: Path) -> None:
    folder, expected = store.parent / f"{store.stem}-reports", reference.parent / f"{reference.stem}-reports"
    names = sorted(p.name for p in expected.iterdir())
    assert sorted(p.name for p in folder.iterdir()) == names
    for name in names:
        assert (folder / name).read_bytes() == (expected / name).read_bytes(), name


def _yaml(folder: Path, name: str, cluster: dict, store: str | None = None, **sections) -> Path:
    config = {
        "input": {"image1": {"path": "cells.ome.zarr", "channel": 0},
                  "image2": {"path": "cells.ome.zarr", "channel": 1}, "mask": "mask.ome.zarr"},
        "ccc": {"max_distance": 0.8, "contributions": True},
        "output": {"store": store or f"{name}.zarr", "reports": True},
        "execution": {"frames_per_task": 1},
        "cluster": cluster,
    }
    config.update(sections)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run_cli(config: Path, *args):
    result = runner.invoke(app, ["run", str(config), *args])
    assert result.exit_code == 0, result.output
    return result


def _inspect(store: Path) -> str:
    result = runner.invoke(app, ["inspect", str(store)])
    assert result.exit_code == 0, result.output
    return re.sub(r"\s+", " ", result.output)


def _ranges(indices) -> str:
    """Independent of the CLI's own: consecutive runs as a-b."""
    groups, run_ = [], []
    for i in indices:
        if run_ and i != run_[-1] + 1:
            groups.append(run_)
            run_ = []
        run_.append(int(i))
    if run_:
        groups.append(run_)
    return ", ".join(str(g[0]) if len(g) == 1 else f"{g[0]}-{g[-1]}" for g in groups)


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """8 frames of 64 x 64 with spots paired at known distances, a mask per frame."""
    folder = tmp_path_factory.mktemp("reliability")
    image1, image2, mask = write_paired_series(folder, N_FRAMES, np.linspace(0.3, 0.65, N_FRAMES), shape=(64, 64),
                                               n_pairs=20, with_mask=True)
    return folder, image1, image2, mask


@pytest.fixture(scope="module")
def clean(series):
    """The reference: an uninterrupted run on the synchronous kind (no distributed at all)."""
    folder = series[0]
    config = _yaml(folder, "clean", {"kind": "synchronous"})
    _run_cli(config)
    store = folder / "clean.zarr"
    # the reference itself is right: equal to cccdask.ccc on the in-memory arrays
    _, image1, image2, mask = series
    expected = cccdask.ccc(xr.DataArray(image1, dims=("t", "y", "x")), xr.DataArray(image2, dims=("t", "y", "x")),
                           mask, spacing=SPACING, max_distance=0.8, contributions=True)
    stored = xr.open_zarr(store)
    for name in ("profile_subtracted", "mean", "sigma", "confidence", "contribution1"):
        # profiles are stored in float32 (output.profile_range: auto)
        np.testing.assert_array_equal(stored[name].values, expected[name].values.astype(stored[name].dtype),
                                      err_msg=name)
    return store


# --------------------------------------------------------------------------- 1. worker loss


def test_a_worker_killed_inside_its_task_loses_nothing(series, clean, killable_cluster_address):
    """SIGKILL of the worker process that is running a frame: the frame runs again elsewhere."""
    from distributed import Client

    cluster_address = killable_cluster_address
    folder = series[0]
    config = config_from_dict(yaml.safe_load(_yaml(folder, "worker_lost", {"kind": "address",
                                                                          "address": cluster_address}).read_text()),
                              base_dir=folder)
    store = folder / "worker_lost.zarr"
    outcome = {}
    runner_thread = threading.Thread(target=lambda: outcome.setdefault("path", run(config)))
    with Client(cluster_address) as client:
        client.wait_for_workers(2, timeout=60)
        pids = client.run(os.getpid)
        runner_thread.start()
        victim = None
        deadline = time.monotonic() + 60
        while victim is None and time.monotonic() < deadline:
            busy = {w: keys for w, keys in client.processing().items()
                    if any(str(k).startswith("cccdask-frames-") for k in keys)}
            if busy and store.exists():
                victim = next(iter(busy))
            else:
                time.sleep(0.005)
        assert victim is not None, "no worker was caught running a frame"
        recorded_at_kill = int((read_completion(store).status != FRAME_MISSING).sum())
        os.kill(pids[victim], signal.SIGKILL)  # the task runs again on another worker
        runner_thread.join(120)
        assert pids[victim] not in client.run(os.getpid).values()
    assert recorded_at_kill < N_FRAMES, "the worker was killed after the run"
    assert outcome.get("path") == store
    assert_same_store(store, clean)


# --------------------------------------------------------------------------- 2. the run killed


@pytest.mark.parametrize("stage, cluster", [
    ("first_frame", {"kind": "threads", "threads": 2}),
    ("block_write", {"kind": "threads", "threads": 2}),
    ("midway", "address"),
    ("finalise", {"kind": "synchronous"}),
])
def test_a_run_killed_at_any_stage_resumes_to_the_clean_store(series, clean, cluster_address, stage, cluster):
    folder = series[0]
    if cluster == "address":
        cluster = {"kind": "address", "address": cluster_address}
    config = _yaml(folder, f"killed_{stage}", cluster)
    store = folder / f"killed_{stage}.zarr"
    environment = kill_environment(stage)
    done = subprocess.run([sys.executable, "-m", "cccdask", "run", str(config)], env=environment,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr

    # the half-written store says so, in a notebook and in `cccdask inspect`
    status = read_completion(store).status
    missing = np.flatnonzero(status == FRAME_MISSING)
    opened = xr.open_zarr(store)
    assert opened.attrs["cccdask_status"] == "running"
    np.testing.assert_array_equal(opened["frame_status"].values, status)
    report = _inspect(store)
    assert "Status: incomplete" in report
    assert f"Frames: {N_FRAMES}; complete {N_FRAMES - missing.size}; missing {missing.size}" in report
    if stage == "first_frame":
        # a frame's data written before the kill is not a recorded frame
        assert missing.size == N_FRAMES
        assert np.nanmax(np.abs(opened["contribution1"].values)) > 0
    elif stage == "block_write":
        # one small variable's block is on disk, the others and the record are not
        assert missing.size == N_FRAMES
        scalars = [name for name in ("confidence", "fit_ok", "height", "mean", "r_squared", "sigma")
                   if np.isfinite(opened[name].values.astype(float)).any() and opened[name].values.any()]
        assert len(scalars) == 1, scalars
    elif stage == "midway":
        assert 0 < missing.size < N_FRAMES
    else:
        assert missing.size == 0 and (folder / f"killed_{stage}-reports" / "summary.txt").exists()
    if missing.size:
        assert f"Missing frames: {_ranges(missing)}" in report
    else:
        assert "Missing frames" not in report

    # the rerun of the same config computes the missing frames and finalises
    _run_cli(config)
    assert "Status: complete" in _inspect(store)
    assert_same_store(store, clean)
    assert_same_reports(store, clean)


# --------------------------------------------------------------------------- 3. per-frame trouble


def test_per_frame_trouble_is_recorded_as_data_and_the_rest_is_unaffected(tmp_path, cluster_address):
    image1, image2, mask, _ = paired_spots_series(
        N_FRAMES, distances=np.linspace(0.3, 0.65, N_FRAMES), shape=(64, 64), spacing=SPACING, n_pairs=20)
    image1[1] = 0.0
    image2[1] = 0.0  # an all-zero frame
    image1[3] = np.nan  # a NaN-filled frame
    y, x = np.mgrid[:64, :64]
    image1[5] = (x + y) % 2  # complementary checkerboards never overlap: no Gaussian to fit
    image2[5] = 1 - image1[5]
    mask[5] = True
    mask[6] = False  # an empty mask
    write_cells(tmp_path, image1, image2, SPACING, mask)
    config = _yaml(tmp_path, "trouble", {"kind": "address", "address": cluster_address})
    result = _run_cli(config)
    store = tmp_path / "trouble.zarr"
    stored = xr.open_zarr(store)
    assert stored.attrs["cccdask_status"] == "complete"

    # what cccdask.ccc says about each frame on its own: the independent expectation
    expected_status, expected_reason = [], []
    for i in range(N_FRAMES):
        try:
            alone = cccdask.ccc(image1[i], image2[i], mask[i], spacing=SPACING, max_distance=0.8)
        except InvalidFrameError as error:
            expected_status.append(FRAME_INVALID)
            expected_reason.append(str(error))
            continue
        expected_status.append(FRAME_OK if bool(alone["fit_ok"]) else FRAME_FIT_FAILED)
        expected_reason.append("")
    assert [expected_status[i] for i in (1, 3, 5, 6)] == [FRAME_FIT_FAILED, FRAME_INVALID, FRAME_FIT_FAILED,
                                                          FRAME_INVALID]
    assert list(stored["frame_status"].values) == expected_status
    reasons = [str(r) for r in stored["frame_error"].values]
    assert reasons[1] == "image1 is constant inside the mask (every voxel 0): no signal to correlate"
    assert reasons[3] == expected_reason[3] and "NaN or infinite" in reasons[3]
    assert reasons[5] == FIT_FAILED_REASON
    assert reasons[6] == expected_reason[6] and "no voxel inside" in reasons[6]
    assert all(reasons[i] == "" for i in (0, 2, 4, 7))
    for i in (3, 6):  # invalid frames have no values
        assert np.isnan(stored["profile_subtracted"].values[i]).all() and np.isnan(stored["mean"].values[i])

    # the other frames are exactly what cccdask.ccc gives on them
    good = [0, 2, 4, 7]
    expected = cccdask.ccc(xr.DataArray(image1[good], dims=("t", "y", "x")),
                           xr.DataArray(image2[good], dims=("t", "y", "x")), mask[good], spacing=SPACING,
                           max_distance=0.8, contributions=True)
    for name in ("profile_original", "profile_subtracted", "mean", "sigma", "confidence", "contribution1"):
        np.testing.assert_array_equal(stored[name].values[good], expected[name].values.astype(stored[name].dtype),
                                      err_msg=name)
    fit_failed = xr.DataArray(image1[[5]], dims=("t", "y", "x"))
    alone = cccdask.ccc(fit_failed, xr.DataArray(image2[[5]], dims=("t", "y", "x")), mask[[5]], spacing=SPACING,
                        max_distance=0.8)
    np.testing.assert_array_equal(stored["profile_subtracted"].values[5],
                                  alone["profile_subtracted"].values[0].astype(np.float32))

    # the end summary (summary.txt and the table `cccdask run` prints) lists those frames
    summary = (tmp_path / "trouble-reports" / "summary.txt").read_text()
    for i in (1, 3, 5, 6):
        label = "invalid frame" if expected_status[i] == FRAME_INVALID else "fit failed"
        assert f"frame {i}: {label}: {reasons[i]}" in summary
    listed = summary.split("Frames without a result (4):\n")[1].splitlines()
    assert [int(line.split()[1].rstrip(":")) for line in listed] == [1, 3, 5, 6]
    printed = re.sub(r"\s+", " ", result.output)
    assert printed.count("invalid frame:") == 2 and printed.count("fit failed:") == 2
    inspect = _inspect(store)
    assert "Frames without a result (4):" in inspect and "Missing frames" not in inspect


# --------------------------------------------------------------------------- 5. determinism


@pytest.mark.parametrize("name, cluster", [
    ("rerun", {"kind": "synchronous"}),
    ("threads", {"kind": "threads", "threads": 2}),
    ("distributed_1_worker", {"kind": "local", "local": {"n_workers": 1, "processes": False,
                                                         "dashboard_address": None, "host": "127.0.0.1"}}),
    ("distributed_2_workers", {"kind": "local", "local": {"n_workers": 2, "processes": False,
                                                          "dashboard_address": None, "host": "127.0.0.1"}}),
    ("distributed_2_processes", "address"),
])
def test_the_same_config_writes_bit_identical_stores(series, clean, cluster_address, name, cluster):
    folder = series[0]
    if cluster == "address":
        cluster = {"kind": "address", "address": cluster_address}
    _run_cli(_yaml(folder, f"same_{name}", cluster))
    store = folder / f"same_{name}.zarr"
    assert_same_store(store, clean)
    assert_same_reports(store, clean)
