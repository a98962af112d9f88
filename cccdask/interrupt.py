"""Ctrl-C (SIGINT) during a run: one line from the driver, not tracebacks from every worker.

A terminal's Ctrl-C sends SIGINT to the whole foreground process group: the driver and
the worker processes of an embedded LocalCluster. The workers are started with SIGINT
ignored (:func:`workers_ignore_sigint`), so only the driver reacts; the driver stops
submitting, records what finished, and closes the cluster quietly
(:func:`quiet_shutdown_on_interrupt`); the command line then prints which frames are
saved (:func:`cccdask.cli.interrupted`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Iterator

# loggers whose shutdown warnings (lost in-flight tasks, closed comms) mean nothing after Ctrl-C
_SHUTDOWN_LOGGERS = ("distributed", "tornado", "asyncio")


@contextlib.contextmanager
def workers_ignore_sigint() -> Iterator[None]:
    """Start processes inside this block with SIGINT ignored; this process keeps its handler.

    An ignored signal stays ignored across ``fork`` and ``exec``, and Python leaves it
    ignored at start-up, so worker processes spawned here never see Ctrl-C (the driver
    stops them). A Ctrl-C during the block itself is dropped. Only the main thread can
    change signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _silence_shutdown_loggers() -> None:
    for name in _SHUTDOWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)


@contextlib.contextmanager
def quiet_shutdown_on_interrupt(client=None) -> Iterator[None]:
    """On KeyboardInterrupt, silence the cluster's shutdown warnings before it is closed.

    Enter it inside the cluster's context, so that it exits (and silences) first.

    Parameters
    ----------
    client : distributed.Client, optional
        The run's client. Its worker processes write to the terminal too (a worker whose
        heartbeat meets the closing scheduler logs a traceback), so they are silenced as
        well, within a few seconds; a worker that does not answer is left as it is.
    """
    try:
        yield
    except KeyboardInterrupt:
        _silence_shutdown_loggers()
        if client is not None and hasattr(client, "_run"):
            with contextlib.suppress(Exception):
                client.sync(client._run, _silence_shutdown_loggers, on_error="ignore", callback_timeout=5)
        raise
