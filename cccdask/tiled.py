"""CCC of frames larger than memory: correlation bounded by a maximum distance, by tiles.

With a maximum distance R the correlograms hold only the shifts ``|s_d| <= K_d =
floor(R / spacing_d)``, and those need image 2 only within K of each voxel of image 1.
So a frame is cut into tiles; each task reads one tile of image 1 and the matching
tile of image 2 grown by a halo of K (plus the mask over both), and returns the tile's
``(2K + 1)^d`` partial correlograms; a tree reduction sums them. The mean under the
mask and the mask volume are reductions done first. The contribution images are then
computed over the same tiles by overlap-save (:func:`tiled_contributions`). Memory is
set by the tile (:func:`default_tile_shape`), never by the frame: the frame is never
loaded whole.

The results equal the whole-frame computation (:mod:`cccdask.kernels.correlate`)
restricted to R, to float32 rounding.
"""

from __future__ import annotations

import itertools
import math
import os
from typing import Any, Sequence

import dask
import dask.array as da
from dask.base import tokenize
from dask.delayed import Delayed
from dask.graph_manipulation import bind
import numpy as np
import psutil

from cccdask.frames import InvalidFrameError, prepare_inputs
from cccdask.kernels.correlate import MODES, padded_shape
from cccdask.kernels.profile import shift_range
from cccdask.kernels.tiled import (
    contribution_tile,
    correlate_tile,
    mirror_indices,
    tile_memory_bytes,
)

#: Partial correlograms summed per task of the tree reduction.
SPLIT_EVERY = 8
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


# --------------------------------------------------------------------------- graph helpers


def _one_frame(image1, image2, mask, spacing):
    """The frame's arrays (Dask or NumPy, not loaded) and its validated spacing."""
    frames = prepare_inputs(image1, image2, mask, spacing)
    if frames.n_frames != 1:
        raise ValueError(
            f"the tiled functions take one frame, got a time series of {frames.n_frames}; "
            f"select a frame first (e.g. image.isel(t=i))."
        )
    mask_frame = frames.mask_frame(0)
    return (frames.image1.data[0], frames.image2.data[0],
            None if mask_frame is None else mask_frame.data, frames.spacing)


def _as_dask(array, tile_shape):
    if array is None or isinstance(array, da.Array):
        return array
    return da.from_array(np.asarray(array), chunks=tile_shape)


def _chunk_grid(array: da.Array | None, after=None):
    """One Delayed per chunk of ``array`` (and the chunks), read once ``after`` is computed.

    Binding the reads to ``after`` (e.g. the mean under the mask) gives them keys of
    their own (the earlier pass reads the chunks separately) and keeps the scheduler
    from reading the whole frame ahead while ``after`` is still being computed.
    """
    if array is None:
        return None
    if after is not None:
        array = bind(array, after, seed=tokenize(array, after))
    return array.to_delayed(optimize_graph=True), array.chunks


def _region(source, index: tuple[slice, ...]):
    """The pieces of the chunks that cover ``array[index]``, and where each goes.

    Returns ``(pieces, places, shape)``: Delayed slices of chunks (only those slices
    travel to the task), their position in the region as ``(start, stop)`` per axis,
    and the region's shape; :func:`_assemble` puts them together in the task.
    """
    if source is None:
        return None
    grid, chunks = source
    per_axis = []
    for sl, sizes in zip(index, chunks):
        bounds = np.cumsum((0,) + tuple(sizes))
        items = []
        for i in range(int(np.searchsorted(bounds, sl.start, side="right")) - 1, len(sizes)):
            if bounds[i] >= sl.stop:
                break
            lo, hi = max(sl.start, int(bounds[i])), min(sl.stop, int(bounds[i + 1]))
            items.append((i, slice(lo - int(bounds[i]), hi - int(bounds[i])), sizes[i],
                          (lo - sl.start, hi - sl.start)))
        per_axis.append(items)
    pieces, places = [], []
    for combination in itertools.product(*per_axis):
        block = grid[tuple(c[0] for c in combination)]
        whole = all(c[1] == slice(0, c[2]) for c in combination)
        pieces.append(block if whole else block[tuple(c[1] for c in combination)])
        places.append(tuple(c[3] for c in combination))
    return pieces, places, tuple(sl.stop - sl.start for sl in index)


def _assemble(region) -> np.ndarray | None:
    """The region's array from its pieces (see :func:`_region`)."""
    if region is None:
        return None
    pieces, places, shape = region
    if len(pieces) == 1:
        return np.asarray(pieces[0])
    out = np.empty(shape, dtype=np.asarray(pieces[0]).dtype)
    for piece, place in zip(pieces, places):
        out[tuple(slice(a, b) for a, b in place)] = piece
    return out


def _tiles(frame_shape, tile_shape):
    """Index and slices of every tile of a regular grid (edge tiles may be smaller)."""
    starts = [range(0, n, t) for n, t in zip(frame_shape, tile_shape)]
    for position, origin in zip(itertools.product(*(range(len(s)) for s in starts)),
                                itertools.product(*starts)):
        yield position, tuple(slice(o, min(o + t, n)) for o, t, n in zip(origin, tile_shape, frame_shape))


def _check_tile_shape(tile_shape, frame_shape):
    tile_shape = tuple(int(t) for t in tile_shape)
    if len(tile_shape) != len(frame_shape) or any(t < 1 for t in tile_shape):
        raise ValueError(
            f"tile_shape {tile_shape} must give a positive tile edge (voxels) for each of the "
            f"frame's {len(frame_shape)} axes."
        )
    return tuple(min(t, n) for t, n in zip(tile_shape, frame_shape))


def _inside(mask_block) -> np.ndarray | None:
    return None if mask_block is None else np.asarray(mask_block) != 0


def _masked(block, inside, dtype) -> np.ndarray:
    """``block`` as ``dtype`` (a copy), zero outside the mask (NaN outside is dropped)."""
    out = np.array(block, dtype=dtype, copy=True)
    if inside is not None:
        out[~inside] = 0
    return out


# --------------------------------------------------------------------------- tasks


def _frame_statistics(sums: np.ndarray, voxel_volume: float) -> np.ndarray:
    """[mean, mask_volume] from [sum of image 1, count, non-finite 1, non-finite 2]."""
    total, count, bad1, bad2 = (float(v) for v in sums)
    if count == 0:
        raise InvalidFrameError(
            "the mask has no voxel inside (all zero); pass a mask with non-zero voxels "
            "where the signal may be, or mask=None to use the whole frame."
        )
    for name, bad in (("image1", bad1), ("image2", bad2)):
        if bad:
            raise InvalidFrameError(
                f"{name} has NaN or infinite pixels inside the mask; replace them "
                f"(e.g. numpy.nan_to_num) or exclude them with the mask."
            )
    return np.array([total / count, count * voxel_volume])


def _tile_partials(image1_tile, image2_region, mask_region, tile_in_region, zero_halo,
                   statistics, max_shift, mode, dtype) -> list[np.ndarray]:
    """The partial correlograms (float64) of one tile: original and/or subtracted."""
    inside_region = _inside(_assemble(mask_region))
    inside = None if inside_region is None else inside_region[tile_in_region]
    image2_extended = np.pad(_masked(_assemble(image2_region), inside_region, dtype), zero_halo)
    image1m = _masked(_assemble(image1_tile), inside, dtype)
    operands = []
    if mode in ("full", "correlation"):
        operands.append(image1m)
    if mode in ("full", "no_confidence"):
        centred = image1m - image1m.dtype.type(statistics[0])
        if inside is not None:
            centred[~inside] = 0
        operands.append(centred)
    return [p.astype(np.float64) for p in correlate_tile(operands, image2_extended, max_shift)]


def _sum_partials(groups: list[list[np.ndarray]]) -> list[np.ndarray]:
    totals = [p.copy() for p in groups[0]]
    for group in groups[1:]:
        for total, p in zip(totals, group):
            total += p
    return totals


def _finish(totals, statistics, crop, dtype) -> list[np.ndarray]:
    """Crop to the kept shifts and divide by the mask volume."""
    return [(t[crop] / statistics[1]).astype(dtype) for t in totals]


def _tree_sum(parts: list) -> Any:
    while len(parts) > 1:
        parts = [dask.delayed(_sum_partials, pure=True)(parts[i:i + SPLIT_EVERY])
                 for i in range(0, len(parts), SPLIT_EVERY)]
    return dask.delayed(_sum_partials, pure=True)(parts)


# --------------------------------------------------------------------------- public


def tiled_correlograms(image1, image2, mask, spacing, max_distance: float, *,
                       tile_shape: Sequence[int] | None = None, mode: str = "full",
                       dtype="float32") -> dict[str, da.Array]:
    """Original and subtracted correlograms of one frame restricted to R, tile by tile.

    Parameters
    ----------
    image1, image2 : array-like
        One 2D ``(y, x)`` or 3D ``(z, y, x)`` frame each: Dask (never loaded whole),
        NumPy or xarray.
    mask : array-like or None
        Non-zero = inside; None = every voxel inside.
    spacing : float or sequence of float, optional
        Physical voxel size per axis, ``(z,) y, x``; None = from xarray coordinates, or 1.
    max_distance : float
        R, physical units: the correlograms hold the shifts ``|s_d| <= floor(R / spacing_d)``
        (clipped to the frame's range, as :func:`cccdask.kernels.profile.shift_range`).
    tile_shape : sequence of int, optional
        Tile edge per axis (voxels); default :func:`default_tile_shape` for the
        workers' memory. The halo may be larger than a tile.
    mode : {"full", "no_confidence", "correlation"}
        Which correlograms: both, subtracted only, original only.
    dtype : str
        Working precision of the FFTs ("float32" or "float64").

    Returns
    -------
    dict of dask.array.Array
        ``original`` (``CC_raw(I1m, I2m) / maskVolume``) and/or ``subtracted``
        (``CC_raw(L, I2m) / maskVolume``), shape ``hi - lo + 1`` per axis with the zero
        shift at ``-lo`` (``2K + 1`` and ``K`` unless clipped); ``mean`` (image 1 under the
        mask) and ``mask_volume`` (voxels inside times the voxel volume), 0-d float64.
        Computing them raises :class:`cccdask.frames.InvalidFrameError` for an empty
        mask or NaN/Inf pixels inside it.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}.")
    if max_distance is None or not (np.isfinite(max_distance) and max_distance > 0):
        raise ValueError(
            f"max_distance {max_distance!r} must be a positive distance (physical units): "
            f"the tiled path needs the shifts bounded."
        )
    dtype = np.dtype(dtype)
    image1, image2, mask, spacing = _one_frame(image1, image2, mask, spacing)
    frame_shape = tuple(image1.shape)
    shift_lo, shift_hi = shift_range(frame_shape, spacing, max_distance)
    max_shift = tuple(max(-lo, hi) for lo, hi in zip(shift_lo, shift_hi))
    if tile_shape is None:
        chunks = image1.chunksize if isinstance(image1, da.Array) else None
        tile_shape = default_tile_shape(frame_shape, max_shift, dtype=dtype, chunk_shape=chunks)
    tile_shape = _check_tile_shape(tile_shape, frame_shape)
    image1, image2, mask = (_as_dask(a, tile_shape) for a in (image1, image2, mask))

    inside = None if mask is None else mask != 0
    values1 = image1.astype(dtype)
    nonfinite1 = ~da.isfinite(values1)
    nonfinite2 = ~da.isfinite(image2.astype(dtype))
    if inside is None:
        sums = [values1.sum(dtype=np.float64), math.prod(frame_shape),
                nonfinite1.sum(), nonfinite2.sum()]
    else:
        sums = [da.where(inside, values1, 0).sum(dtype=np.float64), inside.sum(),
                (nonfinite1 & inside).sum(), (nonfinite2 & inside).sum()]
    sums = da.stack([da.asarray(s).astype(np.float64) for s in sums]).rechunk(-1)
    statistics = dask.delayed(_frame_statistics, pure=True, nout=2)(
        sums.to_delayed(optimize_graph=True).item(), float(np.prod(spacing)))

    sources = [_chunk_grid(a, after=statistics) for a in (image1, image2, mask)]
    partials = []
    for _, tile in _tiles(frame_shape, tile_shape):
        halo = tuple(slice(max(0, t.start - k), min(n, t.stop + k))
                     for t, k, n in zip(tile, max_shift, frame_shape))
        zero_halo = tuple((k - (t.start - h.start), k - (h.stop - t.stop))
                          for t, h, k in zip(tile, halo, max_shift))
        tile_in_region = tuple(slice(t.start - h.start, t.stop - h.start) for t, h in zip(tile, halo))
        partials.append(dask.delayed(_tile_partials, pure=True)(
            _region(sources[0], tile), _region(sources[1], halo), _region(sources[2], halo),
            tile_in_region,
            zero_halo, statistics, max_shift, mode, dtype))

    crop = tuple(slice(k + lo, k + hi + 1) for k, lo, hi in zip(max_shift, shift_lo, shift_hi))
    finished = dask.delayed(_finish, pure=True, nout=2)(_tree_sum(partials), statistics, crop, dtype)
    ccf_shape = tuple(hi - lo + 1 for lo, hi in zip(shift_lo, shift_hi))
    names = [n for n, modes in (("original", ("full", "correlation")),
                                ("subtracted", ("full", "no_confidence"))) if mode in modes]
    out = {name: da.from_delayed(finished[i], shape=ccf_shape, dtype=dtype) for i, name in enumerate(names)}
    out["mean"] = da.from_delayed(statistics[0], shape=(), dtype=np.float64)
    out["mask_volume"] = da.from_delayed(statistics[1], shape=(), dtype=np.float64)
    return out


def _tile_contributions(image1_box, image2_box, mask_box, take, gauss, dtype) -> np.ndarray:
    """Both contribution images of one tile, stacked ``(2, *tile)``."""
    grid = np.ix_(*take)
    inside = _inside(_assemble(mask_box))
    inside = None if inside is None else inside[grid]
    image1_extended = _masked(_assemble(image1_box)[grid], inside, dtype)
    image2_extended = _masked(_assemble(image2_box)[grid], inside, dtype)
    return np.stack(contribution_tile(image1_extended, image2_extended, gauss)).astype(dtype, copy=False)


def _symmetric_kernel(gauss, shift_lo) -> np.ndarray:
    """The kernel padded with zeros to ``2K + 1`` per axis, zero shift at the centre."""
    gauss = np.asarray(gauss)
    pads = []
    for n, lo in zip(gauss.shape, shift_lo):
        hi = n - 1 + lo
        k = max(-lo, hi)
        pads.append((k + lo, k - hi))
    return np.pad(gauss, pads)


def tiled_contributions(image1, image2, gauss_correlogram, *, mask=None,
                        shift_lo: Sequence[int] | None = None,
                        tile_shape: Sequence[int] | None = None, dtype="float32"):
    """Contribution images of one frame, tile by tile (overlap-save), lazily.

    ``contribution1 = (I2m convolved with G) x I1m`` and
    ``contribution2 = (I1m correlated with G) x I2m``, the frame extended by mirroring
    at its border (``numpy.pad`` mode "symmetric"), exactly as the whole-frame engine
    (:func:`cccdask.kernels.contributions.contribution_images`).

    Parameters
    ----------
    image1, image2 : array-like
        One 2D or 3D frame each (Dask, NumPy or xarray); never loaded whole.
    gauss_correlogram : numpy.ndarray, dask.array.Array or dask Delayed
        G, the Gaussian-modified (cropped) correlogram; may be lazy.
    mask : array-like, optional
        Non-zero = inside.
    shift_lo : sequence of int, optional
        The shift at index 0 of G per axis; default: G is ``2K + 1`` per axis with the
        zero shift at the centre.
    tile_shape : sequence of int, optional
        Default :func:`default_tile_shape`.
    dtype : str
        Working precision.

    Returns
    -------
    contribution1, contribution2 : dask.array.Array
        Frame-shaped, chunked like the tiles, so that storing them (e.g.
        ``dask.array.to_zarr``) writes chunk by chunk; compute or store both together:
        one task per tile produces both.
    """
    dtype = np.dtype(dtype)
    image1, image2, mask, spacing = _one_frame(image1, image2, mask, None)
    frame_shape = tuple(image1.shape)
    if isinstance(gauss_correlogram, da.Array):
        kernel_shape = gauss_correlogram.shape
        gauss_correlogram = gauss_correlogram.rechunk(kernel_shape).to_delayed(optimize_graph=True).item()
    elif isinstance(gauss_correlogram, Delayed):
        raise ValueError(
            "a Delayed gauss_correlogram has no known shape; wrap it with "
            "dask.array.from_delayed(g, shape=..., dtype=...) first."
        )
    else:
        gauss_correlogram = np.asarray(gauss_correlogram)
        kernel_shape = gauss_correlogram.shape
    if len(kernel_shape) != len(frame_shape):
        raise ValueError(f"the kernel has {len(kernel_shape)} dims for a {len(frame_shape)}D frame.")
    if shift_lo is None:
        if any(n % 2 == 0 for n in kernel_shape):
            raise ValueError(
                f"the kernel has shape {kernel_shape}, not 2K + 1 per axis; give shift_lo "
                f"(the shift of index 0 per axis) for a correlogram cropped asymmetrically."
            )
        shift_lo = tuple(-(n // 2) for n in kernel_shape)
    shift_lo = tuple(int(v) for v in shift_lo)
    max_shift = tuple(max(-lo, n - 1 + lo) for n, lo in zip(kernel_shape, shift_lo))
    gauss = dask.delayed(_symmetric_kernel, pure=True)(gauss_correlogram, shift_lo)
    if tile_shape is None:
        chunks = image1.chunksize if isinstance(image1, da.Array) else None
        tile_shape = default_tile_shape(frame_shape, max_shift, dtype=dtype, chunk_shape=chunks)
    tile_shape = _check_tile_shape(tile_shape, frame_shape)
    image1, image2, mask = (_as_dask(a, tile_shape) for a in (image1, image2, mask))

    after = gauss if isinstance(gauss_correlogram, Delayed) else None
    sources = [_chunk_grid(a, after=after) for a in (image1, image2, mask)]
    blocks = {}
    for position, tile in _tiles(frame_shape, tile_shape):
        take = [mirror_indices(t.start - k, t.stop + k, n) for t, k, n in zip(tile, max_shift, frame_shape)]
        box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in take)
        take = [i - b.start for i, b in zip(take, box)]
        task = dask.delayed(_tile_contributions, pure=True)(
            *(_region(source, box) for source in sources), take, gauss, dtype)
        shape = (2,) + tuple(t.stop - t.start for t in tile)
        blocks[position] = da.from_delayed(task, shape=shape, dtype=dtype)
    def nested(prefix):
        if len(prefix) == len(frame_shape):
            return blocks[prefix]
        count = len(range(0, frame_shape[len(prefix)], tile_shape[len(prefix)]))
        return [nested(prefix + (i,)) for i in range(count)]

    stacked = da.block(nested(()))
    return stacked[0], stacked[1]
