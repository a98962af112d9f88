"""Progress where nobody watches a terminal, and the dashboard link of a live run."""

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from cccdask.progress import ProgressLog, format_duration
from cccdask.synthetic import paired_spots_series

REPO = Path(__file__).resolve().parent.parent
PAUSE_HOOK = Path(__file__).resolve().parent / "pause_hook"
N_FRAMES = 40


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_lines_every_five_percent_or_interval_with_rate_and_eta():
    clock, lines = FakeClock(), []
    report = ProgressLog(lines.append, interval=30.0, fraction=0.05, clock=clock)
    report.phase("starting the cluster")
    clock.now += 4.0
    report.update(0, 40)
    for done in range(1, 5):  # a frame every 0.5 s: a line every 2 frames (5% of 40)
        clock.now += 0.5
        report.update(done, 40, failed=done // 4)
    clock.now += 40.0  # slow frame: the interval brings the line
    report.update(5, 40, failed=1)
    assert lines == [
        "[    0.0 s] starting the cluster",
        "[    4.0 s] frames 0/40 (0%), rate not known yet, without a result 0",
        "[    5.0 s] frames 2/40 (5%), 2 frames/s, ETA 19 s, without a result 0",
        "[    6.0 s] frames 4/40 (10%), 2 frames/s, ETA 18 s, without a result 1",
        # 5 frames in 42 s since the first update: 0.119 frames/s, 35 frames left
        f"[   46.0 s] frames 5/40 (12%), 0.119 frames/s, ETA {format_duration(35 / (5 / 42))}, without a result 1",
    ]
    assert format_duration(35 / (5 / 42)) == "4 min 54 s"
    report.update(5, 40, failed=1)  # nothing new: no line
    clock.now += 1.0
    report.update(40, 40, failed=1)  # the last frame always
    assert lines[-1] == "[   47.0 s] frames 40/40 (100%), 0.93 frames/s, ETA 0 s, without a result 1"
    assert format_duration(7325) == "2 h 02 min"


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    folder = tmp_path_factory.mktemp("progress")
    image1, image2, mask, _ = paired_spots_series(N_FRAMES, distances=[0.3] * N_FRAMES, shape=(48, 48), n_pairs=8)
    tifffile.imwrite(folder / "cells.tif", np.stack([image1, image2], axis=1), imagej=True,
                     resolution=(20, 20), metadata={"axes": "TCYX", "unit": "um"})
    return folder


def _config(folder: Path, name: str, cluster: dict) -> Path:
    config = {
        "input": {"image1": {"path": "cells.tif", "channel": 0}, "image2": {"path": "cells.tif", "channel": 1}},
        "ccc": {"max_distance": 0.8},
        "output": {"store": f"{name}.zarr", "reports": False},
        "cluster": cluster,
        "execution": {"frames_per_task": 1},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _start_paused(config: Path, folder: Path, pause_after: int):
    """``cccdask run config`` with stdout and stderr in files, held after ``pause_after`` frames."""
    resume = folder / f"{config.stem}.resume"
    env = {**os.environ, "PYTHONPATH": f"{PAUSE_HOOK}{os.pathsep}{REPO}",
           "CCCDASK_TEST_PAUSE_AFTER": str(pause_after), "CCCDASK_TEST_RESUME_FILE": str(resume)}
    stdout, stderr = folder / f"{config.stem}.log", folder / f"{config.stem}.err"
    with stdout.open("w") as out, stderr.open("w") as err:
        process = subprocess.Popen([sys.executable, "-m", "cccdask", "run", str(config)], stdout=out, stderr=err,
                                   env=env, cwd=folder)
    return process, stdout, stderr, resume


def _wait_for(path: Path, pattern: str, process, timeout: float = 240.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text()
        if re.search(pattern, text):
            return text
        if process.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"{pattern!r} not in {path} (exit {process.poll()}):\n{path.read_text()}")


def test_redirected_run_writes_progress_lines_while_it_runs(series):
    config = _config(series, "redirected", {"kind": "synchronous"})
    process, log, err, resume = _start_paused(config, series, pause_after=10)
    try:
        text = _wait_for(log, r"frames 10/40 \(25%\)", process)
        assert process.poll() is None  # held by the hook: this was read during the run
        assert "starting the in-process executor" in text and "computing frames" in text
        progress = re.findall(r"frames (\d+)/40 \((\d+)%\), .*without a result (\d+)", text)
        assert [int(done) for done, _, _ in progress] == [0, 2, 4, 6, 8, 10]
        assert all(int(failed) == 0 for _, _, failed in progress)
        assert re.search(r"frames 10/40 \(25%\), [\d.]+ frames/s, ETA \d+", text)
        assert "\x1b[" not in text  # no terminal control codes in a log file
    finally:
        resume.touch()
        assert process.wait(timeout=300) == 0, err.read_text()
    final = log.read_text()
    assert "frames 40/40 (100%)" in final and "finalising" in final
    assert final.index("frames 40/40") < final.index("finalising")


def test_the_printed_dashboard_link_answers_even_when_its_port_was_taken(series):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        config = _config(series, "dashboard", {"kind": "local", "local": {
            "n_workers": 1, "processes": False, "host": "127.0.0.1", "dashboard_address": f"127.0.0.1:{port}"}})
        process, log, err, resume = _start_paused(config, series, pause_after=2)
        try:
            text = _wait_for(log, r"frames 2/40", process)
            assert process.poll() is None
            link = re.search(r"Dask dashboard: (\S+)", text).group(1)
            assert f":{port}/" not in link  # moved off the taken port
            with urllib.request.urlopen(link, timeout=30) as response:
                assert response.status == 200
                assert b"Dask" in response.read()
        finally:
            resume.touch()
            assert process.wait(timeout=300) == 0, err.read_text()
        assert "already in use" not in err.read_text() + log.read_text()
        assert "UserWarning" not in err.read_text()
    finally:
        taken.close()


def test_waiting_for_workers_is_named_until_one_joins(series):
    from distributed import LocalCluster

    with LocalCluster(n_workers=0, processes=False, protocol="tcp://", host="127.0.0.1",
                      dashboard_address=None) as cluster:
        config = _config(series, "workerless", {"kind": "address", "address": cluster.scheduler_address})
        log, err = series / "workerless.log", series / "workerless.err"
        with log.open("w") as out, err.open("w") as errors:
            process = subprocess.Popen([sys.executable, "-m", "cccdask", "run", str(config)], stdout=out,
                                       stderr=errors, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=series)
        try:
            text = _wait_for(log, r"waiting for workers", process)
            assert process.poll() is None and "computing frames" not in text  # no worker: nothing can run
            cluster.scale(1)
            assert process.wait(timeout=300) == 0, err.read_text()
        finally:
            if process.poll() is None:
                process.kill()
    final = log.read_text()
    assert final.index("waiting for workers") < final.index("computing frames") < final.index("frames 40/40")
