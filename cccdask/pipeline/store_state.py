"""The output location and the state of an existing store, checked before any work.

:func:`check_output_location` proves the store can be written; :func:`run_identity`
hashes the analysis settings and what the inputs hold; :func:`input_fingerprints`
records what identifies the inputs' content (:mod:`cccdask.io.fingerprint`);
:func:`output_state_at` and :func:`existing_store_resumes` decide between a new store,
a resume (same identity, unchanged inputs) and a replacement (always with overwrite),
or refuse a store of another config or of changed inputs.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from cccdask.config import PipelineConfig
from cccdask.io import store as results_store
from cccdask.io.fingerprint import check_unchanged, fingerprints
from cccdask.pipeline.errors import StoreConflictError
from cccdask.pipeline.inputs import open_inputs


def check_output_location(path: Path, create: bool = False) -> None:
    """Fail early, before any work, when the store cannot be written at ``path``.

    Writes (and removes) a probe file in the nearest existing folder; with ``create``,
    first creates the store's parent folders.
    """
    probe_dir = path.parent
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise PermissionError(
            f"output.store {path}: {probe_dir} is a file, not a folder; choose another output location."
        )
    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
            probe_dir = path.parent
        probe = probe_dir / f".{path.name}.write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise PermissionError(
            f"output.store {path}: cannot write in {probe_dir} ({error.strerror or error}); choose another "
            f"output location."
        ) from None
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"output.store {path} exists and is a file, not a results store.")


def existing_store_resumes(path: Path, identity: str, overwrite: bool, current: dict) -> bool:
    """Whether to resume the store at ``path``; removes it when it must be replaced.

    With ``overwrite`` a cccdask store is always replaced (every frame recomputed), also
    one of the same config. Without, it is resumed only under the same identity and
    unchanged inputs (``current``: :func:`input_fingerprints`).

    Raises
    ------
    StoreConflictError
        A store with a different config (without overwrite), or a folder that is not a
        cccdask store.
    InputChangedError
        An input changed since the store was started (without overwrite).
    """
    if not path.exists():
        return False
    attrs = results_store.read_store_attrs(path)
    if attrs is None:
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
            return False
        raise StoreConflictError(
            f"output.store {path} exists and is not a cccdask results store; choose another path "
            f"(cccdask never deletes folders it did not write)."
        )
    if attrs.get("identity_hash") == identity and not overwrite:
        check_unchanged(path, attrs.get("input_fingerprints") or {}, current)
        return True
    if not overwrite:
        raise StoreConflictError(
            f"output.store {path} holds results of a different config (analysis settings or inputs "
            f"differ); rerun with --overwrite (or output.overwrite: true) to replace it, or choose "
            f"another output.store."
        )
    results_store.remove_store(path)
    return False


def output_state(config: PipelineConfig) -> str:
    """What a run of ``config`` would do with its output: "new", "resume" or "replace".

    Raises
    ------
    PermissionError, FileExistsError, StoreConflictError, InputChangedError
        As :func:`run` would, without touching anything.
    """
    return output_state_at(Path(config.output.store), run_identity(config, open_inputs(config).frames),
                           config.output.overwrite, input_fingerprints(config))


def input_fingerprints(config: PipelineConfig) -> dict[str, dict]:
    """What identifies the content of every input file of a run, per config key.

    The images and the mask, and the files of the preprocessing (background region
    masks, chromatic-shift reference images); see :mod:`cccdask.io.fingerprint`.
    """
    section = config.input
    paths = {f"input.{name}": getattr(section, name).path for name in ("image1", "image2", "mask")
             if getattr(section, name) is not None}
    settings = config.preprocessing
    if settings is not None:
        for channel in ("image1", "image2"):
            region = getattr(settings.background, channel).region_mask
            if region is not None:
                paths[f"preprocess.background.{channel}.region_mask"] = region
        reference = None if settings.chromatic_shift is None else settings.chromatic_shift.reference
        if reference is not None and reference.frame is None:
            paths["preprocess.chromatic_shift.reference.image1"] = reference.image1
            paths["preprocess.chromatic_shift.reference.image2"] = reference.image2
    return fingerprints(paths)


def run_identity(config: PipelineConfig, frames) -> str:
    """The identity hash of a run: its analysis settings and what its inputs hold.

    A store is resumed only by a run of the same identity; the frame count, frame shape,
    dtypes and spacing are included so that a changed input file is never resumed into.
    """
    identity = config.analysis_identity()
    identity["inputs_seen"] = {
        "n_frames": frames.n_frames,
        "frame_shape": list(frames.frame_shape),
        "spacing": list(frames.spacing),
        "units": frames.units,
        "dtypes": [str(frames.image1.dtype), str(frames.image2.dtype),
                   None if frames.mask is None else str(frames.mask.dtype)],
        "mask_dims": None if frames.mask is None else list(frames.mask.dims),
    }
    return results_store.identity_hash(identity)


def output_state_at(path: Path, identity: str, overwrite: bool, current: dict) -> str:
    """"new", "resume" or "replace" for the store at ``path``, or the error a run would raise."""
    check_output_location(path)
    if not path.exists():
        return "new"
    attrs = results_store.read_store_attrs(path)
    if attrs is not None and overwrite:
        return "replace"
    if attrs is not None and attrs.get("identity_hash") == identity:
        check_unchanged(path, attrs.get("input_fingerprints") or {}, current)
        return "resume"
    if path.is_dir() and not any(path.iterdir()):
        return "new"
    raise StoreConflictError(
        f"output.store {path} exists and "
        + ("holds results of a different config; use --overwrite to replace it." if attrs is not None
           else "is not a cccdask results store; choose another path.")
    )
