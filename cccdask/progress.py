"""Progress of a run as log lines, for output that is not a terminal (batch jobs, nohup, CI).

On a terminal the command line draws a live bar; written to a file a bar prints nothing
until the end. :class:`ProgressLog` writes instead one line per step of progress: at
most every ``interval`` seconds or every ``fraction`` of the frames, whichever comes
first, and always the first and the last frame::

    [   12.3 s] frames 10/40 (25%), 1.9 frames/s, ETA 16 s, without a result 0

and one line per named phase of the run (starting the cluster, waiting for workers,
finalising reports) as it begins. Pure Python, no dependencies: the clock is injectable.
"""

from __future__ import annotations

import math
import time
from typing import Callable


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class ProgressLog:
    """Writes progress and phase lines at a steady pace.

    Parameters
    ----------
    write : callable
        Receives each line (without newline) and should flush it.
    interval : float
        Seconds between progress lines at most (default 30).
    fraction : float
        A line also after every ``fraction`` of the frames (default 0.05: 5 %).
    clock : callable
        Seconds, monotonic (default :func:`time.monotonic`).
    """

    def __init__(self, write: Callable[[str], None], interval: float = 30.0, fraction: float = 0.05,
                 clock: Callable[[], float] = time.monotonic):
        self.write, self.interval, self.fraction, self.clock = write, interval, fraction, clock
        self.started = clock()
        self.first: tuple[float, int] | None = None  # (time, frames done) of the first update
        self.last_time = -math.inf
        self.last_done: int | None = None

    def stamp(self) -> str:
        return f"[{self.clock() - self.started:7.1f} s]"

    def phase(self, name: str) -> None:
        """A phase of the run begins (e.g. "starting the cluster")."""
        self.write(f"{self.stamp()} {name}")

    def message(self, text: str) -> None:
        """Any other status line of the run."""
        self.write(f"{self.stamp()} {text}")

    def update(self, done: int, total: int, failed: int = 0) -> None:
        """``done`` of ``total`` frames recorded, ``failed`` of them without a result."""
        now = self.clock()
        if self.first is None:
            self.first = (now, done)
        step = max(1, math.ceil(self.fraction * total))
        due = (
            self.last_done is None
            or done >= total
            or done - self.last_done >= step
            or now - self.last_time >= self.interval
        )
        if not due or done == self.last_done:
            return
        self.last_time, self.last_done = now, done
        self.write(f"{self.stamp()} {self.line(done, total, failed, now)}")

    def line(self, done: int, total: int, failed: int, now: float) -> str:
        """The progress text: frames done, rate, ETA and frames without a result."""
        percent = 100.0 * done / total if total else 100.0
        text = f"frames {done}/{total} ({percent:.0f}%)"
        start_time, start_done = self.first if self.first is not None else (now, done)
        elapsed, computed = now - start_time, done - start_done
        if computed > 0 and elapsed > 0:
            rate = computed / elapsed
            text += f", {rate:.3g} frames/s, ETA {format_duration((total - done) / rate)}"
        elif done < total:
            text += ", rate not known yet"
        return text + f", without a result {failed}"
