"""How large a tile may be: the memory of a whole frame, a worker's budget, the default tile shape.

:func:`whole_frame_fits` decides between the whole-frame kernels and the tiled path of
:mod:`cccdask.tiled`; :func:`default_tile_shape` picks the tile of that path from the
memory a task may use (:func:`worker_memory_budget`).
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import psutil

from cccdask.kernels.correlate import padded_shape
from cccdask.kernels.profile import shift_range
from cccdask.kernels.tiled import tile_memory_bytes

#: Tiles stop growing at this many voxels once the halo adds less than half again.
_ENOUGH_VOXELS = 2**24
_TILE_EDGES = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


# --------------------------------------------------------------------------- memory


def whole_frame_memory_bytes(frame_shape: Sequence[int], max_distance: float | None,
                             spacing: Sequence[float], dtype="float32") -> int:
    """Estimated peak memory of the whole-frame correlation of one frame (bytes).

    Five arrays of the padded FFT shape (``next_fast_len(N_d + K_d)`` per axis: the
    spectra of I2m and of I1m or L, scipy's zero-padded input copy, the inverse
    transform; a real spectrum of P voxels takes as many bytes as a real array of P
    voxels) plus three frame-sized arrays (I1m, I2m and L in ``dtype``). The inputs
    themselves are not counted.
    """
    frame_shape = tuple(int(n) for n in frame_shape)
    lo, hi = shift_range(frame_shape, tuple(spacing), max_distance)
    padded = padded_shape(frame_shape, lo, hi)
    itemsize = np.dtype(dtype).itemsize
    return int((5 * math.prod(padded) + 3 * math.prod(frame_shape)) * itemsize)


def whole_frame_fits(frame_shape: Sequence[int], max_distance: float | None,
                     spacing: Sequence[float], memory_budget_bytes: float, dtype="float32") -> bool:
    """Whether the whole-frame correlation fits ``memory_budget_bytes``.

    See :func:`whole_frame_memory_bytes` for the estimate (about 5 padded arrays plus
    3 frame-sized ones).
    """
    return whole_frame_memory_bytes(frame_shape, max_distance, spacing, dtype) <= memory_budget_bytes


def worker_memory_budget() -> int:
    """Memory one task may use (bytes): half a worker's memory limit per thread.

    From the connected Dask distributed client's workers (the smallest), else from the
    memory available on this machine per CPU. The other half is left to the results
    and transfers a worker holds.
    """
    try:
        from distributed import get_client

        workers = get_client().scheduler_info(n_workers=-1)["workers"].values()
    except (ImportError, ValueError):
        workers = []
    per_thread = [w["memory_limit"] / max(1, w["nthreads"]) for w in workers if w.get("memory_limit")]
    if per_thread:
        return int(min(per_thread) / 2)
    return int(psutil.virtual_memory().available / (os.cpu_count() or 1) / 2)


def default_tile_shape(frame_shape: Sequence[int], max_shift: Sequence[int], *,
                       memory_budget_bytes: float | None = None, dtype="float32",
                       chunk_shape: Sequence[int] | None = None) -> tuple[int, ...]:
    """A tile shape whose task fits the memory budget, with a halo that costs little.

    Tiles are cubes (clipped to the frame) of a power-of-two edge, grown while one
    task's memory (:func:`cccdask.kernels.tiled.tile_memory_bytes`) fits the budget and
    the tile holds fewer than 2**24 voxels or the halo adds more than half again.
    With ``chunk_shape`` (the input's chunks) each edge is rounded down to a multiple
    of the chunk edge, so tasks read whole chunks.

    Parameters
    ----------
    frame_shape : sequence of int
    max_shift : sequence of int
        The halo K per axis (voxels).
    memory_budget_bytes : float, optional
        Memory one task may use; default :func:`worker_memory_budget`.
    dtype : str
        Working precision.
    chunk_shape : sequence of int, optional

    Raises
    ------
    ValueError
        Even 16-voxel tiles do not fit the budget with this halo.
    """
    frame_shape = tuple(int(n) for n in frame_shape)
    max_shift = tuple(int(k) for k in max_shift)
    budget = worker_memory_budget() if memory_budget_bytes is None else float(memory_budget_bytes)

    def shaped(edge):
        tile = []
        for axis, n in enumerate(frame_shape):
            t = min(n, edge)
            if chunk_shape is not None and t >= chunk_shape[axis]:
                t = t // chunk_shape[axis] * chunk_shape[axis]
            tile.append(t)
        return tuple(tile)

    best = None
    for edge in _TILE_EDGES:
        tile = shaped(edge)
        if tile_memory_bytes(tile, max_shift, dtype) > budget:
            break
        best = tile
        halo_cost = math.prod((t + 2 * k) / t for t, k in zip(tile, max_shift))
        if tile == frame_shape or (math.prod(tile) >= _ENOUGH_VOXELS and halo_cost <= 1.5):
            break
    if best is None:
        raise ValueError(
            f"a tile of 16 voxels per axis with a halo of {max_shift} voxels needs "
            f"{tile_memory_bytes(shaped(16), max_shift, dtype) / 2**20:.0f} MiB, over the memory "
            f"budget of {budget / 2**20:.0f} MiB; lower max_distance or give the workers more memory."
        )
    return best
