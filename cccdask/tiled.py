"""CCC of frames larger than memory: correlation bounded by a maximum distance, by tiles.

With a maximum distance R the correlograms hold only the shifts ``|s_d| <= K_d =
floor(R / spacing_d)``, and those need image 2 only within K of each voxel of image 1.
So a frame is cut into tiles; each task reads one tile of image 1 and the matching
tile of image 2 grown by a halo of K (plus the mask over both), and returns the tile's
``(2K + 1)^d`` partial correlograms; a tree reduction sums them. The mean under the
mask and the mask volume are reductions done first. The contribution images are then
computed over the same tiles by overlap-save (:func:`tiled_contributions`). Memory is
set by the tile (:func:`cccdask.tile_memory.default_tile_shape`), never by the frame: the frame is never
loaded whole.

The results equal the whole-frame computation (:mod:`cccdask.kernels.correlate`)
restricted to R, to float32 rounding.
"""

from __future__ import annotations

import itertools
import math
import operator
from typing import Sequence

import dask.array as da
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
import numpy as np
import xarray as xr

from cccdask.frames import InvalidFrameError, prepare_inputs
from cccdask.graph import TaskLayer, as_dask, output_array, read_again_after
from cccdask.kernels.correlate import MODES
from cccdask.kernels.profile import shift_range
from cccdask.kernels.tiled import contribution_tile, correlate_tile, mirror_indices
from cccdask.tile_memory import default_tile_shape, whole_frame_fits, whole_frame_memory_bytes, worker_memory_budget

__all__ = [  # the tile memory helpers are importable from here too
    "default_tile_shape",
    "tiled_contributions",
    "tiled_correlograms",
    "whole_frame_fits",
    "whole_frame_memory_bytes",
    "worker_memory_budget",
]

#: Partial correlograms summed per task of the tree reduction.
SPLIT_EVERY = 8


# --------------------------------------------------------------------------- graph helpers


def _one_frame(image1, image2, mask, spacing):
    """The frame's arrays (Dask or NumPy, not loaded) and its validated spacing."""
    frames = prepare_inputs(image1, image2, mask, spacing)
    if frames.n_frames != 1:
        raise ValueError(
            f"the tiled functions take one frame, got a time series of {frames.n_frames}; "
            f"select a frame first (e.g. image.isel(t=i))."
        )

    def data(given, prepared):
        # the user's own array, without the graph layers of the added "t" dim
        if given is None or isinstance(given, (np.ndarray, da.Array)):
            return given
        if isinstance(given, xr.DataArray):
            spatial = [d for d in prepared.dims if d != "t"]
            return given.data[0] if "t" in given.dims else given.transpose(*spatial).data
        return prepared.data[0] if "t" in prepared.dims else prepared.data

    mask_frame = frames.mask_frame(0)
    return (data(image1, frames.image1), data(image2, frames.image2), data(mask, mask_frame),
            frames.spacing)


def _check_tile_shape(tile_shape, frame_shape):
    tile_shape = tuple(int(t) for t in tile_shape)
    if len(tile_shape) != len(frame_shape) or any(t < 1 for t in tile_shape):
        raise ValueError(
            f"tile_shape {tile_shape} must give a positive tile edge (voxels) for each of the "
            f"frame's {len(frame_shape)} axes."
        )
    return tuple(min(t, n) for t, n in zip(tile_shape, frame_shape))


def _tiles(frame_shape, tile_shape):
    """Grid position and slices of every tile (edge tiles may be smaller)."""
    starts = [range(0, n, t) for n, t in zip(frame_shape, tile_shape)]
    for position, origin in zip(itertools.product(*(range(len(s)) for s in starts)),
                                itertools.product(*starts)):
        yield position, tuple(slice(o, min(o + t, n)) for o, t, n in zip(origin, tile_shape, frame_shape))


class _TileGraph(TaskLayer):
    """The tasks of one tiled computation, gathered into one graph layer.

    Tasks are read from the chunks of the input arrays: a region (tile or tile plus
    halo) is the list of the slices of the chunks that cover it, each slice its own
    small task, so only the region travels to the task that uses it.
    """

    def __init__(self, prefix: str, token: str, arrays: Sequence[da.Array]):
        super().__init__(prefix, token, arrays)
        self._pieces = 0

    def region(self, array: da.Array | None, index: tuple[slice, ...]):
        """``(piece keys, places, shape)`` of ``array[index]`` for :func:`_assemble`."""
        if array is None:
            return None
        per_axis = []
        for sl, sizes in zip(index, array.chunks):
            bounds = np.cumsum((0,) + tuple(sizes))
            first = int(np.searchsorted(bounds, sl.start, side="right")) - 1
            items = []
            for i in range(first, len(sizes)):
                if bounds[i] >= sl.stop:
                    break
                lo, hi = max(sl.start, int(bounds[i])), min(sl.stop, int(bounds[i + 1]))
                items.append((i, slice(lo - int(bounds[i]), hi - int(bounds[i])), int(sizes[i]),
                              (lo - sl.start, hi - sl.start)))
            per_axis.append(items)
        pieces, places = [], []
        for combination in itertools.product(*per_axis):
            chunk_key = (array.name, *(c[0] for c in combination))
            if all(c[1] == slice(0, c[2]) for c in combination):
                pieces.append(chunk_key)
            else:
                key = (f"{self.name}-piece", self._pieces)
                self._pieces += 1
                self.tasks[key] = (operator.getitem, chunk_key, tuple(c[1] for c in combination))
                pieces.append(key)
            places.append([c[3] for c in combination])
        return [pieces, np.array(places, dtype=np.int64), tuple(sl.stop - sl.start for sl in index)]


def _output(graph: HighLevelGraph, layer: str, name: str, task, shape, dtype) -> da.Array:
    """A one-chunk Dask array whose chunk is ``task`` on top of ``graph``'s ``layer``."""
    key = (name,) + (0,) * len(shape)
    return output_array(graph, layer, name, {key: task}, tuple((n,) for n in shape), dtype)


def _assemble(region) -> np.ndarray | None:
    """A region's array from its pieces (see :meth:`_TileGraph.region`)."""
    if region is None:
        return None
    pieces, places, shape = region
    if len(pieces) == 1:
        return np.asarray(pieces[0])
    out = np.empty(shape, dtype=np.asarray(pieces[0]).dtype)
    for piece, place in zip(pieces, places):
        out[tuple(slice(a, b) for a, b in place)] = piece
    return out


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


def _frame_sums(image1, image2, mask, dtype) -> da.Array:
    """[sum of image 1 in the mask, count, non-finite voxels of image 1, of image 2] (lazy)."""
    values1 = image1.astype(dtype)
    nonfinite1 = ~da.isfinite(values1)
    nonfinite2 = ~da.isfinite(image2.astype(dtype))
    if mask is None:
        sums = [values1.sum(dtype=np.float64), math.prod(image1.shape), nonfinite1.sum(), nonfinite2.sum()]
    else:
        inside = mask != 0
        sums = [da.where(inside, values1, 0).sum(dtype=np.float64), inside.sum(),
                (nonfinite1 & inside).sum(), (nonfinite2 & inside).sum()]
    return da.stack([da.asarray(s).astype(np.float64) for s in sums]).rechunk(-1)


# --------------------------------------------------------------------------- public


def tiled_correlograms(image1, image2, mask, spacing, max_distance: float, *,
                       tile_shape: Sequence[int] | None = None, mode: str = "full",
                       dtype="float32") -> dict[str, da.Array]:
    """Original and subtracted correlograms of one frame restricted to R, tile by tile.

    Two passes over the frame: the reductions (sum of image 1 in the mask, mask count,
    NaN/Inf check), then one task per tile correlating its masked image 1 (I1m and L)
    with its masked image 2 grown by the halo (one forward FFT of image 2 for both).
    The second pass reads the frame again and only once the first is done, so no
    chunk waits in memory between them. A tree reduction sums the partial correlograms.

    Parameters
    ----------
    image1, image2 : array-like
        One 2D ``(y, x)`` or 3D ``(z, y, x)`` frame each: Dask (never loaded whole),
        NumPy or xarray. Dask chunks should be no larger than a tile.
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
    image1, image2, mask = (as_dask(a, tile_shape) for a in (image1, image2, mask))

    sums = _frame_sums(image1, image2, mask, dtype)
    token = tokenize(image1, image2, mask, spacing, max_distance, tile_shape, mode, dtype)
    image1, image2, mask = read_again_after([image1, image2, mask], sums, seed=token)
    graph = _TileGraph("tiled-correlograms", token, [image1, image2, mask, sums])
    statistics = (f"{graph.name}-statistics",)
    graph.tasks[statistics] = (_frame_statistics, (sums.name, 0), float(np.prod(spacing)))

    partials = []
    for position, tile in _tiles(frame_shape, tile_shape):
        halo = tuple(slice(max(0, t.start - k), min(n, t.stop + k))
                     for t, k, n in zip(tile, max_shift, frame_shape))
        zero_halo = tuple((k - (t.start - h.start), k - (h.stop - t.stop))
                          for t, h, k in zip(tile, halo, max_shift))
        tile_in_region = tuple(slice(t.start - h.start, t.stop - h.start) for t, h in zip(tile, halo))
        key = (f"{graph.name}-tile", *position)
        graph.tasks[key] = (_tile_partials, graph.region(image1, tile), graph.region(image2, halo),
                            graph.region(mask, halo), tile_in_region, zero_halo, statistics,
                            max_shift, mode, dtype)
        partials.append(key)
    level = 0
    while len(partials) > 1 or level == 0:
        groups = [partials[i:i + SPLIT_EVERY] for i in range(0, len(partials), SPLIT_EVERY)]
        partials = [(f"{graph.name}-sum", level, i) for i in range(len(groups))]
        graph.tasks.update({key: (_sum_partials, group) for key, group in zip(partials, groups)})
        level += 1
    finished = (f"{graph.name}-finish",)
    crop = tuple(slice(k + lo, k + hi + 1) for k, lo, hi in zip(max_shift, shift_lo, shift_hi))
    graph.tasks[finished] = (_finish, partials[0], statistics, crop, dtype)

    hlg = graph.graph()
    ccf_shape = tuple(hi - lo + 1 for lo, hi in zip(shift_lo, shift_hi))
    names = [n for n, modes in (("original", ("full", "correlation")),
                                ("subtracted", ("full", "no_confidence"))) if mode in modes]
    out = {name: _output(hlg, graph.name, f"tiled-{name}-{token}", (operator.getitem, finished, i),
                         ccf_shape, dtype)
           for i, name in enumerate(names)}
    for i, name in enumerate(("mean", "mask_volume")):
        out[name] = _output(hlg, graph.name, f"tiled-{name}-{token}", (operator.getitem, statistics, i),
                            (), np.float64)
    return out


def _tile_contributions(image1_box, image2_box, mask_box, take, gauss, dtype) -> np.ndarray:
    """Both contribution images of one tile, stacked ``(2, *tile)``."""
    grid = np.ix_(*take)
    inside = _inside(_assemble(mask_box))
    inside = None if inside is None else inside[grid]
    image1_extended = _masked(_assemble(image1_box)[grid], inside, dtype)
    image2_extended = _masked(_assemble(image2_box)[grid], inside, dtype)
    return np.stack(contribution_tile(image1_extended, image2_extended, gauss)).astype(dtype, copy=False)


def _symmetric_kernel(gauss, shift_lo, dtype) -> np.ndarray:
    """The kernel padded with zeros to ``2K + 1`` per axis, zero shift at the centre."""
    gauss = np.asarray(gauss, dtype=dtype)
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
    at its border without repeating the edge voxel (``numpy.pad`` mode "reflect", the
    plugin's rule), exactly as the whole-frame engine
    (:func:`cccdask.kernels.contributions.contribution_images`).

    Parameters
    ----------
    image1, image2 : array-like
        One 2D or 3D frame each (Dask, NumPy or xarray); never loaded whole.
    gauss_correlogram : numpy.ndarray or dask.array.Array
        G, the Gaussian-modified (cropped) correlogram. A Dask array (e.g. from
        :func:`tiled_correlograms` and the fit) makes the frame's reads wait for it.
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
        ``dask.array.to_zarr``) writes chunk by chunk. Compute or store both together:
        one task per tile produces both.
    """
    dtype = np.dtype(dtype)
    # the contributions work in voxel shifts: a plain array is one frame at unit spacing
    # (without it, a 3D array draws the warning meant for a forgotten spacing)
    unit_spacing = None if isinstance(image1, xr.DataArray) else (1.0,) * np.ndim(image1)
    image1, image2, mask, _ = _one_frame(image1, image2, mask, unit_spacing)
    frame_shape = tuple(image1.shape)
    kernel_shape = tuple(np.shape(gauss_correlogram))
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
    if tile_shape is None:
        chunks = image1.chunksize if isinstance(image1, da.Array) else None
        tile_shape = default_tile_shape(frame_shape, max_shift, dtype=dtype, chunk_shape=chunks)
    tile_shape = _check_tile_shape(tile_shape, frame_shape)
    image1, image2, mask = (as_dask(a, tile_shape) for a in (image1, image2, mask))

    token = tokenize(image1, image2, mask, gauss_correlogram, shift_lo, tile_shape, dtype)
    lazy_kernel = isinstance(gauss_correlogram, da.Array)
    if lazy_kernel:
        kernel_array = gauss_correlogram.rechunk(kernel_shape)
        image1, image2, mask = read_again_after([image1, image2, mask], kernel_array, seed=token)
    graph = _TileGraph("tiled-contributions", token, [image1, image2, mask] + ([kernel_array] if lazy_kernel else []))
    name = graph.name
    kernel = (f"{name}-kernel",)
    source = (kernel_array.name,) + (0,) * len(kernel_shape) if lazy_kernel else np.asarray(gauss_correlogram)
    graph.tasks[kernel] = (_symmetric_kernel, source, shift_lo, dtype)
    chunks = [(2,)]
    for n, t in zip(frame_shape, tile_shape):
        chunks.append(tuple(min(t, n - o) for o in range(0, n, t)))
    for position, tile in _tiles(frame_shape, tile_shape):
        take = [mirror_indices(t.start - k, t.stop + k, n) for t, k, n in zip(tile, max_shift, frame_shape)]
        box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in take)
        take = tuple(i - b.start for i, b in zip(take, box))
        graph.tasks[(name, 0, *position)] = (
            _tile_contributions, graph.region(image1, box), graph.region(image2, box),
            graph.region(mask, box), take, kernel, dtype)
    stacked = da.Array(graph.graph(), name, tuple(chunks), dtype=dtype)
    return stacked[0], stacked[1]
