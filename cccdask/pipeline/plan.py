"""What a run will do, before it does it: frames per task, batches, the memory estimate.

:class:`FramePlan` is everything one task needs (paths, settings, what it writes),
small enough to travel with every task; :func:`frame_batches` splits the series into
task ranges; :func:`estimate_task_memory` and :func:`check_memory` decide between
whole-frame tasks and the tiled path. The plan itself is built by
:func:`cccdask.pipeline.layout.plan_run`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cccdask.config import PipelineConfig
from cccdask.pipeline.errors import FrameTooLargeError
from cccdask.pipeline.inputs import SourceSpec

AUTO_VOXELS_PER_TASK = 2**22


def resolve_frames_per_task(setting: int | str, frame_shape: tuple[int, ...], n_frames: int) -> int:
    """Frames per task: the setting, or for "auto" enough frames for ~4 Mvoxels of work.

    Small frames are batched so that reading, writing and scheduling are shared by
    several frames; a series always keeps at least ~16 tasks to spread over workers.
    """
    if setting != "auto":
        return int(setting)
    by_size = math.ceil(AUTO_VOXELS_PER_TASK / max(math.prod(frame_shape), 1))
    by_count = math.ceil(n_frames / 16)
    return int(max(1, min(by_size, by_count, 64)))


@dataclass(frozen=True)
class FramePlan:
    """Everything a task needs, small enough to travel with every task.

    Attributes
    ----------
    store, identity : str
        The results store and its identity hash.
    image1, image2, mask : SourceSpec
        Inputs; ``mask`` None for no mask. ``mask_per_frame``: the mask has a t dim.
    spacing, units, frame_shape, spatial_dims
        Frame geometry (physical units).
    ccc : dict
        Settings for :func:`cccdask.kernels.ccc.ccc_frame` and the profile geometry.
    coefficients : dict or None
        Keyword arguments of :func:`cccdask.coefficients.coefficients`.
    preprocess : dict or None
        The preprocessing settings (shift already estimated), as a dict.
    shared_generated_mask : bool
        The mask is one generated mask stored in the results store.
    background_regions : tuple of SourceSpec or None
    variables : tuple of (name, shape without t, dtype, fill value)
        What the task outputs (profiles cut to ``profile_points``).
    returned : tuple of str
        The small variables the task returns to the driver instead of writing them
        (:mod:`cccdask.pipeline.blocks`).
    profile_points : int or None
        Profile points kept in the store (``output.profile_range``); None: all.
    """

    store: str
    identity: str
    image1: SourceSpec
    image2: SourceSpec
    mask: SourceSpec | None
    mask_per_frame: bool
    spacing: tuple[float, ...]
    units: str
    frame_shape: tuple[int, ...]
    spatial_dims: tuple[str, ...]
    ccc: dict
    coefficients: dict | None = None
    preprocess: dict | None = None
    shared_generated_mask: bool = False
    background_regions: tuple[SourceSpec | None, SourceSpec | None] = (None, None)
    variables: tuple = ()
    frames_per_task: int = 1
    returned: tuple[str, ...] = ()
    profile_points: int | None = None

    def geometry(self):
        from cccdask.kernels.profile import profile_geometry

        return profile_geometry(self.frame_shape, self.spacing, self.ccc["max_distance"], self.ccc["fiji_compat"])


def frame_batches(n_frames: int, frames_per_task: int) -> list[tuple[int, int]]:
    return [(s, min(s + frames_per_task, n_frames)) for s in range(0, n_frames, frames_per_task)]


def estimate_task_memory(config: PipelineConfig, frames, frames_per_task: int) -> int:
    """Bytes one task needs at its peak (an estimate, on the safe side).

    Inputs as read (the whole batch), float32 working copies, the padded FFT buffers
    and spectra of the correlations, the correlograms, contribution images and
    coefficient maps (image outputs are held for the batch). Needs only the frame
    shape: it runs before anything is planned.
    """
    from cccdask.kernels.correlate import padded_shape
    from cccdask.kernels.profile import shift_range

    shape = tuple(frames.frame_shape)
    voxels = math.prod(shape)
    item = np.dtype(config.ccc.dtype).itemsize
    lo, hi = shift_range(shape, tuple(frames.spacing), config.ccc.max_distance)
    padded = math.prod(padded_shape(shape, lo, hi))
    ccf = math.prod(h - l + 1 for l, h in zip(lo, hi))
    read = voxels * (frames.image1.dtype.itemsize + frames.image2.dtype.itemsize
                     + (frames.mask.dtype.itemsize if frames.mask is not None else 0))
    working = voxels * item * 3 + voxels  # masked images, mean-subtracted image, bool mask
    ffts = padded * item * 2 + (padded // 2 + 1) * 2 * item * 3  # real buffers + 3 half spectra
    ccfs = ccf * item * 3 + ccf * 8 * 2  # correlograms, distance keys
    images = 0
    if config.ccc.contributions:
        images += voxels * item * 2 * frames_per_task + padded * item * 3
    if config.ccc.intermediates:
        images += ccf * item * 3 * frames_per_task
    if config.coefficients is not None:
        images += voxels * 8 * 6  # float64 channels, ranks and products
        if config.coefficients.maps:
            images += voxels * 8 * 8 * frames_per_task
    if config.preprocessing is not None:
        images += voxels * 4 * 3
    return int(1.25 * (read * frames_per_task + working + ffts + ccfs + images))


@dataclass(frozen=True)
class TilePlan:
    """How the frames of a run are analysed: whole, or tile by tile.

    Attributes
    ----------
    tiled : bool
        Frames take the tiled path (:mod:`cccdask.tiled`).
    tile_shape : tuple of int or None
        Tile edge per spatial axis (voxels) when tiled.
    task_bytes : int
        Estimated peak memory of one task (bytes): a whole-frame task, or one tile task.
    """

    tiled: bool
    tile_shape: tuple[int, ...] | None
    task_bytes: int


def plan_tiles(config: PipelineConfig, frames, estimate: int, per_thread: float | None) -> TilePlan:
    """Whole frames or tiles: tiles when ``execution.tile_shape`` is set or a frame is over budget.

    Over budget without a tile shape, the tiles are the largest that fit half the
    budget (:func:`cccdask.tile_memory.default_tile_shape`; the other half is left to
    the results a worker holds). Raises :class:`FrameTooLargeError` when the frames
    must be tiled but cannot be (see :func:`check_memory`).
    """
    from cccdask.kernels.profile import shift_range
    from cccdask.kernels.tiled import tile_memory_bytes
    from cccdask.tile_memory import default_tile_shape

    forced = config.execution.tile_shape is not None
    dtypes = (frames.image1.dtype, frames.image2.dtype)
    if not check_memory(estimate, per_thread, config, frames.frame_shape, forced=forced, image_dtypes=dtypes):
        shape = tuple(int(n) for n in frames.frame_shape)
        lo, hi = shift_range(shape, tuple(frames.spacing), config.ccc.max_distance)
        max_shift = tuple(max(-a, b) for a, b in zip(lo, hi))
        if forced:
            if len(config.execution.tile_shape) != len(shape):
                raise ValueError(
                    f"execution.tile_shape {list(config.execution.tile_shape)} has {len(config.execution.tile_shape)} "
                    f"edges but the frames have {len(shape)} spatial axes {tuple(frames.spatial_dims)}; give one "
                    f"edge per axis."
                )
            tile = tuple(min(int(t), n) for t, n in zip(config.execution.tile_shape, shape))
        else:
            tile = default_tile_shape(shape, max_shift, memory_budget_bytes=per_thread / 2, dtype=config.ccc.dtype)
        return TilePlan(True, tile, tile_memory_bytes(tile, max_shift, config.ccc.dtype))
    return TilePlan(False, None, int(estimate))


def check_memory(estimate: int, per_thread: float | None, config: PipelineConfig, frame_shape,
                 forced: bool = False, image_dtypes=()) -> bool:
    """Whether frames fit one task; False: take the tiled path. Raises when neither works.

    The tiled path (:mod:`cccdask.pipeline.tiled`) needs ``ccc.max_distance`` and, for a
    generated mask, a threshold scikit-image computes from a histogram
    (:func:`cccdask.preprocess_tiled.tiled_preprocess_blockers`).
    ``forced``: the tiles are asked for (``execution.tile_shape``).
    """
    from dask.utils import format_bytes

    from cccdask.preprocess_tiled import tiled_preprocess_blockers

    if not forced and (per_thread is None or estimate <= per_thread):
        return True
    preprocess = config.preprocessing
    blockers = ["ccc.max_distance is not set"] if config.ccc.max_distance is None else []
    blockers += tiled_preprocess_blockers(None if preprocess is None else preprocess.model_dump(), image_dtypes)
    if not blockers:
        return False
    if forced:
        raise FrameTooLargeError(
            f"execution.tile_shape asks for tiles, but the tiled path needs ccc.max_distance and a mask "
            f"threshold computed from a histogram (here: {', '.join(blockers)}). Fix these, or remove "
            f"execution.tile_shape."
        )
    which = "a worker thread's memory limit" if config.execution.memory_budget is None else "execution.memory_budget"
    raise FrameTooLargeError(
        f"one frame of shape {tuple(frame_shape)} needs about {format_bytes(estimate)} per task, but the "
        f"workers have {format_bytes(int(per_thread))} per thread ({which}). Frames this large are analysed "
        f"tile by tile when ccc.max_distance is set and a generated mask's threshold comes from a histogram "
        f"(here: {', '.join(blockers)}). "
        f"Otherwise give the workers more memory "
        f"(cluster.local.memory_limit, or fewer threads_per_worker) or set execution.frames_per_task to 1."
    )


def expected_memory_per_thread(config: PipelineConfig) -> float | None:
    """The budget of one task before any cluster is up (bytes), as the run will find it.

    ``execution.memory_budget``, else what the configured cluster declares per worker
    thread (local: its memory limit; SLURM: the job memory; in-process: the machine's).
    None for an existing scheduler (known once connected).
    """
    from dask.utils import parse_bytes
    import psutil

    from cccdask.cluster import local_cluster_size

    if config.execution.memory_budget is not None:
        return float(parse_bytes(config.execution.memory_budget))
    cluster = config.cluster
    if cluster.kind == "local":
        local = cluster.local
        _, memory = local_cluster_size(local.n_workers, local.threads_per_worker)
        limit = local.memory_limit or memory
        limit = parse_bytes(limit) if isinstance(limit, str) else limit
        return None if not limit else float(limit) / local.threads_per_worker
    if cluster.kind == "slurm":
        slurm = cluster.slurm
        return parse_bytes(slurm.memory) / slurm.processes / max(slurm.cores // slurm.processes, 1)
    if cluster.kind in ("threads", "synchronous"):
        threads = 1 if cluster.kind == "synchronous" else (cluster.threads or local_cluster_size(None, 1)[0])
        return psutil.virtual_memory().total * 0.9 / threads
    return None


def _merged_pairs_note(frames) -> str:
    """What the coefficients' last merge of a tiled frame may hold (their exact ranks and
    Costes' search keep the frame's distinct value pairs in one task)."""
    from dask.utils import format_bytes

    from cccdask.kernels.coefficients.sorted_pairs import KEY_BYTES, TABLE_ENTRY_BYTES

    dtypes = (frames.image1.dtype, frames.image2.dtype)
    voxels = int(np.prod(frames.frame_shape))
    if all(d.kind == "f" and d.itemsize <= 4 for d in dtypes):  # sorted keys, one per voxel
        per, pairs = KEY_BYTES, voxels
    elif all(d.kind in "iub" for d in dtypes):  # a joint histogram: at most one entry per possible pair
        per, pairs = TABLE_ENTRY_BYTES, min(voxels, math.prod(2 ** (8 * d.itemsize) for d in dtypes))
    else:
        per, pairs = TABLE_ENTRY_BYTES, voxels
    return (f"The coefficients keep the frame's distinct (image1, image2) value pairs in one task: up to "
            f"{format_bytes(per * pairs)} ({per} bytes per distinct pair; the last merge holds about three "
            f"times that), reached when nearly every voxel is a distinct pair (deconvolved float data, 16-bit "
            f"noise); data whose values repeat need far less. Give the workers that memory, or leave out "
            f"the coefficients section on frames this large.")


def describe_execution(config: PipelineConfig, frames) -> str:
    """One line for ``cccdask validate``: whole frames or tiles, and the memory of one task."""
    from dask.utils import format_bytes

    fpt = resolve_frames_per_task(config.execution.frames_per_task, tuple(frames.frame_shape), frames.n_frames)
    estimate = estimate_task_memory(config, frames, fpt)
    per_thread = expected_memory_per_thread(config)
    budget = ("unknown until the scheduler is reached" if per_thread is None
              else f"{format_bytes(int(per_thread))} per worker thread")
    tiles = plan_tiles(config, frames, estimate, per_thread)
    if tiles.tiled:
        why = "execution.tile_shape" if config.execution.tile_shape is not None else "over the budget"
        line = (f"Every frame is tiled ({why}): tiles of {list(tiles.tile_shape)} voxels, about "
                f"{format_bytes(tiles.task_bytes)} per tile task (budget {budget}; a whole frame would need "
                f"{format_bytes(int(estimate))}).")
        if config.coefficients is not None:
            line += " " + _merged_pairs_note(frames)
        return line
    return (f"Every frame is analysed whole ({fpt} frame(s) per task): about {format_bytes(int(estimate))} "
            f"per task (budget {budget}).")
