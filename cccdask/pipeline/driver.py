"""The driver of a run: submission window, completion record, resume, finalise.

:func:`run` never touches pixel data. It opens and checks the inputs
(:mod:`~cccdask.pipeline.inputs`), checks the output location and an existing store
(:mod:`~cccdask.pipeline.store_state`), estimates memory and plans the tasks
(:mod:`~cccdask.pipeline.plan`, :mod:`~cccdask.pipeline.layout`), creates the store,
then submits :func:`~cccdask.pipeline.task.compute_frames` tasks with a bounded number
in flight (:func:`submit_batches`) or takes the tiled path
(:mod:`~cccdask.pipeline.tiled`). As each task returns, its small results are taken
into blocks of many frames (:mod:`~cccdask.pipeline.blocks`) and its frames recorded
once those are written (:class:`~cccdask.pipeline.record.Completion`); :func:`finalise` then picks the best
frame, writes the reports and marks the store complete, last.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import xarray as xr

from cccdask.config import PipelineConfig, config_json, load_config
from cccdask.interrupt import quiet_shutdown_on_interrupt, workers_ignore_sigint
from cccdask.io import store as results_store
from cccdask.io.lock import StoreLock
from cccdask.io.store import FRAME_MISSING, FRAME_OK, VariableLayout
from cccdask.pipeline.blocks import BlockWriter
from cccdask.pipeline.errors import PipelineError, StallError
from cccdask.pipeline.inputs import RunInputs, SourceSpec, describe_settled, open_inputs, read_frame
from cccdask.pipeline.layout import plan_run
from cccdask.pipeline.plan import (
    FramePlan,
    estimate_task_memory,
    frame_batches,
    plan_tiles,
    resolve_frames_per_task,
)
from cccdask.pipeline.record import DISK_FULL_ERRNOS, DISK_FULL_HINT, Completion, failure_message, frame_ranges
from cccdask.pipeline.store_state import (
    check_output_location,
    existing_store_resumes,
    input_fingerprints,
    output_state_at,
    run_identity,
)
from cccdask.pipeline.task import GENERATED_MASK, compute_frames
from cccdask.pipeline.tiled import cluster_compute, run_tiled, shared_mask_graph, store_shared_mask
from cccdask.pipeline.watchdog import POLL_SECONDS, Watchdog
from cccdask.quality import dataset_quality


def _prepare_preprocessing(config: PipelineConfig, inputs: RunInputs, log):
    """Driver-side preprocessing steps: estimate the chromatic shift once."""
    settings = config.preprocessing
    if settings is None:
        return None
    chromatic = settings.chromatic_shift
    if chromatic is not None and chromatic.reference is not None:
        reference = chromatic.reference
        if reference.frame is not None:
            if reference.frame >= inputs.frames.n_frames:
                raise ValueError(
                    f"preprocess.chromatic_shift.reference.frame is {reference.frame} but the input has "
                    f"{inputs.frames.n_frames} frames."
                )
            ref1 = read_frame(inputs.image1, reference.frame)
            ref2 = read_frame(inputs.image2, reference.frame)
        else:
            ref1 = read_frame(SourceSpec(str(reference.image1)), 0)
            ref2 = read_frame(SourceSpec(str(reference.image2)), 0)
        settings = settings.with_estimated_shift(ref1, ref2, inputs.frames.spacing)
        log(f"Estimated chromatic shift: {settings.chromatic_shift.shift} {inputs.frames.units}")
    return settings


def _shared_generated_mask(settings, inputs: RunInputs, plan: FramePlan) -> np.ndarray | None:
    if settings is None or settings.mask is None or settings.mask.from_frame is None:
        return None
    from cccdask.preprocess import generate_shared_mask

    index = settings.mask.from_frame
    if index >= inputs.frames.n_frames:
        raise ValueError(f"preprocess.mask.from_frame is {index} but the input has {inputs.frames.n_frames} frames.")
    mask = None
    if plan.mask is not None:
        mask = read_frame(plan.mask, index if plan.mask_per_frame else 0)
    generated, _ = generate_shared_mask(
        read_frame(plan.image1, index), read_frame(plan.image2, index), mask, settings, plan.spacing
    )
    return generated


def _provenance(config: PipelineConfig, inputs: RunInputs, identity: str, settings, current: dict) -> dict[str, Any]:
    frames = inputs.frames
    attrs = {
        "identity_hash": identity,
        "config": config_json(config),
        "inputs": {
            name: (None if spec is None else {"path": spec.path, "channel": spec.channel, "component": spec.component})
            for name, spec in (("image1", inputs.image1), ("image2", inputs.image2), ("mask", inputs.mask))
        },
        "input_fingerprints": current,
        "versions": results_store.versions(),
        "mode": config.ccc.mode,
        "units": frames.units,
        "spacing": list(frames.spacing),
        "max_distance": config.ccc.max_distance,
        "fiji_compat": config.ccc.fiji_compat,
        "n_frames": frames.n_frames,
        "time_series": bool(frames.time_series),
        "title": "cccdask results",
    }
    if settings is not None and settings.chromatic_shift is not None:
        attrs["chromatic_shift"] = list(settings.chromatic_shift.shift)
    return attrs


def run(
    config: PipelineConfig | str | os.PathLike,
    *,
    overwrite: bool | None = None,
    progress: Callable[[int, int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
    phase: Callable[[str], None] | None = None,
) -> Path:
    """Run a configured analysis and return the path of the results store.

    Parameters
    ----------
    config : PipelineConfig or path
        A validated config, or the path of a YAML file.
    overwrite : bool, optional
        Replace an existing store, recomputing every frame (default: ``output.overwrite``).
    progress : callable, optional
        ``progress(frames_done, n_frames, frames_without_result)``, called as frames
        are recorded.
    log : callable, optional
        Receives status lines (the axes and calibration settled per input, cluster,
        dashboard, resume, a stale lock taken over).
    phase : callable, optional
        Receives the name of each phase as it begins: starting the cluster (or
        connecting to the scheduler, or the in-process executor), waiting for workers
        (while none is connected), computing frames, finalising reports.

    A complete store of the same config whose inputs are unchanged (the sizes and
    modification times recorded when it finalised) is returned at once, without a
    cluster.

    Raises
    ------
    FileNotFoundError, ValueError, PermissionError
        Bad inputs or output location, found before any work and before the store exists.
    StoreConflictError
        An existing store of a different config (without overwrite).
    InputChangedError
        An existing store whose inputs changed since it was started (without overwrite).
    StoreLockedError
        Another run writes the store.
    FrameTooLargeError
        A frame that cannot fit a worker.
    PipelineError
        Tasks that failed; the store is left incomplete and a rerun computes only the
        missing frames.
    """
    if not isinstance(config, PipelineConfig):
        config = load_config(config)
    log = log or (lambda message: None)
    phase = phase or (lambda name: None)
    overwrite = config.output.overwrite if overwrite is None else overwrite
    path = Path(config.output.store)
    inputs = open_inputs(config)
    for line in describe_settled(inputs.frames):
        log(line)
    identity = run_identity(config, inputs.frames)
    current = input_fingerprints(config)
    check_output_location(path, create=True)
    with StoreLock(path, config.execution.stale_lock_after, log):
        state = output_state_at(path, identity, overwrite, current)  # refuse a conflicting store before a cluster
        if state == "resume" and _complete_with_reports(path, config):
            log(f"{path} is complete for this config and these inputs: nothing to compute "
                f"(change the config or --overwrite to recompute)")
            return path
        _run_locked(config, inputs, identity, current, overwrite, path, progress, log, phase)
    return path


def _run_locked(config: PipelineConfig, inputs: RunInputs, identity: str, current: dict, overwrite: bool,
                path: Path, progress, log, phase) -> None:
    """:func:`run` while it holds the store's lock: the cluster, the tasks, the finalisation."""
    from cccdask.cluster import connect

    frames = inputs.frames
    fpt = resolve_frames_per_task(config.execution.frames_per_task, tuple(frames.frame_shape), frames.n_frames)
    estimate = estimate_task_memory(config, frames, fpt)

    phase(_STARTING.get(config.cluster.kind, "starting the cluster"))
    with contextlib.ExitStack() as stack:
        with workers_ignore_sigint():  # Ctrl-C reaches the driver only (cccdask.interrupt)
            cluster = stack.enter_context(connect(config.cluster, config.execution, log, path.parent))
        stack.enter_context(_disk_full_is_named(path))
        stack.enter_context(quiet_shutdown_on_interrupt(cluster.client))  # exits first: before the cluster closes
        watchdog = Watchdog(cluster, config.execution.stall_timeout)
        if cluster.total_threads() == 0:  # e.g. SLURM jobs still queued: the tasks could not start anyway
            phase("waiting for workers")
            _wait_for_a_worker(cluster, watchdog, path)
        budget = (cluster.memory_per_thread() if config.execution.memory_budget is None
                  else _parse_bytes(config.execution.memory_budget))
        tiles = plan_tiles(config, frames, estimate, budget)
        tile_inputs = None
        if tiles.tiled:
            log(f"Analysing each frame tile by tile (tiles of {list(tiles.tile_shape)} voxels): "
                + ("execution.tile_shape" if config.execution.tile_shape is not None
                   else "frames do not fit one task"))
            # read tile by tile: a larger read chunk would be held until every tile cut from it is used
            tile_inputs = open_inputs(config, frame_chunks=dict(zip(frames.spatial_dims, tiles.tile_shape)))
        resume = existing_store_resumes(path, identity, overwrite, current)
        results_store.remove_interrupted_writes(path)
        settings = _prepare_preprocessing(config, inputs, log)
        plan, layout = plan_run(config, inputs, identity, settings)
        if not resume:
            shared_on_tiles = tiles.tiled and plan.shared_generated_mask
            shared_mask = (shared_mask_graph(plan, tile_inputs, settings, tiles.tile_shape, cluster_compute(cluster))
                           if shared_on_tiles else _shared_generated_mask(settings, inputs, plan))
            if shared_mask is not None:
                spatial = plan.spatial_dims
                chunks = tuple(tiles.tile_shape) if shared_on_tiles else shared_mask.shape
                layout = replace(layout, variables=layout.variables + (VariableLayout(
                    GENERATED_MASK, spatial, shared_mask.shape, np.dtype(np.uint8), chunks, image=False,
                    attrs={"description": "the mask generated once and used for every frame"}),))
            results_store.create_store(
                path, layout, {**_provenance(config, inputs, identity, settings, current), **layout.attrs},
                initial=(None if shared_mask is None or shared_on_tiles
                         else {GENERATED_MASK: shared_mask.astype(np.uint8)}),
            )
            if shared_on_tiles:  # written tile by tile by the workers
                store_shared_mask(cluster, path, shared_mask)
        else:
            log(f"Resuming {path}")
            if tiles.tiled and plan.shared_generated_mask:  # its tile writes may have been interrupted: again
                store_shared_mask(cluster, path, shared_mask_graph(plan, tile_inputs, settings, tiles.tile_shape,
                                                                   cluster_compute(cluster)))
        record = results_store.read_completion(path)
        n_frames = layout.n_frames
        todo = [b for b in frame_batches(n_frames, fpt) if (record.status[b[0]:b[1]] == FRAME_MISSING).any()]
        done = int(record.complete.sum())
        if resume:
            log(f"{done} of {n_frames} frames already complete; computing {n_frames - done}")
        blocks = BlockWriter(path, identity, [layout.variable(name) for name in plan.returned], record.complete)
        completion = Completion(path, record, blocks)
        phase("computing frames")
        completion.report(progress, n_frames)
        try:
            if not tiles.tiled:
                failures = submit_batches(cluster, plan, todo, completion, config.execution.retries, progress,
                                          n_frames, watchdog)
            else:
                failures = run_tiled(cluster, plan, tile_inputs, config, tiles.tile_shape, todo, completion, progress,
                                     n_frames)
        except StallError as error:
            completion.flush()
            missing = np.flatnonzero(completion.record.status == FRAME_MISSING)
            raise StallError(
                f"{error}\nThe run stopped: {missing.size} of {n_frames} frames are missing "
                f"({frame_ranges(missing)}); the store {path} is incomplete. Fix the cause and rerun the same "
                f"config: only the missing frames are computed.") from None
        completion.flush()
        if failures:
            lines = "\n".join(f"  frames {s}-{e - 1}: {message}" for (s, e), message in failures[:10])
            raise PipelineError(
                f"{len(failures)} task(s) failed; the store {path} is incomplete. Fix the cause and rerun "
                f"the same config: only the missing frames are computed.\n{lines}"
            )
    phase("finalising reports" if config.output.reports else "finalising")
    with _disk_full_is_named(path):
        finalise(path, config)


_STARTING = {"address": "connecting to the scheduler", "scheduler_file": "connecting to the scheduler",
             "threads": "starting the in-process executor", "synchronous": "starting the in-process executor"}


def _complete_with_reports(path: Path, config: PipelineConfig) -> bool:
    """The store is complete and its reports are there (when configured).

    Called only once :func:`output_state_at` has found the inputs' fingerprints
    unchanged, so a complete store of unchanged inputs is returned as it is.
    """
    attrs = results_store.read_store_attrs(path) or {}
    if attrs.get("cccdask_status") != results_store.STATUS_COMPLETE:
        return False
    if config.output.reports:
        from cccdask.io.reports import reports_folder

        return (reports_folder(path) / "summary.txt").is_file()
    return True


@contextlib.contextmanager
def _disk_full_is_named(path: Path):
    """Turn a full disk met by the driver (store, completion record, reports) into a PipelineError."""
    try:
        yield
    except OSError as error:
        if error.errno not in DISK_FULL_ERRNOS:
            raise
        state = "is incomplete" if path.exists() else "was not created"
        raise PipelineError(f"writing {path} failed: {error.strerror} ({error.filename or path}); the store "
                            f"{state}. Cause: {DISK_FULL_HINT}.") from error


def _wait_for_a_worker(cluster, watchdog: Watchdog, path: Path) -> None:
    """Wait until a worker joins; the watchdog ends the wait (StallError) when none can."""
    while cluster.total_threads() == 0:
        try:
            watchdog.check()
        except StallError as error:
            state = (f"the store {path} is incomplete" if path.exists()
                     else f"no frame was computed and the store {path} was not created")
            raise StallError(f"{error}\nThe run stopped: {state}. Fix the cause and rerun the same config.") from None
        try:
            cluster.client.wait_for_workers(1, timeout=POLL_SECONDS)
        except TimeoutError:
            pass


def submit_batches(cluster, plan: FramePlan, todo, completion: Completion, retries: int, progress, n_frames,
                   watchdog: Watchdog | None = None):
    """Submit the batches with a bounded number in flight; record each as it finishes.

    A batch is recorded when its future has finished and its result (the outcomes the
    task returned after writing) is in hand; a future whose worker died after it
    finished is ``lost`` and stays in flight until it is recomputed. A task that raised
    is a failure. The watchdog (when given) ends a run that cannot progress.
    """
    client = cluster.client
    tag = uuid.uuid4().hex[:8]
    queue = list(reversed(todo))
    failures = []
    watchdog = watchdog or Watchdog(cluster, 0)

    def window() -> int:
        return max(4, 3 * max(cluster.total_threads(), 1))

    def submit_one(batch):
        start, stop = batch
        future = client.submit(
            compute_frames, plan, start, stop, key=f"cccdask-frames-{start}-{tag}",
            retries=retries, pure=False,
        )
        batches[future.key] = batch
        return future

    batches: dict[str, tuple[int, int]] = {}
    in_flight: dict[str, Any] = {}

    def fill(limit: int) -> None:
        while queue and len(in_flight) < limit:
            future = submit_one(queue.pop())
            in_flight[future.key] = future

    limit = window()
    fill(limit)
    last_window = time.monotonic()
    try:
        while in_flight:
            done = cluster.wait_any(list(in_flight.values()), POLL_SECONDS)
            if not done:
                watchdog.check()
                continue
            waiting = len(in_flight)
            for future in done:
                batch = batches[future.key]
                try:
                    outcomes, small = future.result(timeout=POLL_SECONDS)
                except TimeoutError as error:  # lost since (its worker died): in flight until recomputed
                    if future.status != "error":
                        continue
                    failures.append((batch, failure_message(error)))
                except Exception as error:  # the task raised (or was cancelled): report, keep going
                    failures.append((batch, failure_message(error)))
                else:
                    completion.add(outcomes, (batch[0], small))
                    completion.report(progress, n_frames)
                del in_flight[future.key], batches[future.key]
                future.release()
            if len(in_flight) < waiting:  # a batch recorded or failed; a done future whose result
                watchdog.progressed()     # could not be fetched is no progress
            else:
                watchdog.check()
            if time.monotonic() - last_window > 2.0:
                limit, last_window = window(), time.monotonic()
            fill(limit)
    finally:
        completion.flush()
    return failures


def _parse_bytes(text: str) -> int:
    from dask.utils import parse_bytes

    return int(parse_bytes(text))


def finalise(path: Path, config: PipelineConfig | None = None) -> None:
    """After every frame is recorded: best frame, reports, then mark the store complete.

    The ``complete`` status is written last, so a store killed while finalising is
    finalised again by the next run.
    """
    from cccdask.ccc import best_frame

    attrs = results_store.read_store_attrs(path) or {}
    record = results_store.read_completion(path)
    missing = np.flatnonzero(record.status == FRAME_MISSING)
    if missing.size:
        raise PipelineError(f"{path} still has {missing.size} missing frame(s) ({frame_ranges(missing)}); "
                            f"rerun the same config to complete it.")
    mode = attrs.get("mode", "full")
    best = -1
    if mode != "correlation":
        with xr.open_zarr(str(path)) as ds:
            score = ds["confidence"] if mode == "full" else ds["sigma"]
            if "component" in score.dims:  # several Gaussians: component 1 decides
                score = score.isel(component=0)
            best = best_frame(np.asarray(score.values), mode)
    failed = int((record.status != FRAME_OK).sum())
    with xr.open_zarr(str(path)) as ds:
        quality = dataset_quality(ds)
    if quality is not None:
        results_store.write_quality(path, quality)
    results_store.update_store_attrs(path, best_frame=int(best), frames_failed=failed)
    reports = True if config is None else config.output.reports
    if reports:
        from cccdask.io.reports import write_reports

        write_reports(path)
    results_store.update_store_attrs(path, cccdask_status=results_store.STATUS_COMPLETE)
