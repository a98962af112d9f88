"""``cluster: {kind: slurm}`` on a real single-node SLURM (tests/slurm_fixture.py): TLS by default.

The workers are dask-jobqueue jobs run by slurmd; the interface is ``lo`` so that the
test needs no network. Skipped, with the reason, where SLURM cannot start.
"""

import os
import stat
import time

import dask
import psutil
import pytest
import xarray as xr

pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is not installed (pip install 'cccdask[slurm]')")

from distributed import Client  # noqa: E402
from slurm_fixture import slurm  # noqa: E402,F401  (the fixture)
from test_security import _config, assert_refused, assert_results_are, series  # noqa: E402,F401

from cccdask.cluster import connect  # noqa: E402
from cccdask.config import ClusterConfig, ExecutionConfig, config_from_dict  # noqa: E402
from cccdask.pipeline import run  # noqa: E402
from cccdask.security import CREDENTIALS_PREFIX  # noqa: E402

WORKER_START_S = 180


def _slurm_cluster(tmp_path, **cluster) -> dict:
    slurm = {"cores": 1, "memory": "1GB", "jobs": 1, "interface": "lo", "walltime": "00:10:00",
             "log_directory": str(tmp_path / "logs")}
    return {"kind": "slurm", "slurm": slurm, "connect_timeout": WORKER_START_S, **cluster}


def _credentials(folder):
    return sorted(folder.glob(CREDENTIALS_PREFIX + "*"))


def _no_key_material(*texts: str) -> None:
    for text in texts:
        assert "-----BEGIN" not in text and "PRIVATE KEY" not in text


def test_slurm_workers_join_over_tls_and_plain_clients_are_refused(slurm, tmp_path):
    lines = []
    cluster = ClusterConfig.model_validate(_slurm_cluster(tmp_path))
    with connect(cluster, ExecutionConfig(), lines.append, shared_directory=tmp_path) as handle:
        client = handle.client
        client.wait_for_workers(1, timeout=WORKER_START_S)
        (folder,) = _credentials(tmp_path)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in folder.iterdir()} == {"cert.pem": 0o600,
                                                                                    "key.pem": 0o600}
        address = client.scheduler.address
        workers = client.scheduler_info(n_workers=-1)["workers"]
        assert address.startswith("tls://127.0.0.1:") and workers
        assert all(worker.startswith("tls://127.0.0.1:") for worker in workers), list(workers)
        # the worker really is a SLURM job of this cluster
        job = client.submit(lambda: os.environ.get("SLURM_JOB_ID"), pure=False).result()
        assert job in slurm.jobs()
        assert_refused(address.replace("tls://", "tcp://"))
        assert_refused(address)
        # the dashboard (in this process, with the scheduler) listens on loopback; the link says how to reach it
        port = client.scheduler_info()["services"]["dashboard"]
        bound = [c.laddr.ip for c in psutil.Process().net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
        assert bound == ["127.0.0.1"]
        assert handle.dashboard_link == f"http://127.0.0.1:{port}/status"
        assert any(line.startswith(f"Dask dashboard: {handle.dashboard_link} (listens on this machine only). "
                                   f"From your computer: ssh -N -L {port}:127.0.0.1:{port} ") for line in lines)
    assert _credentials(tmp_path) == []
    slurm.wait_for(lambda: not slurm.jobs(), "the run's jobs ending with it")
    assert any(line.startswith(f"TLS: temporary credentials in {folder}") for line in lines), lines
    _no_key_material(*lines, *(log.read_text() for log in (tmp_path / "logs").iterdir()))


def test_a_slurm_run_writes_the_results_and_removes_its_credentials(slurm, series, tmp_path):
    folder, expected = series
    lines = []
    store = tmp_path / "slurm.zarr"
    run(config_from_dict(_config(folder, store, _slurm_cluster(tmp_path))), log=lines.append)
    assert_results_are(store, expected)
    assert _credentials(tmp_path) == []  # made beside the store (which the workers write), removed after
    assert any(line.startswith(f"TLS: temporary credentials in {tmp_path / CREDENTIALS_PREFIX}") for line in lines)
    with xr.open_zarr(str(store)) as stored:
        recorded = stored.attrs["config"]
    _no_key_material(recorded, *lines, *(log.read_text() for log in (tmp_path / "logs").iterdir()))


def test_slurm_without_tls_is_an_explicit_warned_choice(slurm, tmp_path):
    lines = []
    cluster = ClusterConfig.model_validate(_slurm_cluster(tmp_path, security=False))
    with connect(cluster, ExecutionConfig(), lines.append, shared_directory=tmp_path) as handle:
        handle.client.wait_for_workers(1, timeout=WORKER_START_S)
        address = handle.client.scheduler.address
        assert address.startswith("tcp://127.0.0.1:")
        assert all(w.startswith("tcp://") for w in handle.client.scheduler_info(n_workers=-1)["workers"])
        with Client(address, timeout=30) as anyone:  # what TLS prevents: any plain client gets in
            assert anyone.submit(sum, [1, 2], pure=False).result() == 3
    assert _credentials(tmp_path) == []
    assert any(line.startswith("Warning: cluster.security is false: the scheduler listens on the network in plain "
                               "TCP") for line in lines), lines


def test_a_refused_submission_ends_the_run_at_once_with_sbatchs_message(slurm, series, tmp_path):
    from cccdask.pipeline.errors import StallError

    folder, _ = series
    store = tmp_path / "refused.zarr"
    config = _config(folder, store, _slurm_cluster(tmp_path))
    config["cluster"]["slurm"]["queue"] = "no-such-partition"
    config["execution"]["stall_timeout"] = 600  # a refusal does not wait for it
    with pytest.raises(StallError) as caught:
        run(config_from_dict(config))
    message = str(caught.value)
    assert message.startswith("SLURM refused the job: sbatch: error: ")
    assert "partition" in message.splitlines()[0].lower()
    assert "Traceback" not in message and not store.exists()


def test_a_job_that_dies_at_start_is_named_with_its_state_and_log(slurm, series, tmp_path):
    from cccdask.pipeline.errors import StallError

    folder, _ = series
    store = tmp_path / "dies.zarr"
    cluster = _slurm_cluster(tmp_path)
    cluster["slurm"]["job_script_prologue"] = ["echo 'module load python/3.11: not found' >&2", "exit 1"]
    cluster["slurm"]["adapt"] = False
    config = _config(folder, store, cluster)
    config["execution"]["stall_timeout"] = 10
    with pytest.raises(StallError) as caught:
        run(config_from_dict(config))
    message = str(caught.value)
    assert "no worker has been connected for 10 s (execution.stall_timeout)" in message
    assert "module load python/3.11: not found" in message  # the job log's last lines
    assert str(tmp_path / "logs") in message and not store.exists()
    slurm.wait_for(lambda: not slurm.jobs(), "the run's jobs ending with it")


def test_a_pending_job_is_named_with_its_reason_and_ctrl_c_exits_130(slurm, series, tmp_path):
    import yaml

    from cccdask.pipeline.errors import StallError
    from test_stall import interrupt_while_waiting_for_workers

    folder, _ = series
    cluster = _slurm_cluster(tmp_path)
    cluster["slurm"]["job_extra_directives"] = ["--begin=now+1hour"]  # held pending by SLURM
    config = _config(folder, tmp_path / "pending.zarr", cluster)
    config["execution"]["stall_timeout"] = 5
    with pytest.raises(StallError) as caught:
        run(config_from_dict(config))
    assert "no worker has been connected for 5 s" in str(caught.value)
    assert "pending (BeginTime)" in str(caught.value)
    slurm.wait_for(lambda: not slurm.jobs(), "the run's jobs cancelled when it stopped")

    config["execution"]["stall_timeout"] = 0
    path = tmp_path / "pending.yaml"
    path.write_text(yaml.safe_dump(config))
    code, stderr = interrupt_while_waiting_for_workers(path, tmp_path, slurm.environment)
    assert code == 130, stderr  # dask-jobqueue's import no longer turns Ctrl-C into exit 0
    assert stderr.strip().endswith("interrupted: no frame is saved yet; rerun the same command to start again")
    slurm.wait_for(lambda: not slurm.jobs(), "the run's jobs cancelled on Ctrl-C")


def test_a_run_longer_than_the_worker_lifetime_completes_on_replacement_jobs(slurm, series, tmp_path):
    """Workers retire at their lifetime (as they do before a walltime); adapt submits a new job; the run completes.

    The first recorded frame holds the driver until the job that computed it has retired
    and a worker of a new job has joined, so the run outlasts the first worker whatever
    the load. The module that runs the tasks is preloaded, so the lifetime counts from
    after the imports.
    """
    from distributed import default_client

    folder, expected = series
    store = tmp_path / "lifetime.zarr"
    cluster = _slurm_cluster(tmp_path)
    cluster["slurm"]["worker_extra_args"] = ["--lifetime", "20s", "--lifetime-stagger", "0s",
                                             "--preload", "cccdask.pipeline.task"]
    config = _config(folder, store, cluster)
    config["execution"]["stall_timeout"] = WORKER_START_S
    seen = {}

    def outlast_the_first_worker(done, total, failed=0):
        if done == 0 or seen:
            return
        client = default_client()
        seen["first"] = set(client.scheduler_info(n_workers=-1)["workers"])
        deadline = time.monotonic() + WORKER_START_S
        while time.monotonic() < deadline:  # bounded wait for real events: a retirement, a new job's worker
            now = set(client.scheduler_info(n_workers=-1)["workers"])
            if now and not now & seen["first"]:
                break
            time.sleep(0.2)
        seen["then"] = now

    with dask.config.set({"distributed.deploy.lost-worker-timeout": "1s"}):  # resubmit at once (default 15 s)
        run(config_from_dict(config), progress=outlast_the_first_worker)
    assert seen["first"] and seen["then"] and not seen["first"] & seen["then"], seen
    assert_results_are(store, expected)
    jobs = {log.stem.rsplit("-", 1)[1] for log in (tmp_path / "logs").glob("*.err")}
    assert len(jobs) >= 2, jobs  # the retired job and its replacement
    slurm.wait_for(lambda: not slurm.jobs(), "the run's jobs ending with it")
