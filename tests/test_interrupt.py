"""Ctrl-C and a second writer, on a real `cccdask run` with a local cluster of worker processes.

The run pauses at a test-only point once half its frames are recorded
(``CCCDASK_TEST_PAUSE_AT=midway``, tests/kill_hook: it writes its PID to a file and waits), so what
follows does not depend on timing: a second run on the same store is refused naming
the first (its lock), then SIGINT goes to the whole process group, as a terminal's
Ctrl-C does (driver and worker processes): one line, exit code 130, no traceback, and
the same command then resumes to the store of an uninterrupted run.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import xarray as xr
import yaml

from cccdask.io.lock import lock_path
from cccdask.io.store import read_completion
from kill_points import pause_environment
from series_files import write_paired_series

N_FRAMES = 8


def _ranges(indices) -> str:
    groups, current = [], []
    for i in indices:
        if current and i != current[-1] + 1:
            groups.append(current)
            current = []
        current.append(int(i))
    if current:
        groups.append(current)
    return ", ".join(str(g[0]) if len(g) == 1 else f"{g[0]}-{g[-1]}" for g in groups)


def _wait_for(path, process, seconds=120):
    deadline = time.monotonic() + seconds
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # polls for the run's own signal, bounded; the outcome does not depend on it
    assert path.exists(), process.communicate(timeout=60)


def test_ctrl_c_prints_one_line_exits_130_and_the_rerun_resumes(tmp_path):
    write_paired_series(tmp_path, N_FRAMES, np.linspace(0.3, 0.65, N_FRAMES), shape=(48, 48), n_pairs=10)
    section = {"image1": {"path": "cells.ome.zarr", "channel": 0}, "image2": {"path": "cells.ome.zarr", "channel": 1}}
    local = {"kind": "local", "local": {"n_workers": 2, "threads_per_worker": 1, "dashboard_address": ":0",
                                        "host": "127.0.0.1", "memory_limit": "1GiB"}}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"input": section, "ccc": {"max_distance": 0.5},
                                      "output": {"store": "results.zarr", "reports": False},
                                      "execution": {"frames_per_task": 1}, "cluster": local}))
    store = tmp_path / "results.zarr"
    paused = tmp_path / "paused"
    command = [sys.executable, "-m", "cccdask", "run", str(config)]
    environment = pause_environment("midway", paused)
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # its own process group, as a shell job
    try:
        _wait_for(paused, process)
        assert int(paused.read_text()) == process.pid

        # a second run on the same store is refused, naming the holder; nothing of the first is touched
        holder = yaml.safe_load(lock_path(store).read_text())
        second = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        message = re.sub(r"\s+", " ", second.stderr).strip()
        assert message == (
            f"Error: output.store {store} is being written by another run (PID {process.pid} on host "
            f"{socket.gethostname()}, started {holder['started']}); wait for it to finish or stop it. If that run is "
            f"gone, delete {lock_path(store)} (a lock is also taken over by itself once its process is gone from this "
            f"host, or after execution.stale_lock_after seconds without a refresh).")

        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the driver and its worker processes
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    saved = np.flatnonzero(read_completion(store).complete)
    assert 0 < saved.size < N_FRAMES
    assert process.returncode == 130
    assert stderr.strip() == f"interrupted: frames {_ranges(saved)} are saved; rerun the same command to resume"
    assert "Traceback" not in stdout and "KeyboardInterrupt" not in stdout
    assert not lock_path(store).exists()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the worker processes are gone with the driver
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("worker processes of the interrupted run are still running")

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{saved.size} of {N_FRAMES} frames already complete; computing {N_FRAMES - saved.size}" in \
        re.sub(r"\s+", " ", resumed.stdout)
    clean = tmp_path / "clean.yaml"
    clean_config = yaml.safe_load(config.read_text())
    clean_config["output"]["store"] = "clean.zarr"
    clean_config["cluster"] = {"kind": "synchronous"}  # same identity, no second cluster to start
    clean.write_text(yaml.safe_dump(clean_config))
    assert subprocess.run([sys.executable, "-m", "cccdask", "run", str(clean)], capture_output=True,
                          timeout=300).returncode == 0
    got, want = xr.open_zarr(store), xr.open_zarr(tmp_path / "clean.zarr")
    assert got.attrs["cccdask_status"] == "complete"
    for name in want.data_vars:
        np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=name)
