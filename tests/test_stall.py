"""Runs that cannot progress stop and say why; finished frames are never lost.

On real processes on 127.0.0.1: a ``dask scheduler`` and ``dask worker`` processes the
tests start and kill, and an embedded cluster whose nanny restarts a killed worker.
Each ending is compared with a clean run of the same config (byte for byte).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask
import numpy as np
import pytest
import yaml

from cccdask.config import config_from_dict
from cccdask.io.store import FRAME_MISSING, read_completion
from cccdask.pipeline import run
from cccdask.pipeline.errors import StallError
from cccdask.slurm_jobs import default_worker_extra_args, walltime_seconds
from test_reliability import assert_same_store
from series_files import write_paired_series

REPO = Path(__file__).resolve().parent.parent
SPACING = (0.05, 0.05)
N_FRAMES = 12
STALL = 3.0  # execution.stall_timeout of these tests (s)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stall")
    write_paired_series(folder, N_FRAMES, np.linspace(0.3, 0.6, N_FRAMES), shape=(48, 48), n_pairs=8)
    return folder


def _config(folder: Path, name: str, cluster: dict, stall: float = STALL, fpt: int = 1):
    raw = {
        "input": {"image1": {"path": "cells.ome.zarr", "channel": 0},
                  "image2": {"path": "cells.ome.zarr", "channel": 1}},
        "ccc": {"max_distance": 0.8},
        "output": {"store": f"{name}.zarr", "reports": False},
        "execution": {"frames_per_task": fpt, "stall_timeout": stall},
        "cluster": cluster,
    }
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(raw))
    return config_from_dict(raw, base_dir=folder)


@pytest.fixture(scope="module")
def clean(series):
    store = run(_config(series, "clean", {"kind": "synchronous"}))
    return store


def _env():
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@pytest.fixture
def scheduler(tmp_path):
    """A ``dask scheduler`` process on 127.0.0.1; yields its address."""
    file = tmp_path / "scheduler.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
         "--no-dashboard", "--scheduler-file", str(file)],
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (file.is_file() and file.stat().st_size) and time.monotonic() < deadline:
            assert process.poll() is None, "the scheduler did not start"
            time.sleep(0.05)
        import json

        yield json.loads(file.read_text())["address"]
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _start_worker(address: str, *args) -> subprocess.Popen:
    """A ``dask worker`` (nanny + one single-threaded worker) in its own process group."""
    return subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1", "--nworkers", "1",
         "--no-dashboard", "--host", "127.0.0.1", *args],
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _kill_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_workers_that_die_at_start_end_the_run_within_the_stall_timeout(series, scheduler, tmp_path):
    """A worker whose start-up fails (here: a preload that raises) never joins: the run says so."""
    bad = tmp_path / "broken_setup.py"
    bad.write_text("raise ImportError('module load failed on this node')\n")
    worker = _start_worker(scheduler, "--preload", str(bad))
    try:
        config = _config(series, "never_joined", {"kind": "address", "address": scheduler})
        began = time.monotonic()
        with pytest.raises(StallError) as caught:
            run(config)
        waited = time.monotonic() - began
        assert worker.wait(timeout=120) != 0  # the worker really died at start
    finally:
        _kill_group(worker)
    message = str(caught.value)
    assert f"no worker has been connected for {STALL:g} s (execution.stall_timeout)" in message
    assert "no frame was computed and the store" in message and "was not created" in message
    assert not (series / "never_joined.zarr").exists()  # nothing that a rerun would take for a resume
    assert waited >= STALL


def test_all_workers_lost_mid_run_stop_the_run_and_a_rerun_completes_it(series, clean, scheduler):
    from distributed import Client

    worker = _start_worker(scheduler)
    config = _config(series, "workers_lost", {"kind": "address", "address": scheduler})
    store = series / "workers_lost.zarr"
    with Client(scheduler) as client:
        client.wait_for_workers(1, timeout=120)

    def kill_all_workers(done, total, failed=0):
        if 0 < done < total and worker.poll() is None:
            _kill_group(worker)  # nanny and worker: nothing restarts them

    try:
        with pytest.raises(StallError) as caught:
            run(config, progress=kill_all_workers)
    finally:
        _kill_group(worker)
    message = str(caught.value)
    assert "execution.stall_timeout" in message and "rerun the same config" in message
    record = read_completion(store)
    missing = np.flatnonzero(record.status == FRAME_MISSING)
    assert 0 < missing.size < N_FRAMES
    assert f"{missing.size} of {N_FRAMES} frames are missing" in message
    # every frame recorded complete has its data: equal to the clean run's
    import xarray as xr

    complete = np.flatnonzero(record.complete)
    with xr.open_zarr(store) as got, xr.open_zarr(clean) as want:
        for name in ("profile_subtracted", "mean", "sigma", "confidence"):
            np.testing.assert_array_equal(got[name].values[complete], want[name].values[complete], err_msg=name)
    replacement = _start_worker(scheduler)
    try:
        with Client(scheduler) as client:
            client.wait_for_workers(1, timeout=120)
        assert run(config) == store
    finally:
        _kill_group(replacement)
    assert_same_store(store, clean)


LOSS_FRAMES = 36  # many small frames: one per task
KILLS_AT = (6, 16, 26)  # frames recorded when a worker holding finished batches is killed
# CCCDASK_LOSS_REPEATS=20 repeats the scenario (the check, outside CI); CI runs it once
LOSS_REPEATS = int(os.environ.get("CCCDASK_LOSS_REPEATS", "1"))


@pytest.fixture(scope="module")
def many_frames(tmp_path_factory):
    """``(folder, clean store)``: 36 frames of 32 x 32 and their run on the synchronous scheduler."""
    folder = tmp_path_factory.mktemp("loss")
    write_paired_series(folder, LOSS_FRAMES, np.linspace(0.3, 0.6, LOSS_FRAMES), shape=(32, 32), n_pairs=4)
    return folder, run(_config(folder, "clean", {"kind": "synchronous"}))


def kill_workers_holding_finished_batches(workers: int, kills_at=KILLS_AT, timeout: float = 240):
    """A progress callback that kills, at each count in ``kills_at``, the worker holding finished batches.

    Called in the driver's loop right after it recorded a batch: it waits until every
    other batch in flight has finished (their results still on the workers, not yet
    recorded) and all ``workers`` are connected, SIGKILLs the worker holding most of
    them that no other worker holds (so their data is surely lost; its nanny starts a new
    worker). Returns the callback and the list it appends the number of finished batches
    lost to, once per kill. (The client's view of a lost future is not polled: a quick
    recompute can make it finished again unseen; a restarted worker may reuse the address.)
    """
    from distributed import default_client

    pending, observed = list(kills_at), []

    def progress(done, total, failed=0):
        if not pending or done < pending[0]:
            return
        pending.pop(0)
        client = default_client()
        ours = lambda: {k: s for k, s in client.futures.items() if str(k).startswith("cccdask-frames-")}
        connected = lambda: client.scheduler_info(n_workers=-1)["workers"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(s.status != "finished" for s in ours().values()):
            time.sleep(0.01)  # bounded wait for a real event: the batches in flight finish
        while time.monotonic() < deadline and len(connected()) < workers:
            time.sleep(0.01)  # the worker killed last has been restarted: one worker dies at a time
        finished = set(ours())
        where = {address: finished.intersection(keys) for address, keys in client.has_what().items()}
        only = {address: len(keys.difference(*(other for a, other in where.items() if a != address)))
                for address, keys in where.items()}
        holder = max(only, key=only.get)
        pid = client.run(os.getpid, workers=[holder])[holder]
        os.kill(pid, signal.SIGKILL)  # the batches only it held are gone with it
        observed.append(only[holder])

    return progress, observed


@pytest.mark.parametrize("repetition", range(LOSS_REPEATS))
def test_batches_whose_workers_die_after_finishing_are_recorded_after_their_recompute(many_frames, repetition):
    """The adapt loss: finished futures turn ``lost`` when their worker dies; they must still be recorded.

    Three times in one run, a worker holding finished, unrecorded batches is killed; the
    run must end complete and equal, array for array, to the synchronous run.
    """
    from distributed import LocalCluster

    folder, clean = many_frames
    progress, observed = kill_workers_holding_finished_batches(workers=2)
    # a nanny restarts its killed worker; the cluster must not give the nanny up meanwhile
    # (after lost-worker-timeout, 15 s by default, which a restart on a loaded machine can take)
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "10 minutes"}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                         dashboard_address=None) as cluster:
        config = _config(folder, f"lost_futures_{repetition}", {"kind": "address",
                                                                "address": cluster.scheduler_address}, stall=300)
        store = run(config, progress=progress)
    assert len(observed) == len(KILLS_AT)
    assert all(lost >= 1 for lost in observed), observed  # finished, unrecorded batches were lost each time
    _assert_same_arrays(store, clean)  # (its stall_timeout differs from the clean run's: not compared)


def _assert_same_arrays(store: Path, reference: Path) -> None:
    import zarr

    got = zarr.open_group(str(store), mode="r", use_consolidated=False)
    want = zarr.open_group(str(reference), mode="r", use_consolidated=False)
    assert got.attrs["cccdask_status"] == "complete"
    assert sorted(got.array_keys()) == sorted(want.array_keys())
    for name in want.array_keys():
        a, b = got[name][...], want[name][...]
        assert (a.tolist() == b.tolist()) if a.dtype.kind in "OTU" else (a.tobytes() == b.tobytes()), name


def test_importing_dask_jobqueue_through_cccdask_keeps_ctrl_c_a_keyboard_interrupt():
    check = ("import signal; {imp}; h = signal.getsignal(signal.SIGINT); "
             "print(h is signal.default_int_handler)")
    plain = subprocess.run([sys.executable, "-c", check.format(imp="import dask_jobqueue")],
                           capture_output=True, text=True, env=_env(), timeout=120)
    ours = subprocess.run(
        [sys.executable, "-c", check.format(
            imp="from cccdask.slurm_jobs import import_slurm_cluster; import_slurm_cluster()")],
        capture_output=True, text=True, env=_env(), timeout=120)
    assert plain.stdout.strip() == "False"  # dask-jobqueue replaces Ctrl-C's handler (with sys.exit)
    assert ours.stdout.strip() == "True", ours.stderr


@pytest.mark.parametrize("walltime, seconds, lifetime, stagger", [
    ("01:00:00", 3600, 3240, 180),  # margin 360 s: retire between 51 and 57 min
    ("30", 1800, 1620, 90),  # minutes only
    ("2-00:00:00", 172800, 155520, 8640),
    ("00:05:00", 300, 240, 30),  # margin 60 s at least
])
def test_workers_retire_before_the_walltime(walltime, seconds, lifetime, stagger):
    assert walltime_seconds(walltime) == seconds
    args = default_worker_extra_args(walltime)
    assert args == ["--lifetime", f"{lifetime}s", "--lifetime-stagger", f"{stagger}s"]
    assert lifetime + stagger < seconds  # the last worker to retire still retires before SLURM kills it


def test_validate_warns_of_slurm_workers_sharing_cores_and_short_of_memory(series):
    from typer.testing import CliRunner

    from cccdask.cli import app
    from cccdask.pipeline import estimate_task_memory, open_inputs, resolve_frames_per_task

    config = _config(series, "slurm_check", {"kind": "slurm", "slurm": {
        "cores": 2, "processes": 4, "memory": "1MB", "jobs": 1}}, fpt=12)
    frames = open_inputs(config).frames
    need = estimate_task_memory(config, frames, resolve_frames_per_task(12, tuple(frames.frame_shape), N_FRAMES))
    assert need > 250_000  # per worker thread: 1 MB / 4 processes = 250 kB
    result = CliRunner().invoke(app, ["validate", str(series / "slurm_check.yaml")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "asks for 4 worker processes on 2 core(s) per job" in text
    from dask.utils import format_bytes

    assert f"gives each worker thread {format_bytes(250_000)}" in text and "one task needs about" in text


def _wait_for_text(path: Path, text: str, process, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while text not in path.read_text() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # polls the run's own output, bounded; the outcome does not depend on it
    assert text in path.read_text(), path.read_text()


def interrupt_while_waiting_for_workers(config: Path, folder: Path, environment: dict | None = None):
    """``cccdask run config`` (a subprocess) sent SIGINT once it waits for workers; ``(returncode, stderr)``."""
    out, err = folder / f"{config.stem}.out", folder / f"{config.stem}.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "cccdask", "run", str(config)], stdout=stdout,
                                   stderr=stderr, env={**_env(), **(environment or {})}, cwd=folder)
    try:
        _wait_for_text(out, "waiting for workers", process)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, err.read_text()


def test_ctrl_c_while_waiting_for_a_running_schedulers_workers_exits_130(series, scheduler):
    _config(series, "interrupted_wait", {"kind": "address", "address": scheduler}, stall=0)  # 0: wait forever
    code, stderr = interrupt_while_waiting_for_workers(series / "interrupted_wait.yaml", series)
    assert code == 130
    assert stderr.strip() == "interrupted: no frame is saved yet; rerun the same command to start again"


@pytest.mark.parametrize("kind", ["threads", "synchronous", "scheduler_file"])
def test_ctrl_c_mid_run_exits_130_with_one_line_under_each_kind(series, tmp_path, request, kind):
    """SIGINT once half the frames are recorded (the run pauses there: tests/kill_hook), as a terminal sends it.

    kind local: tests/test_interrupt.py; address and slurm while waiting for workers: above
    and tests/test_slurm.py.
    """
    from kill_points import pause_environment
    from test_interrupt import _ranges

    cluster, worker = {"kind": kind}, None
    if kind == "scheduler_file":
        address = request.getfixturevalue("scheduler")  # writes tmp_path / "scheduler.json"
        cluster["scheduler_file"] = str(tmp_path / "scheduler.json")
        worker = _start_worker(address)
    name = f"interrupted_{kind}"
    _config(series, name, cluster, stall=0)
    paused = tmp_path / "paused"
    environment = pause_environment("midway", paused)
    environment["PYTHONPATH"] = os.pathsep.join((environment["PYTHONPATH"], str(REPO)))
    process = subprocess.Popen([sys.executable, "-m", "cccdask", "run", str(series / f"{name}.yaml")], cwd=series,
                               env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # its own process group, as a shell job
    try:
        deadline = time.monotonic() + 240
        while not paused.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # polls for the run's own signal, bounded
        assert paused.exists(), process.communicate(timeout=60)
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the driver (and any worker process of its group)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if worker is not None:
            _kill_group(worker)
    saved = np.flatnonzero(read_completion(series / f"{name}.zarr").complete)
    assert 0 < saved.size < N_FRAMES
    assert process.returncode == 130, stderr
    assert stderr.strip() == f"interrupted: frames {_ranges(saved)} are saved; rerun the same command to resume"
    assert "Traceback" not in stdout
