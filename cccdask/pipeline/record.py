"""The driver's completion record and the one-line messages of failed tasks.

A frame is **recorded complete** only here: :meth:`Completion.add` takes the outcomes a
task (or the tiled path) returned after its data was written, and
:meth:`Completion.flush` writes them to the store's ``frame_status``/``frame_error``
(:func:`cccdask.io.store.write_completion`). A frame marked complete therefore always
has its data on disk.
"""

from __future__ import annotations

import errno
import time
from pathlib import Path

from cccdask.io import store as results_store
from cccdask.io.store import FRAME_OK, CompletionRecord


class Completion:
    """The driver's completion record, flushed to the store at most every ``interval`` s."""

    def __init__(self, path: Path, record: CompletionRecord, interval: float = 0.5):
        self.path, self.record, self.interval = path, record, interval
        self.dirty = False
        self.last = time.monotonic()

    def add(self, outcomes) -> None:
        first = not self.dirty and not self.record.complete.any()  # the first frames are flushed at once
        for index, status, reason in outcomes:
            self.record.errors[index] = reason
            self.record.status[index] = status
        self.dirty = True
        if first or time.monotonic() - self.last >= self.interval:
            self.flush()

    def report(self, progress, n_frames: int) -> None:
        """``progress(frames recorded, n_frames, frames recorded without a result)``, when given."""
        if progress:
            status = self.record.status
            done = int(self.record.complete.sum())
            progress(done, n_frames, done - int((status == FRAME_OK).sum()))

    def flush(self) -> None:
        if self.dirty:
            results_store.write_completion(self.path, self.record)
            self.dirty = False
        self.last = time.monotonic()


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
DISK_FULL_HINT = ("the disk holding the store is full, or a file size or quota limit was reached: free space "
                  "and rerun the same config; frames already recorded are kept")


def failure_message(error: BaseException) -> str:
    """One line for a failed task: the exception, with what to do when the disk is full."""
    message = f"{type(error).__name__}: {error}"
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        message += f" ({DISK_FULL_HINT})"
    return message
