"""A real single-node SLURM for tests: slurmctld and slurmd started here, on loopback ports.

Needs root (slurmd runs jobs as their user) and the SLURM daemons and commands
(Debian: ``apt-get install slurm-wlm``). Authentication is ``auth/none``, so no munge
daemon is needed: the controller, the node and the commands all run on this machine
and listen on 127.0.0.1 only. Each start has its own folder (config, state, spool, logs)
and free ports, so two test sessions on one machine do not meet.

Use the ``slurm`` fixture (session-scoped): import it into a test module
(``from slurm_fixture import slurm  # noqa: F401``). While it lives, ``SLURM_CONF``
points at its config, so ``sbatch``/``squeue``/``scancel`` run by dask-jobqueue (or by a
``cccdask run`` subprocess, which inherits the environment) talk to it. It skips the
test, with the exact reason, where SLURM cannot start here.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

DAEMONS = ("slurmctld", "slurmd")
COMMANDS = ("sbatch", "squeue", "scancel", "sinfo")
PARTITION = "cccdask"


class SlurmUnavailable(RuntimeError):
    """SLURM cannot run here; the message says why (for the skip)."""


@dataclass
class Slurm:
    """A running single-node SLURM: its config, its daemons, its commands."""

    folder: Path
    conf: Path
    node: str
    cpus: int
    memory_mb: int
    partition: str = PARTITION
    daemons: list[subprocess.Popen] = field(default_factory=list)

    @property
    def environment(self) -> dict[str, str]:
        """The variables that point SLURM's commands at this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def command(self, *args: str, check: bool = True) -> str:
        """Run a SLURM command (``squeue``, ``sinfo``, ...) against this cluster; its stdout."""
        done = subprocess.run(list(args), env={**os.environ, **self.environment}, capture_output=True,
                              text=True, timeout=60)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def jobs(self) -> list[str]:
        """Ids of the jobs SLURM knows now (pending or running)."""
        return self.command("squeue", "-h", "-o", "%i").split()

    def wait_for(self, condition, what: str, timeout: float = 60.0, poll: float = 0.2) -> None:
        """Poll ``condition()`` until true; SlurmUnavailable naming ``what`` and the logs after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not condition():
            dead = [p.args[0] for p in self.daemons if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                cause = f"{', '.join(dead)} exited" if dead else f"not within {timeout:.0f} s"
                raise SlurmUnavailable(f"SLURM did not come up ({what}: {cause}).\n{self.log_tail()}")
            time.sleep(poll)

    def node_state(self) -> str:
        return self.command("sinfo", "-h", "-n", self.node, "-o", "%T", check=False).strip()

    def log_tail(self, lines: int = 15) -> str:
        parts = []
        for name in DAEMONS:
            log = self.folder / f"{name}.log"
            if log.exists():
                parts.append(f"--- {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(parts)

    def cancel_all(self, timeout: float = 60.0) -> None:
        """Cancel every job and wait until SLURM has none left."""
        if self.jobs():
            self.command("scancel", "-p", self.partition, check=False)
            self.wait_for(lambda: not self.jobs(), "cancelling the jobs", timeout)

    def stop(self) -> None:
        """Cancel the jobs, then stop the daemons started here (by their process ids)."""
        try:
            self.cancel_all()
        except (SlurmUnavailable, RuntimeError, subprocess.TimeoutExpired):
            pass
        for process in reversed(self.daemons):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def slurm_conf(folder: Path, node: str, cpus: int, memory_mb: int, ports: tuple[int, int]) -> str:
    """The slurm.conf of a one-node cluster on 127.0.0.1 whose every file lies in ``folder``."""
    return "\n".join([
        f"ClusterName=cccdasktest{ports[0]}",
        f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmctldPort={ports[0]}",
        f"SlurmdPort={ports[1]}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/none",
        "CredType=cred/none",
        f"StateSaveLocation={folder / 'state'}",
        f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
        f"SlurmdPidFile={folder / 'slurmd.pid'}",
        f"SlurmctldLogFile={folder / 'slurmctld.log'}",
        f"SlurmdLogFile={folder / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SchedulerType=sched/builtin",
        "MpiDefault=none",
        "ReturnToService=2",
        "KillWait=5",
        "MinJobAge=2",
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


def start_slurm(folder: Path, timeout: float = 60.0) -> Slurm:
    """Start slurmctld and slurmd with a config in ``folder``; return once the node is idle.

    Raises
    ------
    SlurmUnavailable
        Not root, the programs are not installed, or the daemons did not come up (with
        the end of their logs).
    """
    if os.geteuid() != 0:
        raise SlurmUnavailable(f"slurmd must run as root to start jobs; these tests run as uid {os.geteuid()}")
    missing = [name for name in DAEMONS + COMMANDS if shutil.which(name) is None]
    if missing:
        raise SlurmUnavailable(f"SLURM is not installed ({', '.join(missing)} not found); "
                               f"on Debian: apt-get install slurm-wlm")
    node = socket.gethostname().split(".")[0]
    cpus = min(2, os.cpu_count() or 1)
    memory_mb = int(min(4096, psutil.virtual_memory().total / 2**20 / 2))
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool"):
        (folder / sub).mkdir(exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text(slurm_conf(folder, node, cpus, memory_mb, (_free_port(), _free_port())))
    cluster = Slurm(folder, conf, node, cpus, memory_mb)
    environment = {**os.environ, **cluster.environment}
    try:
        for name, extra in (("slurmctld", ["-i"]), ("slurmd", ["-N", node])):
            with open(folder / f"{name}.out", "wb") as output:
                cluster.daemons.append(subprocess.Popen([name, "-D", *extra], env=environment, stdout=output,
                                                        stderr=subprocess.STDOUT, start_new_session=True))
        cluster.wait_for(lambda: cluster.node_state() == "idle", "the node becoming idle", timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A single-node SLURM for the session, ``SLURM_CONF`` set to it; skipped where it cannot start."""
    try:
        cluster = start_slurm(tmp_path_factory.mktemp("slurm"))
    except SlurmUnavailable as reason:
        pytest.skip(str(reason))
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SLURM_CONF", str(cluster.conf))
            yield cluster
    finally:
        cluster.stop()
