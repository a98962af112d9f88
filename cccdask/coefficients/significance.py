""":func:`costes_significance`: Costes' randomisation test, per frame."""

from __future__ import annotations

import operator
from typing import Any, Sequence

import numpy as np
import xarray as xr
from dask.base import tokenize

from cccdask.frames import frame_time_coords, prepare_inputs
from cccdask.kernels.costes import block_shape, mask_blocks, randomized_pearson, significance_summary
from cccdask.coefficients.graph import FrameTasks, chunked_inputs


SIGNIFICANCE_FIELDS = ("observed_r", "null_mean", "null_sd", "p_value", "coloc2_p_value", "n_blocks")


def _significance_of_frame(blocks: tuple[np.ndarray, np.ndarray], nulls: list[np.ndarray]) -> np.ndarray:
    blocks1, blocks2 = blocks
    null = np.concatenate(nulls)
    if len(blocks1) < 2:
        return np.concatenate([[np.nan] * 5, [len(blocks1)], null * np.nan])
    x, y = blocks1.ravel(), blocks2.ravel()
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt(np.dot(x, x) * np.dot(y, y))
    observed = float(np.dot(x, y) / denominator) if denominator > 0 else np.nan
    summary = significance_summary(observed, null)
    head = [observed, summary["null_mean"], summary["null_sd"], summary["p_value"], summary["coloc2_p_value"],
            len(blocks1)]
    return np.concatenate([head, null])


def costes_significance(
    image1: Any,
    image2: Any,
    mask: Any = None,
    *,
    psf_width: float,
    n_randomizations: int = 200,
    seed: int = 0,
    tasks: int = 8,
    spacing: float | Sequence[float] | None = None,
) -> xr.Dataset:
    """Costes' randomisation test of Pearson's r, per frame, shuffling inside the mask only.

    The frame is tiled into blocks of one PSF width per axis (``psf_width`` over the
    spacing: anisotropic in 3D). Only blocks that lie entirely inside the mask take part:
    channel 1's blocks are permuted among them (Coloc 2 shuffles the mask's bounding box,
    moving background into the cell), channel 2 stays, and Pearson r over those blocks'
    voxels is recomputed ``n_randomizations`` times. Raw intensities (no threshold), as
    Coloc 2. Each frame is loaded whole (2 float64 values per voxel in the mask's blocks).

    Parameters
    ----------
    image1, image2, mask, spacing
        As in :func:`coefficients`.
    psf_width : float
        Block size in the physical units of the spacing (e.g. the PSF FWHM).
    n_randomizations : int
        Number of shuffles per frame.
    seed : int
        Seeds every shuffle (independent streams per frame and task): same seed, same
        result, on any cluster.
    tasks : int
        Tasks per frame the randomisations are split into (run in parallel).

    Returns
    -------
    xarray.Dataset
        ``costes_observed_r`` (r over the blocks inside the mask), ``costes_null_mean``,
        ``costes_null_sd``, ``costes_p_value`` (``(#{null r >= observed} + 1) / (n + 1)``),
        ``costes_coloc2_p_value`` (Coloc 2's normal-CDF value: near 1 = significant),
        ``costes_n_blocks`` and ``costes_null_r`` (over ``randomization``). Lazy for Dask
        input; NaN where fewer than 2 blocks lie inside the mask.
    """
    frames = prepare_inputs(image1, image2, mask, spacing)
    if not isinstance(n_randomizations, (int, np.integer)) or n_randomizations < 1:
        raise ValueError(f"n_randomizations is {n_randomizations!r}; give an integer >= 1.")
    if not isinstance(tasks, (int, np.integer)) or tasks < 1:
        raise ValueError(f"tasks is {tasks!r}; give an integer >= 1.")
    block = block_shape(float(psf_width), frames.spacing)
    n_tasks = min(int(tasks), int(n_randomizations))
    counts = [len(part) for part in np.array_split(np.arange(n_randomizations), n_tasks)]
    frame_seeds = np.random.SeedSequence(seed).spawn(frames.n_frames)
    inputs = chunked_inputs(frames, whole_frames=True)
    token = tokenize(*inputs, block, n_randomizations, seed, n_tasks)
    layer = FrameTasks("costes-significance", *inputs, token)
    rows = []
    for t in range(frames.n_frames):
        blocks = layer.add("blocks", (t,), mask_blocks, *layer.chunks(t, layer.blocks[0]), block)
        nulls = [layer.add("null", (t, j), randomized_pearson, (operator.getitem, blocks, 0),
                           (operator.getitem, blocks, 1), count, task_seed)
                 for j, (count, task_seed) in enumerate(zip(counts, frame_seeds[t].spawn(n_tasks)))]
        rows.append(layer.add("row", (t,), _significance_of_frame, blocks, nulls))
    table = layer.per_frame_output(f"costes-significance-table-{token}", rows, 1,
                                   len(SIGNIFICANCE_FIELDS) + n_randomizations, np.float64)
    data_vars = {f"costes_{name}": (("t",), table[:, k]) for k, name in enumerate(SIGNIFICANCE_FIELDS)}
    data_vars["costes_null_r"] = (("t", "randomization"), table[:, len(SIGNIFICANCE_FIELDS):])
    attrs = {
        "block_shape_voxels": list(block),
        "psf_width": float(psf_width),
        "units": frames.units,
        "spacing": list(frames.spacing),
        "n_randomizations": int(n_randomizations),
        "seed": int(seed),
        "method": (
            "Costes randomisation: channel 1's blocks that lie entirely inside the mask are "
            "permuted among themselves; Pearson r over those blocks' voxels, raw intensities"
        ),
        "coloc2_p_value": "normal CDF of the observed r under N(null mean, null SD), as Coloc 2 reports it",
    }
    dataset = xr.Dataset(data_vars, coords=frame_time_coords(frames), attrs=attrs)
    if not frames.time_series:
        dataset = dataset.isel(t=0, drop=True)
    if not frames.lazy:
        dataset = dataset.compute(scheduler="threads")
    return dataset
