"""What identifies an input's content, cheaply: recorded in the results store, compared on resume.

A run records a fingerprint of every input file in its store; a rerun of the same config
compares the inputs with it before resuming and refuses to mix results of old and new
data (:class:`InputChangedError`). Nothing here reads pixel data:

* a file (TIFF, .npy): its size and modification time (``st_mtime_ns``). Touching a
  file without changing its content counts as a change (the time moved): cheap and on
  the safe side, since a rewrite of the same size is otherwise invisible.
* a folder (Zarr, OME-Zarr): its metadata documents (``zarr.json``, ``.zarray``,
  ``.zattrs``, ``.zgroup``, ``.zmetadata``) by content, and every other file (the chunks)
  by relative key, size and modification time, summed into a digest, with the chunk
  count and total bytes kept to say what changed. Listing a folder costs one ``stat``
  per chunk file (no reads); rewriting any chunk, even with the same bytes, is a change.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from pathlib import Path
from typing import Any

__all__ = ["InputChangedError", "input_fingerprint", "fingerprints", "describe_change", "check_unchanged",
           "METADATA_NAMES"]

METADATA_NAMES = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})
_DIGEST_CHARS = 16


class InputChangedError(ValueError):
    """An input's content changed since the store was started; resuming would mix old and new data."""


def _scan(folder: Path, prefix: str = ""):
    """(relative key, stat result) of every file under ``folder``, in sorted key order."""
    with os.scandir(folder) as entries:
        ordered = sorted(entries, key=lambda e: e.name)
    for entry in ordered:
        key = prefix + entry.name
        if entry.is_dir(follow_symlinks=True):
            yield from _scan(Path(entry.path), key + "/")
        elif entry.is_file(follow_symlinks=True):
            yield key, entry.stat(follow_symlinks=True)


def input_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """A small JSON-able record of what ``path`` holds, without reading its pixels.

    Returns
    -------
    dict
        For a file: ``{"kind": "file", "size": bytes, "mtime_ns": int}``. For a folder:
        ``{"kind": "folder", "metadata": digest of the metadata documents' content,
        "chunks": number of other files, "chunk_bytes": their total size,
        "listing": digest of (key, size, mtime_ns) of every other file}``.
    """
    path = Path(path)
    if not path.is_dir():
        stat = path.stat()
        return {"kind": "file", "size": int(stat.st_size), "mtime_ns": int(stat.st_mtime_ns)}
    metadata, listing = hashlib.sha256(), hashlib.sha256()
    chunks = chunk_bytes = 0
    for key, stat in _scan(path):
        if key.rsplit("/", 1)[-1] in METADATA_NAMES:
            metadata.update(key.encode() + b"\0" + (path / key).read_bytes() + b"\0")
        else:
            listing.update(f"{key}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            chunks += 1
            chunk_bytes += int(stat.st_size)
    return {
        "kind": "folder",
        "metadata": metadata.hexdigest()[:_DIGEST_CHARS],
        "chunks": chunks,
        "chunk_bytes": chunk_bytes,
        "listing": listing.hexdigest()[:_DIGEST_CHARS],
    }


def fingerprints(paths: dict[str, str | os.PathLike]) -> dict[str, dict[str, Any]]:
    """Per input label (e.g. ``"input.image1"``): ``{"path": str, "fingerprint": dict}``.

    An input used twice (two channels of one file) is fingerprinted once.
    """
    seen: dict[str, dict[str, Any]] = {}
    result = {}
    for label, path in paths.items():
        key = str(path)
        if key not in seen:
            seen[key] = input_fingerprint(path)
        result[label] = {"path": key, "fingerprint": seen[key]}
    return result


def _time(ns: int) -> str:
    moment = datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="microseconds").replace("+00:00", " UTC")


def describe_change(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    """What differs between two fingerprints of one input, in words; None when they agree."""
    if recorded == current:
        return None
    if recorded.get("kind") != current.get("kind"):
        return f"it was a {recorded.get('kind')} and is now a {current.get('kind')}"
    if current["kind"] == "file":
        if recorded["size"] != current["size"]:
            return f"its size changed from {recorded['size']} to {current['size']} bytes"
        return (f"it was modified (modification time {_time(recorded['mtime_ns'])}, now "
                f"{_time(current['mtime_ns'])})")
    if recorded["metadata"] != current["metadata"]:
        return "its array metadata changed (shape, data type, chunks, axes or attributes)"
    if recorded["chunks"] != current["chunks"]:
        return f"its number of chunk files changed from {recorded['chunks']} to {current['chunks']}"
    if recorded["chunk_bytes"] != current["chunk_bytes"]:
        return f"its chunk files changed in size (from {recorded['chunk_bytes']} to {current['chunk_bytes']} bytes)"
    return "chunk files were rewritten (their modification times differ)"


def check_unchanged(store: str | os.PathLike, recorded: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume ``store`` when an input differs from what the store recorded.

    Parameters
    ----------
    store : path
        The results store (named in the message).
    recorded, current : dict
        Per input label (e.g. ``"input.image1"``): ``{"path": str, "fingerprint": dict}``,
        as stored and as the inputs are now.

    Raises
    ------
    InputChangedError
        Naming each changed input, what changed and the fix.
    """
    changes = []
    for label, now in current.items():
        before = recorded.get(label)
        if before is None:
            continue  # an input the store did not record (older store): nothing to compare
        change = (f"it was {before['path']} and is now {now['path']}" if before["path"] != now["path"]
                  else describe_change(before["fingerprint"], now["fingerprint"]))
        if change is not None:
            changes.append(f"{label} {now['path']} changed since the store was started: {change}")
    if changes:
        raise InputChangedError(
            "; ".join(changes) + f". The results in {store} were computed from the old content, so it is not "
            f"resumed. Rerun with --overwrite (or output.overwrite: true) to recompute every frame from the "
            f"current input, or restore the input."
        )
