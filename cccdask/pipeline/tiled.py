"""The tiled path of a run: frames too large for one task, correlated tile by tile.

Used by the driver when :func:`~cccdask.pipeline.plan.check_memory` finds that a frame
does not fit a worker thread. Each frame's tiled graph (:func:`cccdask.ccc`) runs on the
cluster; its small results are written by the driver into the frame's chunks and then
recorded (:class:`~cccdask.pipeline.record.Completion`).
"""

from __future__ import annotations

import numpy as np

from cccdask.config import PipelineConfig
from cccdask.frames import InvalidFrameError
from cccdask.io.store import FRAME_FIT_FAILED, FRAME_INVALID, FRAME_OK
from cccdask.pipeline.inputs import RunInputs
from cccdask.pipeline.plan import FramePlan
from cccdask.pipeline.record import Completion, failure_message
from cccdask.pipeline.task import FIT_FAILED_REASON, split_returned, stored_value


def run_tiled(cluster, plan: FramePlan, inputs: RunInputs, config: PipelineConfig, budget: float, todo,
               completion: Completion, progress, n_frames):
    """Frames over the task budget: each frame correlated tile by tile on the cluster.

    :func:`cccdask.ccc` builds the tiled graph of one frame (tasks read their own tiles;
    the frame is never loaded whole); its small results (profiles, fit) come back to the
    driver, which writes them in blocks (:mod:`~cccdask.pipeline.blocks`) and then records
    the frame.
    """
    import cccdask

    frames = inputs.frames
    dtypes = {name: dtype for name, _, dtype, _ in plan.variables}
    failures = []
    for start, stop in todo:
        arrays = {name: np.full((stop - start,) + tuple(shape), fill, dtype=dtype)
                  for name, shape, dtype, fill in plan.variables}
        outcomes = []
        try:
            for k, index in enumerate(range(start, stop)):
                mask = frames.mask_frame(index)
                result = cccdask.ccc(
                    frames.image1.isel(t=index).data, frames.image2.isel(t=index).data,
                    None if mask is None else mask.data, mode=config.ccc.mode, spacing=frames.spacing,
                    max_distance=config.ccc.max_distance, fiji_compat=config.ccc.fiji_compat,
                    dtype=config.ccc.dtype, memory_budget=budget,
                    n_gaussians=config.ccc.n_gaussians, max_gaussians=config.ccc.max_gaussians,
                )
                try:
                    values = cluster.client.compute(result).result()
                except InvalidFrameError as error:
                    outcomes.append((index, FRAME_INVALID, str(error)))
                    continue
                for name in values.data_vars:
                    if name in arrays:
                        value = stored_value(plan, tuple(values[name].dims), values[name].values)
                        arrays[name][k] = value.astype(dtypes[name], copy=False)
                ok = bool(values["fit_ok"].any()) if "fit_ok" in values else True
                outcomes.append((index, FRAME_OK if ok else FRAME_FIT_FAILED, "" if ok else FIT_FAILED_REASON))
            small = split_returned(plan, start, arrays)
        except Exception as error:  # report, keep going with the other frames
            failures.append(((start, stop), failure_message(error)))
            continue
        completion.add(outcomes, (start, small))
        completion.report(progress, n_frames)
    return failures
