"""Safe on shared machines: a local run listens on loopback only; TLS schedulers and credentials.

Real processes throughout: a ``cccdask run`` subprocess whose process tree's sockets
are listed with psutil while one of its tasks is held (its input chunk is a named pipe
that the test writes only after looking), a real TLS scheduler with worker processes
and certificates made here by an authority of the test's own, the run's temporary
credentials used by a real TLS cluster. SLURM: tests/test_slurm.py.
"""

import datetime
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import xarray as xr
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from distributed import Client, LocalCluster
from distributed.security import Security
from typer.testing import CliRunner

import cccdask
from cccdask.cli import app
from cccdask.config import PEM_REDACTED, ConfigError, config_from_dict, config_json
from cccdask.io.store import FRAME_OK, read_completion
from cccdask.pipeline import run
from cccdask.security import (
    CREDENTIALS_PREFIX,
    dashboard_bind_address,
    dashboard_message,
    is_loopback,
    temporary_credentials,
)
from series_files import write_paired_series

SPACING = (0.05, 0.05)
N_FRAMES = 4
MAX_DISTANCE = 0.6
runner = CliRunner()


# --------------------------------------------------------------------------- data and certificates


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """4 frames of 64 x 64, spots paired at known distances, and the CCC of the in-memory arrays."""
    folder = tmp_path_factory.mktemp("security")
    image1, image2, _ = write_paired_series(folder, N_FRAMES, np.linspace(0.3, 0.5, N_FRAMES), shape=(64, 64),
                                            spacing=SPACING, n_pairs=20)
    dims = ("t", "y", "x")
    expected = cccdask.ccc(xr.DataArray(image1, dims=dims), xr.DataArray(image2, dims=dims), None,
                           spacing=SPACING, max_distance=MAX_DISTANCE)
    return folder, expected


def _config(folder: Path, store: Path, cluster: dict) -> dict:
    """A run of the series in ``folder`` writing ``store``."""
    return {
        "input": {"image1": {"path": str(folder / "cells.ome.zarr"), "channel": 0},
                  "image2": {"path": str(folder / "cells.ome.zarr"), "channel": 1}},
        "ccc": {"max_distance": MAX_DISTANCE},
        "output": {"store": str(store), "reports": False},
        "execution": {"frames_per_task": 1},
        "cluster": cluster,
    }


def assert_results_are(store: Path, expected: xr.Dataset) -> None:
    """Every frame recorded, and equal to the CCC of the in-memory arrays."""
    assert (read_completion(store).status == FRAME_OK).all()
    with xr.open_zarr(str(store)) as stored:
        for name in ("profile_subtracted", "mean", "sigma", "confidence"):
            # profiles are stored as float32 (output.profile_range: auto)
            np.testing.assert_array_equal(stored[name].values, expected[name].values.astype(stored[name].dtype),
                                          err_msg=name)


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _certificate(subject: str, key, issuer: str, issuer_key, authority: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=authority, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA256()))


def write_tls_files(folder: Path, names: tuple[str, ...]) -> dict[str, Path]:
    """A certificate authority (``ca.pem``) and, for each name, ``NAME.pem`` signed by it and
    ``NAME-key.pem`` (mode 0600)."""
    folder.mkdir(parents=True, exist_ok=True)
    authority_key = ec.generate_private_key(ec.SECP256R1())
    authority = _certificate("cccdask test authority", authority_key, "cccdask test authority", authority_key, True)
    files = {"ca": folder / "ca.pem"}
    files["ca"].write_bytes(authority.public_bytes(serialization.Encoding.PEM))
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = _certificate(name, key, "cccdask test authority", authority_key, False)
        files[name] = folder / f"{name}.pem"
        files[name].write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        files[f"{name}-key"] = folder / f"{name}-key.pem"
        files[f"{name}-key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
        files[f"{name}-key"].chmod(0o600)
    return files


@pytest.fixture(scope="module")
def tls_scheduler(tmp_path_factory):
    """A real scheduler requiring TLS, with two worker processes, on 127.0.0.1; and the files of a client."""
    files = write_tls_files(tmp_path_factory.mktemp("tls"), ("node", "client"))
    node = {f"tls_{role}_{part}": str(files["node" if part == "cert" else "node-key"])
            for role in ("scheduler", "worker", "client") for part in ("cert", "key")}
    security = Security(require_encryption=True, tls_ca_file=str(files["ca"]), **node)
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, protocol="tls://", host="127.0.0.1",
                           security=security, dashboard_address="127.0.0.1:0", memory_limit="1.5GiB")
    try:
        yield cluster.scheduler_address, files
    finally:
        cluster.close()


def assert_refused(address: str, security: Security | None = None) -> None:
    """A distributed Client to ``address`` fails to connect (and so can run nothing there)."""
    for _ in range(3):
        try:
            # not the default client: one that fails to start would stay dask's default scheduler
            client = Client(address, security=security, timeout=10, set_as_default=False)
        except (OSError, TypeError) as refused:
            assert not isinstance(refused, TimeoutError), f"timed out instead of being refused: {refused!r}"
            return
        except AssertionError:
            # distributed's own IO-loop thread did not start within its 10 s (a loaded
            # machine): the client never reached the scheduler, so it is no answer
            continue
        client.close()
        pytest.fail(f"a client without the right credentials connected to {address}")
    pytest.fail("the client's IO loop never started (3 tries): nothing was learnt about the scheduler")


# --------------------------------------------------------------------------- 1. loopback by default


def _open_fifo_for_writing(fifo: Path, process: subprocess.Popen, output: Path, timeout: float = 300) -> int:
    """Wait until a process opens ``fifo`` for reading (a task started); the writing end.

    A named pipe's writing end opens without blocking only once a reader holds it: this
    polls for that event, failing with the run's output if the run ends first.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            descriptor = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.set_blocking(descriptor, True)
            return descriptor
        except OSError as error:
            if error.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the run never read its input (exit {process.poll()}):\n{output.read_text()}")
        time.sleep(0.02)


def inet_sockets(root: psutil.Process) -> list[tuple[int, str, object]]:
    """(pid, command, connection) for every IPv4/IPv6 socket of ``root`` and its descendants."""
    found = []
    for process in [root, *root.children(recursive=True)]:
        try:
            command = " ".join(process.cmdline())[:120]
            found += [(process.pid, command, connection) for connection in process.net_connections(kind="inet")]
        except psutil.NoSuchProcess:
            pass
    return found


def test_a_default_local_run_listens_on_loopback_only(series, tmp_path):
    """A real `cccdask run` with the default local cluster (2 worker processes): while a task
    is held, every socket of its process tree (scheduler, dashboard, nannies, workers) is
    bound to 127.0.0.1."""
    folder, expected = series
    data = shutil.copytree(folder / "cells.ome.zarr", tmp_path / "cells.ome.zarr")
    chunk = data / "0" / "c" / "0" / "0" / "0" / "0"  # frame 0, channel 0
    content = chunk.read_bytes()
    chunk.unlink()
    os.mkfifo(chunk)
    config = _config(tmp_path, tmp_path / "run.zarr", {"kind": "local", "local": {"n_workers": 2}})  # host, dashboard: defaults
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    output = tmp_path / "run.out"
    with open(output, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "cccdask", "run", str(tmp_path / "run.yaml")],
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        descriptor = _open_fifo_for_writing(chunk, process, output)
        sockets = inet_sockets(psutil.Process(process.pid))  # the cluster is up: a worker is inside a task
        with os.fdopen(descriptor, "wb") as fifo:
            fifo.write(content)
        assert process.wait(timeout=300) == 0, output.read_text()
    finally:
        if process.poll() is None:
            process.kill()
    listening = [(pid, command, c.laddr) for pid, command, c in sockets if c.status == psutil.CONN_LISTEN]
    # the scheduler, its dashboard and two nannies in the run's process, a worker (and its HTTP server) in each child
    assert len(listening) >= 6 and len({pid for pid, _, _ in listening}) >= 3, listening
    exposed = [(pid, command, c.laddr, c.status) for pid, command, c in sockets
               if c.laddr and not is_loopback(c.laddr.ip)]
    assert exposed == [], exposed
    assert f"Dask dashboard: http://127.0.0.1:" in output.read_text()
    assert_results_are(tmp_path / "run.zarr", expected)


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_no_dashboard_means_no_link_and_nothing_beyond_loopback(processes):
    """``dashboard_address: null``: no dashboard link, and the scheduler's remaining HTTP
    endpoints (health, metrics) listen on loopback like everything else."""
    from cccdask.cluster import connect
    from cccdask.config import ClusterConfig, ExecutionConfig

    cluster = ClusterConfig.model_validate({"kind": "local", "local": {
        "n_workers": 1, "processes": processes, "dashboard_address": None}})
    lines = []
    with connect(cluster, ExecutionConfig(), lines.append) as handle:
        scheduler = handle.client.cluster.scheduler
        bound = [s.getsockname()[0] for s in scheduler.http_server._sockets.values()]
        assert handle.dashboard_link is None
    assert bound and all(is_loopback(host) for host in bound), bound
    assert not any("dashboard" in line for line in lines), lines


def test_dashboard_addresses_and_the_ssh_hint():
    """A port alone listens on the given host (distributed would take it for every interface)."""
    assert dashboard_bind_address(":8787", "127.0.0.1") == "127.0.0.1:8787"
    assert dashboard_bind_address("8788", "127.0.0.1") == "127.0.0.1:8788"
    assert dashboard_bind_address(":0", "10.1.2.3") == "10.1.2.3:0"
    assert dashboard_bind_address("0.0.0.0:8787", "127.0.0.1") == "0.0.0.0:8787"
    assert dashboard_bind_address(None, "127.0.0.1") is None
    assert [is_loopback(h) for h in ("127.0.0.1", "127.0.1.1", "::1", "localhost", "0.0.0.0", "10.0.0.5", "")] == [
        True, True, True, True, False, False, False]
    link = "http://127.0.0.1:8790/status"
    assert dashboard_message(link, False, "login1", "ana") == f"Dask dashboard: {link}"
    assert dashboard_message(link, True, "login1", "ana") == (
        f"Dask dashboard: {link} (listens on this machine only). From your computer: "
        "ssh -N -L 8790:127.0.0.1:8790 ana@login1 , then open http://localhost:8790/status")
    assert dashboard_message("http://10.0.0.5:8787/status", True, "login1", "ana") == (
        "Dask dashboard: http://10.0.0.5:8787/status")


def test_a_local_host_beyond_loopback_is_warned(series, tmp_path):
    folder, expected = series
    lines = []
    config = config_from_dict(_config(folder, tmp_path / "exposed.zarr", {"kind": "local", "local": {
        "n_workers": 1, "processes": False, "host": "0.0.0.0", "dashboard_address": None}}))
    run(config, log=lines.append)
    warning = [line for line in lines if line.startswith("Warning: cluster.local.host is 0.0.0.0")]
    assert warning and "without authentication" in warning[0] and "SSH tunnel" in warning[0]
    assert_results_are(tmp_path / "exposed.zarr", expected)


# --------------------------------------------------------------------------- 2. an existing TLS scheduler


def test_a_tls_scheduler_is_used_through_the_security_section(series, tls_scheduler, tmp_path):
    folder, expected = series
    address, files = tls_scheduler
    security = {"ca_file": str(files["ca"]), "cert": str(files["client"]), "key": str(files["client-key"])}
    lines = []
    config = config_from_dict(_config(folder, tmp_path / "tls.zarr", {"kind": "address", "address": address, "security": security}))
    run(config, log=lines.append)
    assert f"Connected to the scheduler at {address} over TLS" in lines
    assert_results_are(tmp_path / "tls.zarr", expected)
    # the store records where the credentials are, never what they hold
    with xr.open_zarr(str(tmp_path / "tls.zarr")) as stored:
        recorded = json.loads(stored.attrs["config"])
    assert recorded["cluster"]["security"] == security
    for text in ("\n".join(lines), stored.attrs["config"]):
        assert "-----BEGIN" not in text and "PRIVATE KEY" not in text


def test_a_tls_scheduler_refuses_plain_and_unknown_clients(tls_scheduler, tmp_path):
    address, _ = tls_scheduler
    assert address.startswith("tls://127.0.0.1:")
    assert_refused(address.replace("tls://", "tcp://"))  # plain TCP to the TLS port
    assert_refused(address)  # TLS without credentials
    assert_refused(address, Security.temporary())  # credentials its authority did not sign


def test_a_scheduler_file_of_a_tls_scheduler_needs_the_security_section(series, tls_scheduler, tmp_path):
    folder, expected = series
    address, files = tls_scheduler
    scheduler_file = tmp_path / "scheduler.json"
    scheduler_file.write_text(json.dumps({"address": address, "type": "Scheduler"}))
    plain = config_from_dict(_config(folder, tmp_path / "plain.zarr", {"kind": "scheduler_file", "scheduler_file": str(scheduler_file)}))
    with pytest.raises(ValueError, match="names a TLS scheduler .* but cluster.security is not set"):
        run(plain)
    security = {"ca_file": str(files["ca"]), "cert": str(files["client"]), "key": str(files["client-key"])}
    config = config_from_dict(_config(folder, tmp_path / "file.zarr", {"kind": "scheduler_file", "scheduler_file": str(scheduler_file),
                                                         "security": security}))
    run(config)
    assert_results_are(tmp_path / "file.zarr", expected)


def test_validate_checks_the_tls_files(series, tmp_path):
    folder, _ = series
    files = write_tls_files(tmp_path / "tls", ("client",))
    security = {"ca_file": "tls/ca.pem", "cert": "tls/client.pem", "key": "tls/client-key.pem"}  # relative to the yaml
    config = _config(folder, tmp_path / "validated.zarr", {"kind": "address", "address": "tls://127.0.0.1:8786", "security": security})
    path = tmp_path / "run.yaml"

    def validate(security_section) -> tuple[int, str]:
        config["cluster"]["security"] = security_section
        path.write_text(yaml.safe_dump(config))
        result = runner.invoke(app, ["validate", "--no-inputs", str(path)])
        return result.exit_code, " ".join(result.output.split())

    assert validate(security) == (0, f"{path}: valid.")
    files["client-key"].chmod(0o644)
    code, message = validate(security)
    assert code == 1 and (f"cluster.security.key: {files['client-key']} holds a private key and other users can "
                          f"access it (mode 644); make it readable by its owner only: chmod 600 "
                          f"{files['client-key']}") in message
    files["client-key"].chmod(0o600)
    code, message = validate({**security, "ca_file": "tls/missing.pem"})
    assert code == 1 and f"cluster.security.ca_file: {tmp_path / 'tls' / 'missing.pem'} does not exist" in message
    # a key inside the certificate file: that file must then be owner-only
    combined = tmp_path / "tls" / "combined.pem"
    combined.write_bytes(files["client"].read_bytes() + files["client-key"].read_bytes())
    combined.chmod(0o640)
    code, message = validate({"ca_file": "tls/ca.pem", "cert": "tls/combined.pem"})
    assert code == 1 and f"cluster.security.cert: {combined} holds a private key" in message
    code, message = validate({"ca_file": "tls/ca.pem", "cert": "tls/client.pem"})
    assert code == 1 and "cluster.security.key is not set and" in message and "holds no private key" in message


@pytest.mark.parametrize("cluster, message", [
    ({"kind": "address", "address": "tls://10.0.0.5:8786"}, "is a TLS scheduler but cluster.security is not set"),
    ({"kind": "address", "address": "tcp://10.0.0.5:8786", "security": {"ca_file": "a", "cert": "b"}},
     "is not TLS; use the scheduler's tls:// address"),
    ({"kind": "address", "address": "tls://10.0.0.5:8786", "security": True}, "names the scheduler's TLS files"),
    ({"kind": "local", "security": False}, "cluster.security does not apply to kind 'local'"),
    ({"kind": "slurm", "slurm": {"cores": 1, "memory": "1GB"}, "security": {"ca_file": "a", "cert": "b"}},
     "cluster.security for kind 'slurm' is true"),
])
def test_security_settings_that_do_not_fit_the_kind_are_refused(series, cluster, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        config_from_dict(_config(series[0], series[0] / "refused.zarr", cluster))


def test_the_recorded_config_holds_no_pem_data(series):
    key_text = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49\n-----END PRIVATE KEY-----\n"
    config = config_from_dict({**_config(series[0], series[0] / "pem.zarr", {"kind": "threads"}),
                               "execution": {"dask_config": {"distributed.comm.tls.client.key": key_text,
                                                             "distributed.comm.retry.count": 3}}})
    recorded = json.loads(config_json(config))
    assert recorded["execution"]["dask_config"] == {"distributed.comm.tls.client.key": PEM_REDACTED,
                                                    "distributed.comm.retry.count": 3}
    assert "BEGIN" not in config_json(config)


# --------------------------------------------------------------------------- 3. the run's own credentials


def test_temporary_credentials_secure_a_real_cluster_and_are_removed(tmp_path):
    """What SLURM runs use, on a local TLS cluster: owner-only files, TLS only, gone afterwards."""
    with temporary_credentials(tmp_path) as (security, folder):
        assert folder.parent == tmp_path and folder.name.startswith(CREDENTIALS_PREFIX)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        files = sorted(folder.iterdir())
        assert [f.name for f in files] == ["cert.pem", "key.pem"]
        assert [stat.S_IMODE(f.stat().st_mode) for f in files] == [0o600, 0o600]
        assert "PRIVATE KEY" in files[1].read_text()
        roles = security.get_tls_config_for_role("worker")
        assert roles == {"ca_file": str(files[0]), "cert": str(files[0]), "key": str(files[1]),
                         "ciphers": None}  # paths only: the job scripts and logs name the files
        assert "BEGIN" not in repr(security)
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, protocol="tls://", host="127.0.0.1",
                          security=security, dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
            assert client.submit(sum, [1, 2, 3]).result() == 6
            assert all(a.startswith("tls://") for a in client.scheduler_info()["workers"])
            assert_refused(cluster.scheduler_address.replace("tls://", "tcp://"))
            assert_refused(cluster.scheduler_address)
    assert not folder.exists()
    assert list(tmp_path.iterdir()) == []

