"""Preprocessing of frames larger than memory: shift, backgrounds, valid region, chunk by chunk.

The Dask layer of the tiled path (:mod:`cccdask.pipeline.tiled`) for the ``preprocess:``
section; mask generation is :mod:`cccdask.mask_tiled`. Every result equals the
whole-frame one (:mod:`cccdask.preprocess`):

- **chromatic shift**: ``dask_image.ndinterp.affine_transform`` with the identity matrix
  and the offset ``-shift``: each output chunk reads the input region it maps from (a
  1D diagonal matrix hits a dask-image bug that misplaces every chunk but the first:
  it takes ``numpy.dot`` of two vectors as the chunk's offset). The shift is
  a multiple of 2**-30 pixel (:data:`~cccdask.kernels.preprocess.SHIFT_STEP_PIXELS`),
  so every sample coordinate is exact and order 0 and 1 (linear, the default) are
  bit for bit the whole-frame values. Orders 2-5 need scipy's spline prefilter, a
  recursive filter along whole lines: ``dask_image.ndinterp.spline_filter`` grows each
  chunk by :func:`spline_depth` voxels, enough for the filter's decay to fall under
  float64 rounding: values agree to float32 rounding, and were bit for bit equal in
  the tests (a last-bit difference at a rare voxel remains possible);
- the **valid region** (voxels shifted in from outside are 0 and excluded) is the
  product of one 1D mask per axis;
- **background levels** are reductions over the chunks: ``constant`` as given;
  ``region_mean`` a float64 sum over the region (exact for integer images, to float64
  summation order otherwise); ``median`` exactly, through a histogram of the 8/16-bit
  integer values (:func:`cccdask.kernels.preprocess.median_from_counts`, one pass) or,
  for floating-point and 32/64-bit images, by rank selection
  (:func:`cccdask.tiled_ranks.ranked_values`, about four passes). The subtraction is
  element-wise on the same chunks.
"""

from __future__ import annotations

from typing import Sequence

import dask.array as da
import numpy as np

from cccdask.kernels.preprocess import box_to_slices, median_from_counts, shift_in_pixels
from cccdask.mask_tiled import HISTOGRAM_THRESHOLDS
from cccdask.tiled_ranks import default_compute, ranked_values, value_range

#: The largest pole of scipy's spline prefilter per order (its decay per voxel).
SPLINE_POLES = {2: 0.1715728752538099, 3: 0.2679491924311227, 4: 0.3613412259002202, 5: 0.4305753470999738}


def tiled_preprocess_blockers(settings: dict | None, image_dtypes: Sequence[np.dtype]) -> list[str]:
    """The preprocessing settings the tiled path cannot apply (empty: all can be)."""
    if settings is None or settings.get("mask") is None:
        return []
    method = settings["mask"]["method"]
    if method in HISTOGRAM_THRESHOLDS:
        return []
    return [f"preprocess.mask.method {method!r} (on tiles: one of {list(HISTOGRAM_THRESHOLDS)}, the thresholds "
            f"scikit-image computes from a histogram)"]


def spline_depth(order: int) -> int:
    """Voxels a chunk is grown by for the spline prefilter of ``order``: the pole's decay under 2**-60."""
    return int(np.ceil(-60 * np.log(2) / np.log(SPLINE_POLES[order])))


def tiled_shift(image: da.Array, shift: Sequence[float], *, spacing: Sequence[float], order: int = 1) -> da.Array:
    """:func:`cccdask.kernels.preprocess.apply_shift` chunk by chunk: ``out(x) = image(x - shift)``, float32.

    Parameters
    ----------
    image : dask.array.Array
        One frame, chunked.
    shift : sequence of float
        Physical units, ``(z,) y, x``.
    spacing : sequence of float
        Voxel size per axis (physical units).
    order : int
        Spline order (1 linear, 3 cubic).
    """
    from dask_image.ndinterp import affine_transform, spline_filter

    pixels = shift_in_pixels(shift, spacing)
    image = image.astype(np.float32)
    if not np.any(pixels):
        return image
    filtered = image
    if order > 1:
        depth = spline_depth(order)
        # map_overlap needs chunks at least as deep as the overlap
        grown = image.rechunk(tuple(max(c, min(depth, n)) for c, n in zip(image.chunksize, image.shape)))
        filtered = spline_filter(grown, order, output=np.float64, mode="constant", depth=depth).rechunk(image.chunks)
    shifted = affine_transform(filtered, np.eye(image.ndim), offset=-pixels, output_shape=image.shape,
                               output_chunks=image.chunks, order=int(order), mode="constant", cval=0.0,
                               prefilter=False)
    return shifted.astype(np.float32)


def tiled_valid_region(shape: Sequence[int], shift: Sequence[float], *, spacing: Sequence[float],
                       chunks) -> da.Array:
    """:func:`cccdask.kernels.preprocess.valid_region` as a chunked Dask array (one 1D mask per axis)."""
    from cccdask.kernels.preprocess import valid_region

    valid = None
    for axis, n in enumerate(shape):
        line = valid_region((n,), (shift[axis],), spacing=(spacing[axis],))
        line = da.from_array(line, chunks=(chunks[axis],)).reshape([-1 if a == axis else 1 for a in range(len(shape))])
        valid = line if valid is None else valid & line
    return valid


def background_level(image: da.Array, background, spacing: Sequence[float], region_mask: da.Array | None = None,
                     valid: da.Array | None = None, compute=default_compute):
    """A channel's background level (intensity units) as a lazy 0-d float64 Dask array (or a float).

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
    valid : dask.array.Array of bool, optional
        The voxels with data (after a chromatic shift); the others are left out.
    compute : callable
        For the median of a floating-point image (rank selection computes as it goes).
    """
    method = background.method
    if method == "none":
        return da.zeros((), dtype=np.float64)
    if method == "constant":
        return da.full((), float(background.value), dtype=np.float64)
    values = image
    selection = None if region_mask is None else region_mask != 0
    if valid is not None:
        selection = valid if selection is None else selection & valid
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
            return ranked_median(values, selection, compute)
        return _histogram_median(values, selection)
    raise ValueError(f"background method {method!r} is unknown; use 'none', 'constant', 'median' or 'region_mean'.")


def histogram_exact(dtype) -> bool:
    """Whether the median of an image of ``dtype`` is exact through a histogram (8/16-bit integers)."""
    dtype = np.dtype(dtype)
    return dtype.kind in "iub" and dtype.itemsize <= 2


def ranked_median(values: da.Array, selection: da.Array | None, compute=default_compute) -> float:
    """``numpy.median`` of the selected voxels by rank selection (NaN when a voxel is NaN or Inf)."""
    summary = np.asarray(compute([value_range(values, selection)])[0])
    count, nonfinite = int(summary[0]), int(summary[1])
    if nonfinite or count == 0:
        if count + nonfinite == 0:
            raise ValueError("background 'median': the region selects no voxel; check the box bounds or region mask.")
        return float("nan")
    middle = ranked_values(values, selection, [(count - 1) // 2, count // 2], summary, compute)
    # the mean of the two middle values as numpy.median takes it, in the frame's dtype
    return float(np.median(middle.astype(values.dtype)))


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
