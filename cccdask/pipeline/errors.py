"""The errors a run raises (each names the problem and what to do)."""

from __future__ import annotations




class PipelineError(RuntimeError):
    """A run that could not finish; the store (if any) is left incomplete and resumable."""


class StoreConflictError(ValueError):
    """The output store exists and was written with a different config."""


class InputReadError(RuntimeError):
    """A task could not read its frames from an input file (corrupted or truncated data)."""


class FrameTooLargeError(ValueError):
    """One frame needs more memory than a worker thread has."""


class StallError(PipelineError):
    """No worker connected, or no task progressing, for ``execution.stall_timeout`` seconds."""
