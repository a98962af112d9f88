"""Preprocessing of frames larger than memory: shift, backgrounds, valid region, chunk by chunk.

:func:`preprocess_lazy` is :func:`cccdask.preprocess.preprocess_frame` for a frame held
as Dask arrays (in a notebook, and in the pipeline's tiled path,
:mod:`cccdask.pipeline.tiled`); mask generation is :mod:`cccdask.mask_tiled`. Every
result equals the whole-frame one (:mod:`cccdask.preprocess`):

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

from cccdask.kernels.preprocess import _spacing_array, box_to_slices, median_from_counts, shift_in_pixels
from cccdask.mask_tiled import HISTOGRAM_THRESHOLDS, tiled_generate_mask
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
                       chunks, frame: str = "") -> da.Array:
    """:func:`cccdask.kernels.preprocess.valid_region` as a chunked Dask array (one 1D mask per axis).

    ``frame`` (e.g. the shifted channel's Dask name) goes into the keys: frames of one
    shape and shift get keys of their own, so that a cluster still holding one frame's
    tasks does not meet the same key built (fused) otherwise for the next (a
    ``KeyError`` on the scheduler, dask/dask#9888).
    """
    from dask.base import tokenize

    from cccdask.kernels.preprocess import valid_region

    valid = None
    for axis, n in enumerate(shape):
        line = valid_region((n,), (shift[axis],), spacing=(spacing[axis],))
        name = f"valid-region-{tokenize(line, chunks[axis], axis, frame)}"
        line = da.from_array(line, chunks=(chunks[axis],), name=name)
        line = line.reshape([-1 if a == axis else 1 for a in range(len(shape))])
        valid = line if valid is None else valid & line
    return valid


def background_level(image: da.Array, background, spacing: Sequence[float], region_mask: da.Array | None = None,
                     valid: da.Array | None = None, compute=default_compute):
    """A channel's background level (intensity units): a lazy 0-d float64 Dask array, or a float.

    A float for ``none``, ``constant`` and a floating-point median (found by rank
    selection, which computes as it goes); a lazy reduction otherwise.

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
        return 0.0
    if method == "constant":
        return float(background.value)
    values = image
    selection = None if region_mask is None else region_mask != 0
    if valid is not None:
        selection = valid if selection is None else selection & valid
    if background.box is not None:
        box = box_to_slices(background.box, spacing, image.shape)
        values = values[box]
        selection = None if selection is None else selection[box]
    if method == "region_mean":  # (no array of ones for "every voxel": its keys would be the same for every frame)
        if selection is None:
            return values.astype(np.float64).sum(dtype=np.float64) / values.size
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


def _histogram_median(values: da.Array, selection: da.Array | None) -> da.Array:
    """The exact median: one histogram of the whole value range per chunk, summed over chunks.

    Voxels outside ``selection`` (None: every voxel is in) go to one extra last bin,
    dropped before the median.
    """
    dtype = np.dtype(values.dtype)
    offset = 0 if dtype.kind == "b" else int(np.iinfo(dtype).min)
    bins = 2 if dtype.kind == "b" else 2 ** (8 * dtype.itemsize)
    codes = values.astype(np.int32) - offset
    if selection is not None:
        codes = da.where(selection, codes, bins)
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


def preprocess_lazy(image1, image2, mask=None, *, settings, spacing: Sequence[float],
                    background_regions=(None, None), compute=None):
    """:func:`cccdask.preprocess.preprocess_frame` on a frame held as Dask arrays, never loaded whole.

    The manual's steps in its order, chunk by chunk: chromatic shift of channel 2
    (voxels shifted in from outside are 0 and leave the mask), mask generation,
    float32 conversion, background subtraction. The numbers that need the whole frame
    (mask threshold, which objects and holes cross chunk borders and their sizes,
    background levels) are computed first, each a reduction over the chunks run with
    ``compute``; the images and the mask come back lazy. The results equal
    :func:`~cccdask.preprocess.preprocess_frame` on the same frame loaded whole
    (tested bit for bit, for integer and float images).

    Parameters
    ----------
    image1, image2 : dask.array.Array
        One 2D ``(y, x)`` or 3D ``(z, y, x)`` frame per channel, any real dtype and
        chunking (NumPy arrays are wrapped by ``dask.array.asarray``). ``image2`` and the masks are
        rechunked like ``image1``: choose chunks that fit a worker thread several times.
    mask : dask.array.Array, optional
        The mask input (non-zero = inside). With ``mask.from_frame`` set, the shared
        mask (e.g. this function's mask for that frame, computed or stored).
    settings : cccdask.preprocess.Preprocessing or dict
        The ``preprocess:`` section of a run's YAML (a dict is validated), with any
        chromatic-shift reference already estimated
        (:meth:`~cccdask.preprocess.Preprocessing.with_estimated_shift`). Mask
        thresholds: ``otsu``, ``isodata`` or ``yen`` (computed from a histogram).
    spacing : sequence of float
        Voxel size per axis, ``(z,) y, x``, physical units (sigma, shift, box and
        ``min_size`` are in the same unit).
    background_regions : (dask.array.Array or None, dask.array.Array or None)
        This frame's background region masks for channel 1 and 2 (non-zero = region),
        needed exactly when ``background.imageN.region_mask`` is set.
    compute : callable, optional
        ``compute(list of Dask arrays) -> list of values`` for the whole-frame numbers.
        Default: Dask's current scheduler (a ``distributed.Client`` when one is
        active).

    Returns
    -------
    image1, image2 : dask.array.Array
        float32, background subtracted; image2 shifted (0 where no data). Lazy.
    mask : dask.array.Array of bool, or None
        The mask to analyse with (None: every voxel). Lazy. Unlike
        :func:`~cccdask.preprocess.preprocess_frame`, an empty mask is not checked here
        (it would take a pass over the frame): :func:`cccdask.ccc` raises
        :class:`~cccdask.frames.InvalidFrameError` when computing on it.
    record : dict
        ``background1``, ``background2`` (float, intensity units), ``shift`` (tuple,
        physical units, zeros when none), ``mask_threshold`` (float, intensity units of
        the blurred source; NaN when no mask was generated).

    Notes
    -----
    On a ``distributed`` cluster, release the futures of an earlier call's outputs
    (``del``) before calling again on the same frame: the graph's keys are the same, and a
    key the scheduler still knows, built (fused) otherwise, can fail the computation
    (dask/dask#9888). Different frames get different keys.

    Raises
    ------
    ValueError
        Settings that cannot be applied chunk by chunk (a ``li`` or ``triangle``
        threshold), or that do not fit the frame (shapes, spacing, shift length,
        missing region masks or shared mask).
    """
    from cccdask.preprocess import Preprocessing, _shift_of

    settings = settings if isinstance(settings, Preprocessing) else Preprocessing.model_validate(settings)
    image1, image2 = da.asarray(image1), da.asarray(image2)
    if image1.shape != image2.shape or image1.ndim not in (2, 3):
        raise ValueError(f"image1 {image1.shape} and image2 {image2.shape} must be one 2D (y, x) or 3D (z, y, x) "
                         f"frame each, of the same shape.")
    spacing = tuple(float(s) for s in _spacing_array(spacing, image1.ndim))
    blockers = tiled_preprocess_blockers(settings.model_dump(), (image1.dtype, image2.dtype))
    if blockers:
        raise ValueError(f"preprocess_lazy cannot apply {'; '.join(blockers)} to a frame in chunks: change it, or "
                         f"load the frame into memory and use cccdask.preprocess.preprocess_frame.")
    compute = compute or default_compute

    def like_image1(array, name):
        if array is None:
            return None
        array = da.asarray(array)
        if array.shape != image1.shape:
            raise ValueError(f"{name} {array.shape} must have the frame's shape {image1.shape}.")
        return array.rechunk(image1.chunks)

    image2, mask = like_image1(image2, "image2"), like_image1(mask, "mask")
    regions = [like_image1(region, f"background_regions[{k}]") for k, region in enumerate(background_regions)]

    shift = _shift_of(settings, image1.ndim)
    valid = None
    if shift is not None:
        image2 = tiled_shift(image2, shift, spacing=spacing, order=settings.chromatic_shift.order)
        valid = tiled_valid_region(image2.shape, shift, spacing=spacing, chunks=image2.chunks, frame=image2.name)
    threshold = float("nan")
    generation = settings.mask
    if generation is not None and generation.from_frame is None:
        source = {"image1": image1, "image2": image2, "mask": mask}[generation.source]
        if source is None:
            raise ValueError("mask.source is 'mask' but no mask input was given to segment.")
        generated, threshold = tiled_generate_mask(
            source, spacing=spacing, sigma=generation.sigma, method=generation.method,
            fill_holes=generation.fill_holes, min_size=generation.min_size, compute=compute)
        mask = generated & (mask != 0) if generation.source != "mask" and mask is not None else generated
    elif generation is not None and mask is None:
        raise ValueError(f"mask.from_frame is {generation.from_frame}: generate the shared mask once (this "
                         f"function on that frame with from_frame unset) and pass it as 'mask' for every frame.")
    if valid is not None:
        mask = valid if mask is None else (mask != 0) & valid
    elif mask is not None and mask.dtype != bool:
        mask = mask != 0

    levels = []
    for channel, (image, background, region) in enumerate(
            zip((image1, image2), (settings.background.image1, settings.background.image2), regions), start=1):
        if background.region_mask is not None and region is None:
            raise ValueError(f"background.image{channel}.region_mask is set: load {background.region_mask} and "
                             f"pass this frame's region as background_regions[{channel - 1}].")
        levels.append(background_level(image, background, spacing, region, valid=valid if channel == 2 else None,
                                       compute=compute))
    lazy = [k for k, level in enumerate(levels) if isinstance(level, da.Array)]
    for k, value in zip(lazy, compute([levels[k] for k in lazy]) if lazy else []):
        levels[k] = value
    levels = [float(level) for level in levels]
    record = {
        "background1": levels[0],
        "background2": levels[1],
        "shift": tuple(float(s) for s in (np.zeros(image1.ndim) if shift is None else shift)),
        "mask_threshold": float(threshold),
    }
    return subtract_levels(image1, levels[0]), subtract_levels(image2, levels[1]), mask, record
