"""Where a run's tasks execute: an embedded LocalCluster, a running scheduler, or SLURM.

:func:`connect` turns the ``cluster:`` and ``execution:`` sections of a config into a
:class:`distributed.Client`; the pipeline's code is the same on all of them.

* ``local`` (default): a LocalCluster sized to this machine: one single-threaded
  worker process per core, the machine's memory shared out between them.
* ``address`` / ``scheduler_file``: connect to a scheduler that is already running
  (``dask scheduler`` + ``dask worker``, a JupyterHub gateway, ...).
* ``slurm``: dask-jobqueue's SLURMCluster (``pip install 'cccdask[slurm]'``), imported
  only then.

Dask settings from ``execution:`` (memory thresholds, other keys) are applied while
the cluster is created, so workers started by cccdask inherit them; a cluster that is
already running keeps its own.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import dask
import psutil
from distributed import Client, LocalCluster

from cccdask.config import ClusterConfig, ExecutionConfig, SlurmConfig


@dataclass
class ClusterHandle:
    """A connected client and what the run needs to know about its workers."""

    client: Client
    kind: str
    dashboard_link: str | None
    declared_memory_per_thread: float | None = None

    def total_threads(self) -> int:
        """Threads of the workers connected now."""
        return int(sum(self.client.nthreads().values()))

    def memory_per_thread(self) -> float | None:
        """The smallest memory limit per worker thread (bytes); None when unlimited or unknown."""
        workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        budgets = [
            w["memory_limit"] / max(w["nthreads"], 1)
            for w in workers.values()
            if w.get("memory_limit")
        ]
        if budgets:
            return float(min(budgets))
        return self.declared_memory_per_thread


# glibc returns freed memory to the OS above 64 KiB by default under distributed, so every
# frame's FFT buffers are fresh pages whose first touch costs 20-50% of the FFT time on
# these VMs (performance.md). Workers started by cccdask keep freed memory for reuse.
FFT_FRIENDLY_MALLOC = {"MALLOC_TRIM_THRESHOLD_": str(2**28), "MALLOC_MMAP_THRESHOLD_": str(2**25)}


def worker_environment_settings() -> dict:
    """Dask settings giving worker processes started from now on the FFT-friendly malloc.

    Variables already set in this process's environment keep their value (distributed
    gives the environment precedence), and ``execution.dask_config`` can override them.
    """
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    for name, value in FFT_FRIENDLY_MALLOC.items():
        environ.setdefault(name, value)
        if environ[name] == 65536 or environ[name] == "65536":  # distributed's default
            environ[name] = value
    return {"distributed.nanny.pre-spawn-environ": environ}


def local_cluster_size(n_workers: int | None, threads_per_worker: int) -> tuple[int, int]:
    """Workers and memory per worker (bytes) for an embedded cluster on this machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = n_workers or max(1, cores // threads_per_worker)
    memory = int(psutil.virtual_memory().total * 0.9 / workers)
    return workers, memory


def _slurm_cluster(settings: SlurmConfig):
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as error:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "cluster.kind is 'slurm' but dask-jobqueue is not installed; install it with "
            "pip install 'cccdask[slurm]' (or pip install dask-jobqueue)."
        ) from error
    options = dict(
        cores=settings.cores,
        memory=settings.memory,
        processes=settings.processes,
        walltime=settings.walltime,
        queue=settings.queue,
        account=settings.account,
        interface=settings.interface,
        local_directory=settings.local_directory,
        log_directory=settings.log_directory,
        job_extra_directives=list(settings.job_extra_directives),
        job_script_prologue=list(settings.job_script_prologue),
    )
    cluster = SLURMCluster(**{k: v for k, v in options.items() if v is not None})
    if settings.adapt:
        cluster.adapt(minimum_jobs=1, maximum_jobs=settings.jobs)
    else:
        cluster.scale(jobs=settings.jobs)
    return cluster


def _parse_bytes(text: str) -> int:
    from dask.utils import parse_bytes

    return int(parse_bytes(text))


@contextlib.contextmanager
def connect(
    cluster: ClusterConfig,
    execution: ExecutionConfig,
    log: Callable[[str], None] | None = None,
) -> Iterator[ClusterHandle]:
    """Start or join the configured cluster; close what was started on exit.

    Parameters
    ----------
    cluster, execution : the config sections.
    log : callable, optional
        Receives one line per event (e.g. the dashboard address).
    """
    log = log or (lambda message: None)
    settings = {**worker_environment_settings(), **execution.dask_settings()}
    with dask.config.set(settings):
        started = None
        declared = None
        try:
            if cluster.kind == "local":
                local = cluster.local
                workers, memory = local_cluster_size(local.n_workers, local.threads_per_worker)
                memory_limit = local.memory_limit or memory
                started = LocalCluster(
                    n_workers=workers,
                    threads_per_worker=local.threads_per_worker,
                    processes=local.processes,
                    memory_limit=memory_limit,
                    dashboard_address=local.dashboard_address,
                    host=local.host,
                )
                client = Client(started, timeout=cluster.connect_timeout)
                log(f"Started a local cluster: {workers} worker(s) x {local.threads_per_worker} thread(s), "
                    f"{_format_bytes(_parse_bytes(str(memory_limit)) if isinstance(memory_limit, str) else memory_limit)} each")
            elif cluster.kind == "address":
                client = Client(cluster.address, timeout=cluster.connect_timeout)
                log(f"Connected to the scheduler at {cluster.address}")
            elif cluster.kind == "scheduler_file":
                if not cluster.scheduler_file.is_file():
                    raise FileNotFoundError(
                        f"cluster.scheduler_file {cluster.scheduler_file} does not exist; start the "
                        f"scheduler with `dask scheduler --scheduler-file {cluster.scheduler_file}` first."
                    )
                client = Client(scheduler_file=str(cluster.scheduler_file), timeout=cluster.connect_timeout)
                log(f"Connected to the scheduler in {cluster.scheduler_file}")
            else:
                slurm = cluster.slurm
                started = _slurm_cluster(slurm)
                client = Client(started, timeout=cluster.connect_timeout)
                per_process = _parse_bytes(slurm.memory) / slurm.processes
                declared = per_process / max(slurm.cores // slurm.processes, 1)
                log(f"Submitted {slurm.jobs} SLURM job(s); workers join as the jobs start")
            link = getattr(client, "dashboard_link", None) if _has_dashboard(client) else None
            if link:
                log(f"Dask dashboard: {link}")
            handle = ClusterHandle(client=client, kind=cluster.kind, dashboard_link=link,
                                   declared_memory_per_thread=declared)
            try:
                yield handle
            finally:
                client.close()
        finally:
            if started is not None:
                started.close()


def _has_dashboard(client: Client) -> bool:
    try:
        return "dashboard" in client.scheduler_info().get("services", {})
    except Exception:
        return False


def _format_bytes(n: float) -> str:
    from dask.utils import format_bytes

    return format_bytes(int(n))
