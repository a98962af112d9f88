"""One writer per results store: a lock file beside the store, naming the run that holds it.

The lock is ``.<store name>.lock`` in the store's folder (beside it, not inside: the
store itself is created by a rename and may not exist yet). It is created with
``O_CREAT | O_EXCL``, so of two runs starting together exactly one gets it, and it holds
JSON: the host, the PID and the start time of the run. While the run lasts, a
background thread refreshes the file's modification time (the heartbeat), and the lock
is removed when the run ends, whether it finished, failed or was interrupted.

A second run on the same store is refused (:class:`StoreLockedError`) naming the
holder. A lock is stale, and taken over with a warning, when its process is gone (same
host, PID no longer running) or when its heartbeat is older than ``stale_after``
seconds (a run on another host that died, or a host that went down).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

__all__ = ["StoreLock", "StoreLockedError", "lock_path"]


class StoreLockedError(RuntimeError):
    """Another run holds the store's lock."""


def lock_path(store: str | os.PathLike) -> Path:
    """Where the lock of ``store`` lives: ``.<name>.lock`` beside it."""
    store = Path(store)
    return store.with_name(f".{store.name}.lock")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError):
        return None  # torn or foreign content: judged by its age only


class StoreLock:
    """The lock of one results store, as a context manager.

    Parameters
    ----------
    store : path
        The results store.
    stale_after : float
        Seconds without a heartbeat after which another run's lock is taken over.
    log : callable, optional
        Receives the warning when a stale lock is taken over.
    heartbeat : float, optional
        Seconds between refreshes of the lock's modification time; default
        ``min(60, stale_after / 4)``.
    """

    def __init__(self, store: str | os.PathLike, stale_after: float = 600.0,
                 log: Callable[[str], None] | None = None, heartbeat: float | None = None):
        self.store = Path(store)
        self.path = lock_path(self.store)
        self.stale_after = float(stale_after)
        self.log = log or (lambda message: None)
        self.heartbeat = float(heartbeat) if heartbeat is not None else min(60.0, self.stale_after / 4)
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ holder

    def _content(self) -> dict[str, Any]:
        now = time.time()
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.fromtimestamp(now).astimezone().isoformat(timespec="seconds"),
            "started_unix": now,
            "token": self.token,
        }

    @staticmethod
    def describe(holder: dict[str, Any] | None) -> str:
        """The holder in words: host, PID and start time."""
        if not holder:
            return "an unknown run (the lock file cannot be read)"
        return f"PID {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"

    def _stale_reason(self, holder: dict[str, Any] | None, age: float) -> str | None:
        if holder and holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            if not _process_alive(holder["pid"]):
                return f"its process {holder['pid']} is no longer running on this host"
        if age > self.stale_after:
            return (f"it was last refreshed {age:.0f} s ago, more than execution.stale_lock_after "
                    f"({self.stale_after:g} s)")
        return None

    # ------------------------------------------------------------------ acquire / release

    def acquire(self) -> None:
        """Take the lock, or take over a stale one.

        Raises
        ------
        StoreLockedError
            A live run holds it.
        """
        for _ in range(10):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_or_refuse()
                continue
            with os.fdopen(descriptor, "w") as handle:
                json.dump(self._content(), handle)
            self._start_heartbeat()
            return
        raise StoreLockedError(f"output.store {self.store}: could not take its lock {self.path}; try again.")

    def _take_over_or_refuse(self) -> None:
        try:
            holder = _read(self.path)
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return  # released meanwhile: try again
        reason = self._stale_reason(holder, age)
        if reason is None:
            raise StoreLockedError(
                f"output.store {self.store} is being written by another run ({self.describe(holder)}); wait for "
                f"it to finish or stop it. If that run is gone, delete {self.path} (a lock is also taken over "
                f"by itself once its process is gone from this host, or after execution.stale_lock_after "
                f"seconds without a refresh)."
            )
        # move the stale lock aside; only one of several runs doing this at once succeeds
        aside = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        moved = _read(aside) if aside.exists() else None
        if (moved or {}).get("token") != (holder or {}).get("token"):
            # another run took the lock over between our read and the rename: give it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return
        aside.unlink(missing_ok=True)
        self.log(f"Warning: took over the stale lock of {self.store} held by {self.describe(holder)}: {reason}.")

    def _start_heartbeat(self) -> None:
        def beat():
            while not self._stop.wait(self.heartbeat):
                try:
                    os.utime(self.path)
                except OSError:
                    pass

        self._thread = threading.Thread(target=beat, name="cccdask-store-lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and remove the lock when it is still this run's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            holder = _read(self.path)
        except FileNotFoundError:
            return
        if (holder or {}).get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "StoreLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
