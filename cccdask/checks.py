"""Warnings ``cccdask validate`` gives about a config that is valid but likely to disappoint.

* :func:`machine_warnings`: a local cluster that asks for more memory (workers x
  memory limit) or more threads than this machine has.
* :func:`slurm_warnings`: ``kind: slurm`` without dask-jobqueue (an error), more worker
  processes than cores per job, less memory per worker than a task needs.
* :func:`background_warning`: no background subtraction configured, while the data's
  intensity floor under the mask is a large part of its mean
  (:func:`cccdask.quality.intensity_floor`), the cause of most untrustworthy fits.
"""

from __future__ import annotations

import os

import numpy as np

from cccdask.quality import BACKGROUND_HINT, FLOOR_FRACTION, intensity_floor


def _format_bytes(n: float) -> str:
    from dask.utils import format_bytes

    return format_bytes(int(n))


def machine_warnings(config, total_memory: int | None = None, cores: int | None = None) -> list[str]:
    """Warnings when ``cluster.local`` asks for more than this machine has.

    Parameters
    ----------
    config : PipelineConfig
    total_memory : int, optional
        Bytes of memory of the machine (default: psutil's total).
    cores : int, optional
        Cores available to this process (default: the affinity mask).
    """
    if config.cluster.kind != "local":
        return []
    import psutil
    from dask.utils import parse_bytes

    local = config.cluster.local
    total_memory = psutil.virtual_memory().total if total_memory is None else total_memory
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = local.n_workers or max(1, cores // local.threads_per_worker)
    warnings = []
    if local.memory_limit is not None:
        per_worker = parse_bytes(str(local.memory_limit))
        if workers * per_worker > total_memory:
            warnings.append(
                f"cluster.local asks for {workers} worker(s) x {_format_bytes(per_worker)} = "
                f"{_format_bytes(workers * per_worker)} of memory but this machine has {_format_bytes(total_memory)}: "
                f"workers would be killed or swap before they reach their limit. Lower cluster.local.memory_limit "
                f"or n_workers (or leave both out: cccdask then gives one worker per core a share of the memory)."
            )
    if workers * local.threads_per_worker > cores:
        warnings.append(
            f"cluster.local asks for {workers} worker(s) x {local.threads_per_worker} thread(s) but this machine "
            f"has {cores} core(s): the threads share cores and each task runs slower. Lower cluster.local.n_workers."
        )
    return warnings


def slurm_problems(config, frames=None) -> tuple[list[str], list[str]]:
    """``(errors, warnings)`` of a ``kind: slurm`` config; both empty for other kinds.

    Errors: dask-jobqueue is not installed. Warnings: ``processes > cores`` (workers
    share cores: each task slower), and, when ``frames`` (the opened inputs) is given,
    memory per worker thread below the estimated memory of one task.
    """
    if config.cluster.kind != "slurm":
        return [], []
    import importlib.util

    from dask.utils import parse_bytes

    errors, warnings = [], []
    if importlib.util.find_spec("dask_jobqueue") is None:
        errors.append("cluster.kind is 'slurm' but dask-jobqueue is not installed; install it with "
                      "pip install 'cccdask[slurm]' (or pip install dask-jobqueue).")
    slurm = config.cluster.slurm
    if slurm.processes > slurm.cores:
        warnings.append(
            f"cluster.slurm asks for {slurm.processes} worker processes on {slurm.cores} core(s) per job: the "
            f"workers share cores and each task runs slower. Set processes to at most cores.")
    if frames is not None:
        from cccdask.pipeline.plan import estimate_task_memory, resolve_frames_per_task

        fpt = resolve_frames_per_task(config.execution.frames_per_task, tuple(frames.frame_shape), frames.n_frames)
        need = estimate_task_memory(config, frames, fpt)
        per_thread = parse_bytes(slurm.memory) / slurm.processes / max(slurm.cores // slurm.processes, 1)
        if per_thread < need:
            warnings.append(
                f"cluster.slurm gives each worker thread {_format_bytes(per_thread)} (memory / processes / threads) "
                f"but one task needs about {_format_bytes(need)}: raise slurm.memory, lower processes or "
                f"execution.frames_per_task.")
    return errors, warnings


def background_subtraction_configured(config) -> bool:
    """Whether ``preprocess.background`` subtracts anything from either channel."""
    settings = config.preprocessing
    if settings is None:
        return False
    return any(b.method != "none" for b in (settings.background.image1, settings.background.image2))


def background_warning(config, frames, frame: int = 0) -> str | None:
    """A hint to set ``preprocess.background`` when the data has a large floor and none is subtracted.

    Reads frame ``frame`` of both channels (and its mask): one frame, not the series.
    """
    if background_subtraction_configured(config):
        return None
    index = min(frame, frames.n_frames - 1)
    mask = frames.mask_frame(index)
    mask = None if mask is None else np.asarray(mask.values)
    floors = []
    for image in (frames.image1, frames.image2):
        one = image.isel(t=index) if "t" in image.dims else image
        floors.append(intensity_floor(np.asarray(one.values), mask))
    if not any(f >= FLOOR_FRACTION for f in floors if np.isfinite(f)):
        return None
    shown = ", ".join(f"image{i + 1} {f:.2f}" for i, f in enumerate(floors))
    return (
        f"frame {index} has a large intensity floor under the mask (1st percentile / mean: {shown}; "
        f">= {FLOOR_FRACTION} means most of the signal is a level every voxel has) and no background is "
        f"subtracted: an unsubtracted background lowers the confidence and widens sigma; {BACKGROUND_HINT}."
    )
