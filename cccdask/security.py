"""Who can reach a run's cluster: loopback addresses, TLS credentials, the dashboard's link.

* A local cluster listens on ``cluster.local.host``, 127.0.0.1 by default, and so does
  its dashboard when ``dashboard_address`` is a port alone (:func:`dashboard_bind_address`).
* SLURM: the scheduler must listen on the network for its worker jobs, so the run makes
  its own self-signed TLS credentials (:func:`temporary_credentials`): files in a new
  folder (mode 0700, files 0600) in a directory the jobs can read, removed when the run
  ends. Only processes holding them (this run, its workers) can connect.
* An existing TLS scheduler (``kind: address`` / ``scheduler_file``) is joined with the
  files of ``cluster.security`` (:func:`client_security`), checked first by
  :func:`tls_file_problems`: they exist, and the private key is readable by its owner only.

Nothing here logs or records key material: messages name the files, never their contents.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import stat
import tempfile
import urllib.parse
from pathlib import Path
from typing import Iterator

from distributed.security import Security

from cccdask.config import TLSFiles

LOOPBACK = "127.0.0.1"
CREDENTIALS_PREFIX = ".cccdask-tls-"
TLS_ROLES = ("client", "scheduler", "worker")


def is_loopback(host: str | None) -> bool:
    """True when ``host`` ('127.0.0.1', '::1', 'localhost') is reachable from this machine only."""
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def dashboard_bind_address(address: str | None, host: str) -> str | None:
    """The 'address:port' a dashboard listens on: a port alone (':8787', '8787') listens on ``host``.

    distributed itself takes a port alone to mean every interface (0.0.0.0).
    """
    if address is None:
        return None
    text = str(address).strip()
    port = text[1:] if text.startswith(":") else text
    return f"{host}:{port}" if port.isdigit() else text


def dashboard_message(link: str, remote_session: bool, hostname: str, user: str) -> str:
    """The log line showing the dashboard, with the SSH tunnel that reaches it from another computer
    when it listens on loopback and the run was started from afar (``remote_session``)."""
    parts = urllib.parse.urlsplit(link)
    if not (remote_session and is_loopback(parts.hostname)):
        return f"Dask dashboard: {link}"
    port = parts.port or 80
    return (f"Dask dashboard: {link} (listens on this machine only). From your computer: "
            f"ssh -N -L {port}:127.0.0.1:{port} {user}@{hostname} , then open http://localhost:{port}{parts.path}")


def tls_file_problems(files: TLSFiles) -> list[str]:
    """What keeps ``cluster.security``'s files from being used: missing or unreadable files, a
    private key that other users can read, no key at all. Empty when they are fine."""
    problems = []
    for name in ("ca_file", "cert", "key"):
        path = getattr(files, name)
        if path is None:
            continue
        if not path.is_file():
            problems.append(f"cluster.security.{name}: {path} does not exist; give the path of the PEM file")
        elif not os.access(path, os.R_OK):
            problems.append(f"cluster.security.{name}: {path} is not readable by this user; fix its owner or mode")
    key_name = "key" if files.key is not None else "cert"
    holder = getattr(files, key_name)
    if problems or holder is None:
        return problems
    if files.key is None and "PRIVATE KEY" not in holder.read_text(errors="replace"):
        problems.append(f"cluster.security.key is not set and {holder} (cert) holds no private key; "
                        f"give the key file as cluster.security.key")
    mode = stat.S_IMODE(holder.stat().st_mode)
    if mode & 0o077:
        problems.append(f"cluster.security.{key_name}: {holder} holds a private key and other users can access "
                        f"it (mode {mode:o}); make it readable by its owner only: chmod 600 {holder}")
    return problems


def client_security(files: TLSFiles) -> Security:
    """The :class:`distributed.Security` that joins a TLS scheduler with ``files``.

    Raises
    ------
    ValueError
        Naming every problem :func:`tls_file_problems` finds.
    """
    problems = tls_file_problems(files)
    if problems:
        raise ValueError("\n".join(problems))
    return Security(require_encryption=True, tls_ca_file=str(files.ca_file), tls_client_cert=str(files.cert),
                    tls_client_key=None if files.key is None else str(files.key))


def _write_private(path: Path, text: str) -> str:
    """Write ``text`` to a new file only its owner can read (mode 0600 from creation)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    return str(path)


@contextlib.contextmanager
def temporary_credentials(directory: Path) -> Iterator[tuple[Security, Path]]:
    """Self-signed TLS credentials for one run, as files the worker jobs can read; removed on exit.

    Parameters
    ----------
    directory : Path
        A folder that this machine and the compute nodes share. A new folder
        ``.cccdask-tls-*`` (mode 0700) is made in it, holding ``cert.pem`` (the certificate,
        also the authority) and ``key.pem``, both mode 0600.

    Yields
    ------
    security : distributed.Security
        For the scheduler, the workers and this process's client; it holds only the paths.
    folder : Path
        The credentials' folder.
    """
    try:
        made = Security.temporary()
    except ImportError as error:  # pragma: no cover - depends on the install
        raise RuntimeError("TLS for SLURM needs the cryptography package: pip install 'cccdask[slurm]' "
                           "(or pip install cryptography); or set cluster.security: false") from error
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"cluster.slurm.shared_directory {directory} does not exist; give a folder the "
                                f"SLURM jobs can read (for the run's temporary TLS credentials)")
    folder = Path(tempfile.mkdtemp(prefix=CREDENTIALS_PREFIX, dir=directory))
    try:
        cert = _write_private(folder / "cert.pem", made.tls_worker_cert)
        key = _write_private(folder / "key.pem", made.tls_worker_key)
        files = {f"tls_{role}_{part}": path for role in TLS_ROLES for part, path in (("cert", cert), ("key", key))}
        yield Security(require_encryption=True, tls_ca_file=cert, **files), folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
