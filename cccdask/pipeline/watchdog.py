"""The driver's watchdog: a run that cannot progress stops and says why, instead of waiting forever.

While frames remain, :meth:`Watchdog.check` (called by the driver whenever no task
finished for a poll interval) raises :class:`~cccdask.pipeline.errors.StallError` when

* no worker has been connected for ``execution.stall_timeout`` seconds (SLURM jobs
  refused, pending, failed at start or ended; all workers of a scheduler lost), or
* no task has finished for that long while no worker is running one of them,

at once when every SLURM submission so far was refused. The message carries what the
cluster knows (for SLURM: each job's state from squeue/sacct and its log's last lines).
A timeout of 0 waits forever.
"""

from __future__ import annotations

import time
from typing import Callable

from cccdask.pipeline.errors import StallError

POLL_SECONDS = 1.0  # how often the driver looks at the workers while no task finishes (s)


class Watchdog:
    """Tracks when a worker was last connected and a task last finished.

    Parameters
    ----------
    cluster : ClusterHandle
    timeout : float
        ``execution.stall_timeout`` (s); 0 never raises.
    clock : callable
        Monotonic seconds (a fake one in tests).
    """

    def __init__(self, cluster, timeout: float, clock: Callable[[], float] = time.monotonic):
        self.cluster, self.timeout, self.clock = cluster, timeout, clock
        self.last_worker = self.last_progress = clock()

    def progressed(self) -> None:
        """A task finished (or failed): the run is moving."""
        self.last_progress = self.clock()

    def check(self) -> None:
        """Raise StallError when the run cannot progress (see the module docstring)."""
        refused = self.cluster.refused()
        now = self.clock()
        if self.cluster.total_threads() > 0:
            self.last_worker = now
        elif refused is not None:
            raise StallError(self._explained(f"SLURM refused the job: {refused}"))
        if not self.timeout:
            return
        if now - self.last_worker >= self.timeout:
            raise StallError(self._explained(
                f"no worker has been connected for {self.timeout:g} s (execution.stall_timeout)"))
        if now - self.last_progress >= self.timeout and self.cluster.running_tasks() == 0:
            raise StallError(self._explained(
                f"no task has finished for {self.timeout:g} s and no worker is running one "
                f"(execution.stall_timeout)"))

    def _explained(self, reason: str) -> str:
        lines = self.cluster.explain()
        return reason + "".join(f"\n  {line}" for line in lines)
