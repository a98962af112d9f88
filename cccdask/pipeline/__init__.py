"""A run: plan the frames, submit one task per frame (or batch), record completion, resume.

The driver (:func:`run`) never touches pixel data. It opens the inputs lazily (metadata
only) to validate them, creates the results store, and submits tasks that each carry a
small :class:`FramePlan` (paths, settings) and a range of frame indices. A task reads
its own frames from storage, runs the CCC kernel (and the coefficients and
preprocessing when configured) once per frame for all outputs, and writes the results
into the store chunks it owns. Only when a task has returned does the driver record
its frames in the completion record (``frame_status``), so a frame marked complete
always has its data on disk. A rerun with the same config computes only the frames
still missing; a different config on an existing store is refused unless overwrite.

Frames that cannot be analysed (empty mask, NaN/Inf pixels: InvalidFrameError) and
frames whose Gaussian fit failed are results too: recorded with their status and
reason, never a crash of the run.

Where each step happens (imports go one way: driver -> task -> kernels)
-----------------------------------------------------------------------
:mod:`~cccdask.pipeline.inputs`
    Open and check the inputs (metadata only); :class:`SourceSpec`, one frame read.
:mod:`~cccdask.pipeline.store_state`
    The output location, the run identity, resume / replace / refuse an existing store.
:mod:`~cccdask.pipeline.plan`
    :class:`FramePlan`, frames per task, batches, the memory estimate.
:mod:`~cccdask.pipeline.layout`
    :func:`plan_run`: the plan and the store layout, from a probe frame.
:mod:`~cccdask.pipeline.task`
    The task, :func:`compute_frames`: a frame is **read** (``_read_batch``), analysed
    (:func:`analyse_frame`) and **written** (:func:`cccdask.io.store.write_frames`).
:mod:`~cccdask.pipeline.record`
    A frame is **recorded complete** (:class:`~cccdask.pipeline.record.Completion`),
    only after its task returned; failure messages.
:mod:`~cccdask.pipeline.tiled`
    Frames too large for one task, correlated tile by tile.
:mod:`~cccdask.pipeline.driver`
    :func:`run`: the submission window, resume, :func:`finalise` (best frame, reports,
    the store marked complete last).
:mod:`~cccdask.pipeline.errors`
    The errors a run raises.
"""

from cccdask.pipeline.driver import finalise, run
from cccdask.pipeline.errors import FrameTooLargeError, InputReadError, PipelineError, StoreConflictError
from cccdask.pipeline.inputs import RunInputs, SourceSpec, open_inputs, read_frame
from cccdask.pipeline.layout import plan_run
from cccdask.pipeline.plan import AUTO_VOXELS_PER_TASK, FramePlan, estimate_task_memory, resolve_frames_per_task
from cccdask.pipeline.record import DISK_FULL_ERRNOS, DISK_FULL_HINT
from cccdask.pipeline.store_state import check_output_location, output_state, run_identity
from cccdask.pipeline.task import FIT_FAILED_REASON, GENERATED_MASK, analyse_frame, compute_frames

__all__ = [
    "AUTO_VOXELS_PER_TASK",
    "DISK_FULL_ERRNOS",
    "DISK_FULL_HINT",
    "FIT_FAILED_REASON",
    "GENERATED_MASK",
    "FramePlan",
    "FrameTooLargeError",
    "InputReadError",
    "PipelineError",
    "RunInputs",
    "SourceSpec",
    "StoreConflictError",
    "analyse_frame",
    "check_output_location",
    "compute_frames",
    "estimate_task_memory",
    "finalise",
    "open_inputs",
    "output_state",
    "plan_run",
    "read_frame",
    "resolve_frames_per_task",
    "run",
    "run_identity",
]
