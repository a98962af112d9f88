"""Where a run's tasks execute: an embedded LocalCluster, a running scheduler, or SLURM.

:func:`connect` turns the ``cluster:`` and ``execution:`` sections of a config into a
:class:`distributed.Client`; the pipeline's code is the same on all of them.

* ``local`` (default): a LocalCluster sized to this machine: one single-threaded
  worker process per core, the machine's memory shared out between them. Every socket
  (scheduler, workers, nannies, dashboard) listens on ``cluster.local.host``, loopback
  by default.
* ``address`` / ``scheduler_file``: connect to a scheduler that is already running
  (``dask scheduler`` + ``dask worker``, a JupyterHub gateway, ...), over TLS with the
  files of ``cluster.security``.
* ``slurm``: dask-jobqueue's SLURMCluster (``pip install 'cccdask[slurm]'``), imported
  only then; TLS with credentials made for the run unless ``cluster.security: false``,
  the dashboard on loopback. :mod:`cccdask.security` holds these rules.
* ``threads`` / ``synchronous``: no distributed at all: the tasks run in a thread pool
  of this process, or one at a time in it (debugging, and the determinism checks: every
  kind must write the same bytes). :class:`InProcessClient` offers the few Client
  methods the pipeline uses, so the run code is the same.

Dask settings from ``execution:`` (memory thresholds, other keys) are applied while
the cluster is created, so workers started by cccdask inherit them; a cluster that is
already running keeps its own.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import getpass
import json
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import dask
import psutil
from distributed import Client, LocalCluster
from distributed.security import Security

from cccdask.config import ClusterConfig, ExecutionConfig, SlurmConfig, TLSFiles
from cccdask.security import (
    LOOPBACK,
    client_security,
    dashboard_bind_address,
    dashboard_message,
    is_loopback,
    temporary_credentials,
)


@dataclass
class ClusterHandle:
    """A connected client and what the run needs to know about its workers."""

    client: Client  # or an InProcessClient for the in-process kinds
    kind: str
    dashboard_link: str | None
    declared_memory_per_thread: float | None = None
    jobs: object | None = None  # the JobRecord of a SLURM cluster (cccdask.slurm_jobs)

    def wait_any(self, futures: list, timeout: float) -> list:
        """Those of ``futures`` that are done (finished, failed, cancelled), after at most ``timeout`` s.

        Returns as soon as one is done; an empty list when none is after ``timeout``.
        """
        if not futures:
            return []
        if isinstance(self.client, InProcessClient):
            concurrent.futures.wait([f._future for f in futures], timeout=timeout,
                                    return_when=concurrent.futures.FIRST_COMPLETED)
        else:
            from distributed import wait

            try:
                wait(futures, timeout=timeout, return_when="FIRST_COMPLETED")
            except TimeoutError:
                pass
        return [f for f in futures if f.status in ("finished", "error", "cancelled")]

    def running_tasks(self) -> int:
        """Tasks the workers are processing now (in this process: those not done)."""
        if isinstance(self.client, InProcessClient):
            return 1  # tasks run here: they cannot be lost, only slow
        return int(sum(len(keys) for keys in self.client.processing().values()))

    def explain(self) -> list[str]:
        """Lines on what became of the cluster's jobs (SLURM: squeue, sacct, log tails); else none."""
        if self.jobs is None:
            return []
        from cccdask.slurm_jobs import explain_jobs

        return explain_jobs(self.jobs)

    def refused(self) -> str | None:
        """sbatch's message when every job submitted so far was refused, else None."""
        if self.jobs is None or not self.jobs.refused or self.jobs.submitted:
            return None
        return self.jobs.refused[-1]

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


class _InProcessFuture:
    """A task of an :class:`InProcessClient`: the subset of distributed.Future the pipeline uses."""

    def __init__(self, key: str, future: concurrent.futures.Future):
        self.key, self._future = key, future

    @property
    def status(self) -> str:
        if not self._future.done():
            return "pending"
        return "error" if self._future.exception() is not None else "finished"

    def result(self, timeout: float | None = None):
        return self._future.result(timeout)

    def release(self) -> None:
        pass


class _SynchronousExecutor(concurrent.futures.Executor):
    """Runs each task when it is submitted, in the calling thread."""

    def submit(self, fn, /, *args, **kwargs):
        future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:  # handed to the caller through the future, like a pool would
            future.set_exception(error)
        return future


class InProcessClient:
    """Runs tasks in this process: a thread pool (``threads``) or one at a time (``synchronous``).

    Offers the part of :class:`distributed.Client` the pipeline uses: ``submit`` (with
    ``retries``), ``compute``, ``nthreads``, ``scheduler_info``, ``close``.
    """

    def __init__(self, kind: str, threads: int):
        self.kind, self.threads = kind, threads
        self._executor = (_SynchronousExecutor() if kind == "synchronous"
                          else concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="cccdask"))

    def submit(self, function, *args, key: str, retries: int = 0, pure: bool = False, **kwargs) -> _InProcessFuture:
        def attempt():
            for remaining in range(retries, -1, -1):
                try:
                    return function(*args, **kwargs)
                except Exception:
                    if not remaining:
                        raise

        return _InProcessFuture(key, self._executor.submit(attempt))

    def compute(self, collection) -> _InProcessFuture:
        scheduler = "synchronous" if self.kind == "synchronous" else "threads"
        done = concurrent.futures.Future()
        try:
            done.set_result(dask.compute(collection, scheduler=scheduler, num_workers=self.threads)[0])
        except Exception as error:
            done.set_exception(error)
        return _InProcessFuture("compute", done)

    def nthreads(self) -> dict[str, int]:
        return {self.kind: self.threads}

    def scheduler_info(self, **kwargs) -> dict:
        return {"workers": {}, "services": {}}

    def close(self) -> None:
        self._executor.shutdown(wait=True)


# glibc returns freed memory to the OS above 64 KiB by default under distributed, so every
# frame's FFT buffers are fresh pages whose first touch costs 20-50% of the FFT time on
# these VMs (performance.md). Workers started by cccdask keep freed memory for reuse.
# One malloc arena: tasks run in worker threads, whose arenas are heaps of at most 64 MiB
# that glibc unmaps as soon as one is wholly free, whatever the trim threshold; a task on
# 1024² frames (batches of 16 MiB arrays) then met ~13 MiB of fresh pages per frame
# (3 362 page faults), none in the main arena (tests/test_cluster_settings.py).
FFT_FRIENDLY_MALLOC = {"MALLOC_TRIM_THRESHOLD_": str(2**28), "MALLOC_MMAP_THRESHOLD_": str(2**25),
                       "MALLOC_ARENA_MAX": "1"}


# what in-thread workers do with the process's memory: nothing (the memory limit still sizes the tasks)
IN_THREAD_MEMORY_SETTINGS = {"distributed.worker.memory.target": False, "distributed.worker.memory.spill": False,
                             "distributed.worker.memory.pause": False}


# Background timers of every scheduler and worker process, from distributed's defaults
# to these (still far below anything a run notices): the event loop's health tick
# (20 ms), the statistical profiler's sampling of the running task (10 ms) and the system
# monitor behind the dashboard's plots (500 ms). With the defaults two idle single-thread
# workers and the scheduler took 10-16 % of a core on these 2-core VMs, 3-4 % with these;
# where the driver shares the cores with the workers that is a few % of every run.
QUIET_TIMERS = {
    "distributed.admin.tick.interval": ("20ms", "200ms"),
    "distributed.worker.profile.interval": ("10ms", "50ms"),
    "distributed.admin.system-monitor.interval": ("500ms", "1s"),
}


DISTRIBUTED_TRIM_DEFAULT = "65536"


def forget_distributed_malloc_default() -> None:
    """Drop distributed's own ``MALLOC_TRIM_THRESHOLD_=65536`` from this process's environment.

    A Nanny copies its pre-spawn variables into the environment of the process that
    starts it (``os.environ.update``), and the environment then takes precedence over
    the Dask config for every later Nanny: after a plain ``LocalCluster()`` in a notebook,
    the workers of every cluster cccdask starts would trim again. A value other than
    distributed's default was set on purpose and is kept.
    """
    if os.environ.get("MALLOC_TRIM_THRESHOLD_") == DISTRIBUTED_TRIM_DEFAULT:
        del os.environ["MALLOC_TRIM_THRESHOLD_"]


def cluster_process_settings() -> dict:
    """Dask settings for the processes of a cluster cccdask starts: FFT-friendly malloc, quiet timers.

    Variables already set in this process's environment keep their value (distributed
    gives the environment precedence); a timer changed from distributed's default (in a
    Dask config file) keeps its value; ``execution.dask_config`` overrides them all.
    """
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    for name, value in FFT_FRIENDLY_MALLOC.items():
        environ.setdefault(name, value)
        if str(environ[name]) == DISTRIBUTED_TRIM_DEFAULT:
            environ[name] = value
    settings = {"distributed.nanny.pre-spawn-environ": environ}
    for key, (default, quiet) in QUIET_TIMERS.items():
        if dask.config.get(key, default=default) == default:
            settings[key] = quiet
    return settings


def local_cluster_size(n_workers: int | None, threads_per_worker: int) -> tuple[int, int]:
    """Workers and memory per worker (bytes) for an embedded cluster on this machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = n_workers or max(1, cores // threads_per_worker)
    memory = int(psutil.virtual_memory().total * 0.9 / workers)
    return workers, memory


def _slurm_cluster(settings: SlurmConfig, security: Security | None, dashboard: str | None):
    """A SLURMCluster for these settings, and the :class:`~cccdask.slurm_jobs.JobRecord` of its jobs."""
    from cccdask.slurm_jobs import JobRecord, default_worker_extra_args, import_slurm_cluster, recording_job_class

    SLURMCluster = import_slurm_cluster()
    extra_args = settings.worker_extra_args
    if extra_args is None:
        extra_args = default_worker_extra_args(settings.walltime)
    record = JobRecord(log_directory=settings.log_directory, job_name=settings.job_name)
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
        security=security,
        # the scheduler listens on the network for the jobs; its HTTP server (dashboard or not) and
        # the workers' (metrics) need not
        scheduler_options={"dashboard_address": dashboard or f"{LOOPBACK}:0", "dashboard": dashboard is not None,
                           **({"interface": settings.scheduler_interface} if settings.scheduler_interface else {})},
        worker_extra_args=["--dashboard-address", f"{LOOPBACK}:0", *extra_args],
        job_directives_skip=list(settings.job_directives_skip),
        job_name=settings.job_name,
        python=settings.python,
        death_timeout=settings.death_timeout,
        job_cls=recording_job_class(SLURMCluster.job_cls, record),
    )
    cluster = SLURMCluster(**{k: v for k, v in options.items() if v is not None})
    if settings.adapt:
        cluster.adapt(minimum_jobs=1, maximum_jobs=settings.jobs)
    else:  # a fixed number of jobs; adapt replaces those that end (worker lifetime, walltime, failure)
        cluster.adapt(minimum_jobs=settings.jobs, maximum_jobs=settings.jobs)
    return cluster, record


def _parse_bytes(text: str) -> int:
    from dask.utils import parse_bytes

    return int(parse_bytes(text))


@dataclass
class _Joined:
    """What starting or joining one kind of cluster gives :func:`connect`."""

    client: Client | InProcessClient
    declared_memory_per_thread: float | None = None
    dashboard_link: str | None = None
    jobs: object | None = None  # the JobRecord of a SLURM cluster



def _run_in_process(cluster: ClusterConfig, log) -> _Joined:
    threads = 1 if cluster.kind == "synchronous" else (cluster.threads or local_cluster_size(None, 1)[0])
    log(f"Running in this process: {cluster.kind}" + (f", {threads} thread(s)" if threads > 1 else ""))
    return _Joined(InProcessClient(cluster.kind, threads), psutil.virtual_memory().total * 0.9 / threads)


def _start_local(cluster: ClusterConfig, stack: contextlib.ExitStack, log) -> _Joined:
    local = cluster.local
    if not is_loopback(local.host):
        log(f"Warning: cluster.local.host is {local.host}: the scheduler, the workers and the dashboard accept "
            f"connections from other machines, without authentication (anyone who reaches them can run code as "
            f"you). Leave it out (127.0.0.1) and reach the dashboard through an SSH tunnel.")
    workers, memory = local_cluster_size(local.n_workers, local.threads_per_worker)
    memory_limit = local.memory_limit or memory
    # in-thread workers talk over the inproc transport (no socket) unless they must be reached from elsewhere
    tcp = local.processes or not is_loopback(local.host)
    dashboard = dashboard_bind_address(local.dashboard_address, local.host)
    if not local.processes:
        # in-thread workers measure this whole process (driver, inputs, results): at 80 % of their
        # memory_limit they would pause and the run wait forever on the driver's own memory
        stack.enter_context(dask.config.set(IN_THREAD_MEMORY_SETTINGS))
    started = LocalCluster(
        n_workers=workers,
        threads_per_worker=local.threads_per_worker,
        processes=local.processes,
        memory_limit=memory_limit,
        dashboard_address=dashboard,
        host=local.host if tcp else None,
        protocol="tcp://" if tcp else None,
        # without a dashboard the scheduler still serves its HTTP endpoints (health, metrics), on
        # the address of its first listener: an in-thread cluster's is this machine's network address
        scheduler_kwargs=None if dashboard is not None else {"dashboard_address": f"{local.host}:0"},
    )
    stack.callback(started.close)
    client = Client(started, timeout=cluster.connect_timeout)
    limit = _parse_bytes(memory_limit) if isinstance(memory_limit, str) else memory_limit
    log(f"Started a local cluster: {workers} worker(s) x {local.threads_per_worker} thread(s), "
        f"{_format_bytes(limit)} each")
    return _Joined(client, dashboard_link=_dashboard_link(client, dashboard))


def _join_running(cluster: ClusterConfig, log) -> _Joined:
    """A scheduler that is already running, in plain TCP or, with ``cluster.security``, TLS."""
    security = client_security(cluster.security) if isinstance(cluster.security, TLSFiles) else None
    tls = " over TLS" if security is not None else ""
    if cluster.kind == "address":
        client = Client(cluster.address, security=security, timeout=cluster.connect_timeout)
        log(f"Connected to the scheduler at {cluster.address}{tls}")
        return _Joined(client, dashboard_link=_dashboard_link(client))
    path = cluster.scheduler_file
    if not path.is_file():
        raise FileNotFoundError(f"cluster.scheduler_file {path} does not exist; start the scheduler with "
                                f"`dask scheduler --scheduler-file {path}` first.")
    address = str(json.loads(path.read_text()).get("address", ""))
    if address.startswith("tls://") and security is None:
        raise ValueError(f"cluster.scheduler_file {path} names a TLS scheduler ({address}) but cluster.security "
                         f"is not set; give security: {{ca_file: ..., cert: ..., key: ...}}")
    client = Client(scheduler_file=str(path), security=security, timeout=cluster.connect_timeout)
    log(f"Connected to the scheduler in {path}{tls}")
    return _Joined(client, dashboard_link=_dashboard_link(client))


def _start_slurm(cluster: ClusterConfig, shared_directory: Path | None, stack: contextlib.ExitStack, log) -> _Joined:
    slurm = cluster.slurm
    security = None
    if cluster.security is False:
        log("Warning: cluster.security is false: the scheduler listens on the network in plain TCP, and anyone "
            "who can reach it can connect and run code as you. Remove the key to use TLS (the default).")
    else:
        directory = slurm.shared_directory or shared_directory or Path.cwd()
        security, folder = stack.enter_context(temporary_credentials(Path(directory)))
        log(f"TLS: temporary credentials in {folder} (owner-only, removed when the run ends)")
    dashboard = dashboard_bind_address(slurm.dashboard_address, LOOPBACK)
    started, jobs = _slurm_cluster(slurm, security, dashboard)
    stack.callback(started.close)  # before the credentials are removed: the jobs are cancelled first
    client = Client(started, timeout=cluster.connect_timeout)  # takes the cluster's security
    per_process = _parse_bytes(slurm.memory) / slurm.processes
    log(f"Submitted {slurm.jobs} SLURM job(s) for the scheduler at {started.scheduler_address}; "
        f"workers join as the jobs start")
    return _Joined(client, per_process / max(slurm.cores // slurm.processes, 1), _dashboard_link(client, dashboard),
                   jobs)


@contextlib.contextmanager
def connect(
    cluster: ClusterConfig,
    execution: ExecutionConfig,
    log: Callable[[str], None] | None = None,
    shared_directory: Path | None = None,
) -> Iterator[ClusterHandle]:
    """Start or join the configured cluster; close what was started on exit.

    Parameters
    ----------
    cluster, execution : the config sections.
    log : callable, optional
        Receives one line per event (e.g. the dashboard address).
    shared_directory : Path, optional
        A folder the SLURM jobs can read (the output store's), for the run's temporary TLS
        credentials when ``cluster.slurm.shared_directory`` is not set.
    """
    log = log or (lambda message: None)
    forget_distributed_malloc_default()
    settings = {**cluster_process_settings(), **execution.dask_settings()}
    with dask.config.set(settings), _dashboard_port_moves_silently(), contextlib.ExitStack() as stack:
        if cluster.kind in ("threads", "synchronous"):
            joined = _run_in_process(cluster, log)
        elif cluster.kind == "local":
            joined = _start_local(cluster, stack, log)
        elif cluster.kind in ("address", "scheduler_file"):
            joined = _join_running(cluster, log)
        else:
            joined = _start_slurm(cluster, shared_directory, stack, log)
        stack.callback(joined.client.close)
        if joined.dashboard_link:
            remote = cluster.kind == "slurm" or "SSH_CONNECTION" in os.environ
            log(dashboard_message(joined.dashboard_link, remote, socket.gethostname(), getpass.getuser()))
        yield ClusterHandle(client=joined.client, kind=cluster.kind, dashboard_link=joined.dashboard_link,
                            declared_memory_per_thread=joined.declared_memory_per_thread, jobs=joined.jobs)


@contextlib.contextmanager
def _dashboard_port_moves_silently():
    """A taken dashboard port moves to a free one without distributed's UserWarning.

    The link cccdask prints names the port actually used.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Port \d+ is already in use", category=UserWarning)
        yield


def _dashboard_link(client: Client, bound: str | None = "") -> str | None:
    """The dashboard's address. ``bound``: the 'address:port' of a dashboard cccdask started
    (None: it started none; '': a scheduler that was already running, which says where its is)."""
    if bound is None:
        return None
    try:
        port = client.scheduler_info().get("services", {}).get("dashboard")
    except Exception:
        return None
    host = bound.rsplit(":", 1)[0]
    if port is None or not bound or host in ("", "0.0.0.0"):
        return None if port is None else client.dashboard_link
    return f"http://{host}:{port}/status"


def _format_bytes(n: float) -> str:
    from dask.utils import format_bytes

    return format_bytes(int(n))
