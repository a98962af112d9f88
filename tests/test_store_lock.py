"""One writer per store: the lock file beside the store (cccdask.io.lock), on real processes."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from cccdask.io.lock import StoreLock, StoreLockedError, lock_path


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped) on this host."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _write_lock(store, host, pid, started="2026-01-01T00:00:00+00:00", age=0.0):
    path = lock_path(store)
    path.write_text(json.dumps({"host": host, "pid": pid, "started": started, "token": "other"}))
    if age:
        moment = time.time() - age
        os.utime(path, (moment, moment))
    return path


def test_the_lock_names_its_holder_and_is_removed_on_release(tmp_path):
    store = tmp_path / "results.zarr"
    with StoreLock(store) as lock:
        holder = json.loads(lock_path(store).read_text())
        assert (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid())
        assert lock.path == tmp_path / ".results.zarr.lock"
    assert not lock_path(store).exists()


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    store = tmp_path / "results.zarr"
    # a live holder in another process on this host
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        path = _write_lock(store, socket.gethostname(), holder.pid)
        before = path.read_bytes()
        with pytest.raises(StoreLockedError) as error:
            StoreLock(store).acquire()
        assert str(error.value) == (
            f"output.store {store} is being written by another run (PID {holder.pid} on host "
            f"{socket.gethostname()}, started 2026-01-01T00:00:00+00:00); wait for it to finish or stop it. If that "
            f"run is gone, delete {path} (a lock is also taken over by itself once its process is gone from this "
            f"host, or after execution.stale_lock_after seconds without a refresh).")
        assert path.read_bytes() == before
    finally:
        holder.communicate(b"")
    # two locks of this process: the second is refused too (this process is alive)
    with StoreLock(store, log=lambda m: None):  # takes over the now dead holder's lock
        with pytest.raises(StoreLockedError):
            StoreLock(store).acquire()


@pytest.mark.parametrize("case", ["dead_pid", "old_heartbeat"])
def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, case):
    store = tmp_path / "results.zarr"
    if case == "dead_pid":
        pid = _dead_pid()
        _write_lock(store, socket.gethostname(), pid)
        reason = f"its process {pid} is no longer running on this host"
        host = socket.gethostname()
    else:  # another host's run whose heartbeat stopped 700 s ago (its PID means nothing here)
        pid, host = os.getpid(), "node-17"
        _write_lock(store, host, pid, age=700)
        reason = "it was last refreshed 700 s ago, more than execution.stale_lock_after (600 s)"
    messages = []
    with StoreLock(store, stale_after=600, log=messages.append):
        assert json.loads(lock_path(store).read_text())["pid"] == os.getpid()
    assert messages == [f"Warning: took over the stale lock of {store} held by PID {pid} on host {host}, started "
                        f"2026-01-01T00:00:00+00:00: {reason}."]
    assert not lock_path(store).exists() and not list(tmp_path.glob(".*stale-*"))


def test_another_hosts_fresh_lock_is_respected_and_the_heartbeat_keeps_ours_fresh(tmp_path):
    store = tmp_path / "results.zarr"
    _write_lock(store, "node-17", 12345, age=100)
    with pytest.raises(StoreLockedError):
        StoreLock(store, stale_after=600).acquire()
    lock_path(store).unlink()
    with StoreLock(store, stale_after=600, heartbeat=0.01) as lock:
        old = time.time() - 1000
        os.utime(lock.path, (old, old))
        deadline = time.monotonic() + 30
        while lock.path.stat().st_mtime < time.time() - 500 and time.monotonic() < deadline:
            time.sleep(0.01)  # waits for the heartbeat (a condition, bounded), not a fixed time
        assert lock.path.stat().st_mtime > time.time() - 500
        with pytest.raises(StoreLockedError):
            StoreLock(store, stale_after=600).acquire()
