"""The driver's completion record and the one-line messages of failed tasks.

A frame is **recorded complete** only here: :meth:`Completion.add` takes the outcomes a
task (or the tiled path) returned after its large outputs were written, with its small
results (scalars, profiles), and :meth:`Completion.flush` first writes the small
results in blocks (:class:`~cccdask.pipeline.blocks.BlockWriter`), then the store's
``frame_status``/``frame_error`` (:func:`cccdask.io.store.write_completion`). A frame
marked complete therefore always has its data on disk.
"""

from __future__ import annotations

import errno
import time
from pathlib import Path

from cccdask.io import store as results_store
from cccdask.io.store import FRAME_OK, CompletionRecord
from cccdask.pipeline.blocks import BlockWriter


FLUSH_SHARE = 0.02
"""Most of the driver's wall time spent writing blocks and the record (a flush rewrites
whole blocks, up to 8 MiB per variable: on a machine where the driver shares the cores
with the workers, 10 % of its time was ~5 ms of CPU per 1024² frame)."""


class Completion:
    """The driver's completion record, flushed to the store at most every ``interval`` s.

    Parameters
    ----------
    path : Path
        The store.
    record : CompletionRecord
        As read from the store.
    blocks : BlockWriter, optional
        Writes the small results the tasks return; flushed before the record.
    interval : float
        Seconds between flushes (s); longer when a flush takes longer, so that at most
        :data:`FLUSH_SHARE` of the driver's time goes to flushing.
    """

    def __init__(self, path: Path, record: CompletionRecord, blocks: BlockWriter | None = None,
                 interval: float = 0.5):
        self.path, self.record, self.blocks, self.interval = path, record, blocks, interval
        self.dirty = False
        self.last = time.monotonic()
        self.flush_seconds = 0.0

    def add(self, outcomes, results: tuple[int, dict] | None = None) -> None:
        """Record a task's outcomes ``(frame, status, reason)`` and its small results.

        ``results`` is ``(start, arrays)``: per variable written in blocks, the values
        of frames ``start .. start + n - 1``.
        """
        first = not self.dirty and not self.record.complete.any()  # the first frames are flushed at once
        if results is not None and self.blocks is not None:
            self.blocks.add(*results)
        for index, status, reason in outcomes:
            self.record.errors[index] = reason
            self.record.status[index] = status
        self.dirty = True
        if first or time.monotonic() - self.last >= max(self.interval, self.flush_seconds / FLUSH_SHARE):
            self.flush()

    def report(self, progress, n_frames: int) -> None:
        """``progress(frames recorded, n_frames, frames recorded without a result)``, when given."""
        if progress:
            status = self.record.status
            done = int(self.record.complete.sum())
            progress(done, n_frames, done - int((status == FRAME_OK).sum()))

    def flush(self) -> None:
        """Write the small results' blocks, then the completion record."""
        if self.dirty:
            began = time.monotonic()
            if self.blocks is not None:
                self.blocks.flush()
            results_store.write_completion(self.path, self.record)
            self.dirty = False
            self.flush_seconds = time.monotonic() - began
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


def frame_ranges(indices, limit: int = 20) -> str:
    """Frame indices as ranges, e.g. '3, 5-9' (at most ``limit`` ranges, then how many more)."""
    parts, start = [], None
    indices = [int(i) for i in indices]
    for k, i in enumerate(indices):
        if start is None:
            start = i
        if k + 1 == len(indices) or indices[k + 1] != i + 1:
            parts.append(str(start) if start == i else f"{start}-{i}")
            start = None
    shown = ", ".join(parts[:limit])
    return shown + (f", ... ({len(parts) - limit} more ranges)" if len(parts) > limit else "")
