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


def check_memory(estimate: int, per_thread: float | None, config: PipelineConfig, frame_shape) -> bool:
    """Whether frames fit one task; False: take the tiled path. Raises when neither works.

    The tiled path (:mod:`cccdask.tiled`, through :func:`cccdask.ccc`) needs
    ``ccc.max_distance`` and, for now, no contribution images, correlograms,
    coefficients or preprocessing.
    """
    from dask.utils import format_bytes

    if per_thread is None or estimate <= per_thread:
        return True
    blockers = [name for name, on in (
        ("ccc.max_distance is not set", config.ccc.max_distance is None),
        ("ccc.contributions", config.ccc.contributions),
        ("ccc.intermediates", config.ccc.intermediates),
        ("coefficients", config.coefficients is not None),
        ("preprocess", config.preprocessing is not None),
    ) if on]
    if not blockers:
        return False
    which = "a worker thread's memory limit" if config.execution.memory_budget is None else "execution.memory_budget"
    raise FrameTooLargeError(
        f"one frame of shape {tuple(frame_shape)} needs about {format_bytes(estimate)} per task, but the "
        f"workers have {format_bytes(int(per_thread))} per thread ({which}). Frames this large are correlated "
        f"tile by tile when ccc.max_distance is set and contributions, intermediates, coefficients and "
        f"preprocess are off (here: {', '.join(blockers)}). Otherwise give the workers more memory "
        f"(cluster.local.memory_limit, or fewer threads_per_worker) or set execution.frames_per_task to 1."
    )
