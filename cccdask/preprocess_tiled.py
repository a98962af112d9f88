"""Preprocessing of frames larger than memory: background levels from per-chunk reductions.

The Dask layer of the tiled path (:mod:`cccdask.pipeline.tiled`) for the ``preprocess:``
section: each channel's background level is a reduction over the frame's chunks, so
the frame is never loaded whole, and the subtraction is element-wise on the same
chunks. Levels equal the whole-frame ones (:func:`cccdask.kernels.preprocess.background_value`):
``constant`` as given; ``region_mean`` as a float64 sum over the region (exact for
integer images, to float64 summation order otherwise); ``median`` exactly through a
histogram of the 8/16-bit integer values (:func:`cccdask.kernels.preprocess.median_from_counts`).
A median of a floating-point or 32/64-bit integer frame is refused on this path (no
exact histogram of bounded size).
"""

from __future__ import annotations

from typing import Sequence

import dask.array as da
import numpy as np

from cccdask.kernels.preprocess import box_to_slices, median_from_counts

#: What the tiled path cannot do yet, by setting (checked before any work).
UNSUPPORTED = {
    "chromatic_shift": "preprocess.chromatic_shift",
    "mask": "preprocess.mask (mask generation)",
}


def tiled_preprocess_blockers(settings: dict | None, image_dtypes: Sequence[np.dtype]) -> list[str]:
    """The preprocessing settings the tiled path cannot apply (empty: all can be)."""
    if settings is None:
        return []
    blockers = [name for key, name in UNSUPPORTED.items() if settings.get(key) is not None]
    for channel, dtype in zip(("image1", "image2"), image_dtypes):
        if settings["background"][channel]["method"] == "median" and not histogram_exact(dtype):
            blockers.append(f"preprocess.background.{channel} median of a {np.dtype(dtype)} image "
                            f"(exact on frames larger than memory only for 8/16-bit integer images)")
    return blockers


def background_level(image: da.Array, background, spacing: Sequence[float], region_mask: da.Array | None = None):
    """A channel's background level (intensity units) as a lazy 0-d float64 Dask array.

    Parameters
    ----------
    image : dask.array.Array
        One frame, chunked (tiles).
    background : cccdask.preprocess.Background
        The channel's settings.
    spacing : sequence of float
        Voxel size per axis (physical units), for ``box``.
    region_mask : dask.array.Array, optional
        The frame's background region (non-zero = region), for ``region_mean``.
    """
    method = background.method
    if method == "none":
        return da.zeros((), dtype=np.float64)
    if method == "constant":
        return da.full((), float(background.value), dtype=np.float64)
    values = image
    selection = None if region_mask is None else region_mask != 0
    if background.box is not None:
        box = box_to_slices(background.box, spacing, image.shape)
        values = values[box]
        selection = None if selection is None else selection[box]
    if selection is None:
        selection = da.ones(values.shape, dtype=bool, chunks=values.chunks)
    if method == "region_mean":
        total = da.where(selection, values.astype(np.float64), 0.0).sum(dtype=np.float64)
        return total / selection.sum()
    if method == "median":
        if not histogram_exact(image.dtype):
            raise ValueError(f"the median background of a {image.dtype} frame larger than memory has no exact "
                             f"histogram; use method 'region_mean' or 'constant', or an 8/16-bit integer image.")
        return _histogram_median(values, selection)
    raise ValueError(f"background method {method!r} is unknown; use 'none', 'constant', 'median' or 'region_mean'.")


def histogram_exact(dtype) -> bool:
    """Whether the median of an image of ``dtype`` is exact through a histogram (8/16-bit integers)."""
    dtype = np.dtype(dtype)
    return dtype.kind in "iub" and dtype.itemsize <= 2


def _block_counts(codes: np.ndarray, bins: int) -> np.ndarray:
    return np.bincount(codes.ravel(), minlength=bins)[(None,) * codes.ndim]


def _median_of(counts: np.ndarray, offset: int) -> np.ndarray:
    return np.array(median_from_counts(counts[:-1], offset))


def _histogram_median(values: da.Array, selection: da.Array) -> da.Array:
    """The exact median: one histogram of the whole value range per chunk, summed over chunks.

    Voxels outside ``selection`` go to one extra last bin, dropped before the median.
    """
    dtype = np.dtype(values.dtype)
    offset = 0 if dtype.kind == "b" else int(np.iinfo(dtype).min)
    bins = 2 if dtype.kind == "b" else 2 ** (8 * dtype.itemsize)
    codes = da.where(selection, values.astype(np.int32) - offset, bins)
    ndim = codes.ndim
    per_chunk = codes.map_blocks(
        _block_counts, bins + 1, new_axis=ndim, dtype=np.int64,
        chunks=tuple((1,) * len(c) for c in codes.chunks) + ((bins + 1,),),
    )
    counts = per_chunk.sum(axis=tuple(range(ndim)), dtype=np.int64, split_every=8)
    return counts.map_blocks(_median_of, offset, drop_axis=0, dtype=np.float64, meta=np.array(0.0))


def subtract_levels(image: da.Array, level: float) -> da.Array:
    """``image - level`` in float32, chunk by chunk (as :func:`cccdask.kernels.preprocess.subtract_background`)."""
    return image.astype(np.float32) - np.float32(level)
