"""SLURM jobs of a run: dask-jobqueue imported safely, submissions recorded, job states explained.

* :func:`import_slurm_cluster` imports dask-jobqueue and puts back the SIGINT handler
  its import replaces (its ``runner`` module installs one that calls ``sys.exit()``,
  which made Ctrl-C end a run with exit 0).
* :class:`JobRecord` is filled by the job class :func:`recording_job_class` makes: the
  id of every job submitted, and sbatch's message for every submission refused (one
  line, instead of a traceback from the event loop).
* :func:`explain_jobs` asks ``squeue`` and ``sacct`` what became of the jobs and shows
  the last lines of a failed job's log, for the driver's watchdog message.
* :func:`default_worker_extra_args`: ``--lifetime`` and ``--lifetime-stagger`` derived
  from the walltime, so workers retire before SLURM kills their job.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

LOG_TAIL_LINES = 5
SHOWN_JOBS = 3


def import_slurm_cluster():
    """``dask_jobqueue.SLURMCluster``, with this process's SIGINT handler as it was before the import."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as error:
        raise RuntimeError(
            "cluster.kind is 'slurm' but dask-jobqueue is not installed; install it with "
            "pip install 'cccdask[slurm]' (or pip install dask-jobqueue)."
        ) from error
    finally:
        if main:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    return SLURMCluster


def walltime_seconds(walltime: str) -> float:
    """Seconds of a SLURM time limit: 'MM', 'MM:SS', 'HH:MM:SS', 'D-HH', 'D-HH:MM', 'D-HH:MM:SS'."""
    text = walltime.strip()
    days = 0
    if "-" in text:
        head, text = text.split("-", 1)
        days = int(head)
        parts = [int(p) for p in text.split(":")]
        parts += [0] * (3 - len(parts))
        hours, minutes, seconds = parts
    else:
        parts = [int(p) for p in text.split(":")]
        if len(parts) == 1:
            hours, minutes, seconds = 0, parts[0], 0
        elif len(parts) == 2:
            hours, (minutes, seconds) = 0, parts
        else:
            hours, minutes, seconds = parts
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def default_worker_extra_args(walltime: str) -> list[str]:
    """``dask worker`` arguments that retire a worker before its job's walltime.

    A margin of a tenth of the walltime (at least 60 s) is kept: the lifetime is the
    walltime minus the margin, staggered by half the margin, so workers retire between
    1.5 and 0.5 margins before the walltime, one at a time, and new jobs replace them.
    """
    seconds = walltime_seconds(walltime)
    margin = max(60.0, seconds / 10)
    lifetime = max(seconds - margin, seconds / 2)
    stagger = min(margin / 2, lifetime / 2)
    return ["--lifetime", f"{int(lifetime)}s", "--lifetime-stagger", f"{int(stagger)}s"]


@dataclass
class JobRecord:
    """What happened to the jobs of one cluster: ids submitted, sbatch's refusals, the log folder."""

    log_directory: str | None = None
    job_name: str = "worker"
    submitted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def sbatch_message(error: BaseException) -> str:
    """The line sbatch wrote to stderr, out of dask-jobqueue's multi-line RuntimeError."""
    text = str(error)
    if "stderr:" in text:
        text = text.split("stderr:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def recording_job_class(base, record: JobRecord):
    """A subclass of dask-jobqueue's job class that records each submission in ``record``.

    A refused submission is recorded instead of raised: the job then counts as started
    without a job id (nothing to cancel), no worker joins, and the driver's watchdog
    names sbatch's message.
    """

    class RecordingJob(base):
        async def start(self):
            try:
                with self.job_file() as script:
                    out = await self._submit_job(script)
                    self.job_id = self._job_id_from_submit_output(out)
            except Exception as error:  # sbatch refused the job: recorded, named by the watchdog
                record.refused.append(sbatch_message(error))
            else:
                record.submitted.append(self.job_id)
            self.status = _running_status()

    return RecordingJob


def _running_status():
    from distributed.core import Status

    return Status.running


def _run(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def explain_jobs(record: JobRecord) -> list[str]:
    """One line per job: refused (sbatch's message), pending (the reason), running, or ended (state, log tail)."""
    lines = [f"sbatch refused the job: {message}" for message in dict.fromkeys(record.refused)]
    ids = list(dict.fromkeys(record.submitted))
    if not ids:
        return lines
    if len(ids) > SHOWN_JOBS:
        lines.append(f"{len(ids)} jobs submitted; the last {SHOWN_JOBS}:")
        ids = ids[-SHOWN_JOBS:]
    queued = {}
    for row in _run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i|%T|%r"]).splitlines():
        parts = row.strip().split("|")
        if len(parts) == 3:
            queued[parts[0]] = (parts[1], parts[2])
    ended = {}
    for row in _run(["sacct", "-n", "-P", "-X", "-j", ",".join(ids), "-o", "JobID,State,ExitCode"]).splitlines():
        parts = row.strip().split("|")
        if len(parts) == 3:
            ended[parts[0]] = (parts[1], parts[2])
    for job in ids:
        if job in queued:
            state, reason = queued[job]
            lines.append(f"job {job}: {state.lower()}" + (f" ({reason})" if reason and reason != "None" else ""))
            if state != "RUNNING":
                continue
        else:
            state, code = ended.get(job, ("ended (no longer known to squeue or sacct)", ""))
            lines.append(f"job {job}: {state.lower()}" + (f", exit code {code}" if code else ""))
        log = job_log(record, job)
        if log is not None:
            tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-LOG_TAIL_LINES:]
            lines.append(f"  log {log}" + ("".join(f"\n    {line}" for line in tail) if tail else " (empty)"))
    return lines


def job_log(record: JobRecord, job: str) -> Path | None:
    """The log file of a job: dask-jobqueue's names in ``log_directory``, else SLURM's ``slurm-<id>.out``."""
    candidates = []
    if record.log_directory:
        folder = Path(record.log_directory)
        candidates += [folder / f"{record.job_name}-{job}.err", folder / f"{record.job_name}-{job}.out"]
    candidates.append(Path(f"slurm-{job}.out"))
    found = [path for path in candidates if path.is_file() and path.stat().st_size]
    return found[0].absolute() if found else None

