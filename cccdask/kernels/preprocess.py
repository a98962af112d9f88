"""Per-frame preparation kernels: background, mask generation, chromatic shift.

These are the steps the Fiji manual has users do by hand before CCC (correct the
chromatic shift, make a mask, convert to 32-bit, subtract the background). Each
function takes one 2D ``(y, x)`` or 3D ``(z, y, x)`` frame and returns arrays or
numbers; none knows about Dask, files or the configuration.

Units: ``spacing`` is the physical voxel size per axis in ``(z,) y, x`` order; every
length given to these functions (sigma, shift, box bounds) is in the same physical
unit, every area/volume (``min_size``) in that unit to the power ``ndim``. With
``spacing`` all ones, physical units are pixels.
"""

from __future__ import annotations

import inspect
import math
from typing import Literal, Sequence

import numpy as np
from scipy import ndimage
from skimage import filters, morphology
from skimage.registration import phase_cross_correlation

BackgroundMethod = Literal["none", "constant", "median", "region_mean"]
ThresholdMethod = Literal["otsu", "li", "triangle", "isodata", "yen"]

#: scikit-image has no Huang (fuzzy-entropy) threshold. Li's minimum cross-entropy
#: method is the closest entropy-based one it offers; Yen's maximum-correlation
#: criterion is the other. We expose these and do not re-implement Huang.
THRESHOLD_FUNCTIONS = {
    "otsu": filters.threshold_otsu,
    "li": filters.threshold_li,
    "triangle": filters.threshold_triangle,
    "isodata": filters.threshold_isodata,
    "yen": filters.threshold_yen,
}


def _spacing_array(spacing: Sequence[float], ndim: int, name: str = "spacing") -> np.ndarray:
    sp = np.asarray(spacing, dtype=float).ravel()
    if sp.size != ndim or not np.all(np.isfinite(sp) & (sp > 0)):
        raise ValueError(
            f"{name} {tuple(sp)} must hold one positive physical voxel size per axis of a "
            f"{ndim}D frame, in (z,) y, x order."
        )
    return sp


def _check_frame(frame: np.ndarray, name: str = "frame") -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim not in (2, 3):
        raise ValueError(f"{name} has {frame.ndim} dims; give one 2D (y, x) or 3D (z, y, x) frame.")
    return frame


# --------------------------------------------------------------------------- background


def box_to_slices(
    bounds: Sequence[Sequence[float]], spacing: Sequence[float], shape: Sequence[int]
) -> tuple[slice, ...]:
    """Voxel slices of a box given in physical units.

    Parameters
    ----------
    bounds : sequence of (start, stop) pairs
        One pair per axis in ``(z,) y, x`` order, physical units, measured from the
        first voxel's origin (voxel ``i`` covers ``[i * s, (i + 1) * s)``). A voxel is
        inside when its centre ``(i + 0.5) * s`` lies in ``[start, stop)``.
    spacing : sequence of float
        Voxel size per axis (physical units).
    shape : sequence of int
        Frame shape; the box is clipped to it.

    Returns
    -------
    tuple of slice
    """
    shape = tuple(int(n) for n in shape)
    sp = _spacing_array(spacing, len(shape))
    if len(bounds) != len(shape):
        raise ValueError(
            f"box has {len(bounds)} (start, stop) pairs but the frame has {len(shape)} axes; "
            f"give one pair per axis in (z,) y, x order."
        )
    slices = []
    for (start, stop), s, n in zip(bounds, sp, shape):
        if not stop > start:
            raise ValueError(f"box bounds ({start}, {stop}) must have stop > start on every axis.")
        # first/last voxel whose centre (i + 0.5) s falls in [start, stop)
        lo = max(0, math.ceil(start / s - 0.5))
        hi = min(n, math.ceil(stop / s - 0.5))
        slices.append(slice(lo, hi))
    return tuple(slices)


def background_value(
    frame: np.ndarray,
    method: BackgroundMethod,
    *,
    value: float | None = None,
    region: Sequence[slice] | None = None,
    mask: np.ndarray | None = None,
) -> float:
    """The background level of one frame.

    Parameters
    ----------
    frame : numpy.ndarray
        One 2D or 3D frame (any real dtype).
    method : {"none", "constant", "median", "region_mean"}
        ``"none"``: 0. ``"constant"``: ``value``. ``"median"``: the median of the
        voxels (the manual's advice for 3D frames that are mostly background).
        ``"region_mean"``: the mean inside ``region`` and/or ``mask`` (a region devoid
        of signal, as the manual suggests).
    value : float, optional
        The constant, for ``"constant"`` (intensity units of ``frame``).
    region : tuple of slice, optional
        A box in voxel indices (see :func:`box_to_slices` for physical bounds).
    mask : numpy.ndarray, optional
        Non-zero voxels are the voxels to use. For ``"median"`` it restricts the
        median (e.g. to the voxels with data after a chromatic shift); for
        ``"region_mean"`` it is the region (intersected with ``region`` if both).

    Returns
    -------
    float
        The background, in the intensity units of ``frame``.
    """
    frame = _check_frame(frame)
    if method == "none":
        return 0.0
    if method == "constant":
        if value is None or not np.isfinite(value):
            raise ValueError("background method 'constant' needs a finite 'value'.")
        return float(value)
    if method not in ("median", "region_mean"):
        raise ValueError(
            f"background method {method!r} is unknown; use 'none', 'constant', 'median' or "
            f"'region_mean'."
        )
    if method == "region_mean" and region is None and mask is None:
        raise ValueError("background method 'region_mean' needs a box ('region') or a region mask.")
    values = frame
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != frame.shape:
            raise ValueError(f"background mask shape {mask.shape} differs from the frame's {frame.shape}.")
    if region is not None:
        region = tuple(region)
        if len(region) != frame.ndim or not all(isinstance(r, slice) for r in region):
            raise ValueError(f"region must be {frame.ndim} slices, one per axis (see box_to_slices).")
        values = values[region]  # a view: no copy of a large frame for a box
        mask = None if mask is None else mask[region]
    values = values.ravel() if mask is None else values[mask != 0]
    if values.size == 0:
        raise ValueError(
            f"background {method!r}: the region selects no voxel of the {frame.shape} frame; "
            f"check the box bounds (physical units) or the region mask."
        )
    if method == "median":
        return float(np.median(values))
    return float(np.mean(values, dtype=np.float64))


def subtract_background(frame: np.ndarray, value: float) -> np.ndarray:
    """``frame - value`` as float32 (negative values kept, as the manual asks).

    Parameters
    ----------
    frame : numpy.ndarray
        One frame, any real dtype.
    value : float
        Background level, intensity units of ``frame``.
    """
    out = np.array(frame, dtype=np.float32)  # always a copy: the input is never modified
    out -= np.float32(value)
    return out


# --------------------------------------------------------------------------- masks


def blur(frame: np.ndarray, *, spacing: Sequence[float], sigma: float) -> np.ndarray:
    """Gaussian blur with ``sigma`` in physical units (``sigma / spacing`` voxels per axis).

    scikit-image's ``filters.gaussian`` with ``mode="nearest"`` and ``truncate=4``;
    ``sigma == 0`` returns the frame as float unchanged.
    """
    frame = _check_frame(frame)
    sp = _spacing_array(spacing, frame.ndim)
    if not (np.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"mask sigma {sigma} must be >= 0 (physical units; 0 = no blur).")
    image = frame.astype(np.float32) if frame.dtype.kind != "f" else frame
    if sigma == 0:
        return image
    return filters.gaussian(image, sigma=tuple(sigma / sp), preserve_range=True)


def threshold_value(image: np.ndarray, method: ThresholdMethod) -> float:
    """Automatic threshold of ``image`` by scikit-image (see :data:`THRESHOLD_FUNCTIONS`)."""
    try:
        function = THRESHOLD_FUNCTIONS[method]
    except KeyError:
        raise ValueError(
            f"threshold method {method!r} is unknown; use one of {sorted(THRESHOLD_FUNCTIONS)} "
            f"(scikit-image has no Huang: 'li' is the closest entropy-based method)."
        ) from None
    return float(function(image))


def min_size_voxels(min_size: float, spacing: Sequence[float]) -> int:
    """Smallest voxel count an object of physical volume ``>= min_size`` has."""
    voxel = float(np.prod(spacing))
    return max(0, math.ceil(min_size / voxel - 1e-9))


def generate_mask(
    frame: np.ndarray,
    *,
    spacing: Sequence[float],
    sigma: float,
    method: ThresholdMethod,
    fill_holes: bool = True,
    min_size: float = 0.0,
) -> tuple[np.ndarray, float]:
    """Segment a frame: blur, automatic threshold, fill holes, drop small objects.

    Parameters
    ----------
    frame : numpy.ndarray
        One 2D or 3D frame.
    spacing : sequence of float
        Voxel size per axis (physical units).
    sigma : float
        Gaussian blur standard deviation, physical units (0 = no blur).
    method : {"otsu", "li", "triangle", "isodata", "yen"}
        scikit-image threshold; voxels strictly above it are inside.
    fill_holes : bool
        Fill enclosed holes (``scipy.ndimage.binary_fill_holes``, N-D: in 3D only
        cavities closed in 3D are filled).
    min_size : float
        Remove connected objects (face connectivity) whose volume is below this,
        physical units ``**ndim`` (area in 2D); 0 keeps all.

    Returns
    -------
    mask : numpy.ndarray of bool
    threshold : float
        The threshold, in the intensity units of the blurred frame.
    """
    frame = _check_frame(frame)
    sp = _spacing_array(spacing, frame.ndim)
    if not (np.isfinite(min_size) and min_size >= 0):
        raise ValueError(f"mask min_size {min_size} must be >= 0 (physical area/volume).")
    smoothed = blur(frame, spacing=sp, sigma=sigma)
    threshold = threshold_value(smoothed, method)
    mask = smoothed > threshold
    if fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    min_voxels = min_size_voxels(min_size, sp)
    if min_voxels > 1:
        mask = _remove_small_objects(mask, min_voxels)
    return mask, threshold


# scikit-image 0.26 replaced min_size (drop objects with fewer voxels) by max_size (drop
# objects with that many voxels or fewer); the package supports both.
_HAS_MAX_SIZE = "max_size" in inspect.signature(morphology.remove_small_objects).parameters


def _remove_small_objects(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """Drop face-connected objects with fewer than ``min_voxels`` voxels."""
    if _HAS_MAX_SIZE:
        return morphology.remove_small_objects(mask, max_size=min_voxels - 1)
    return morphology.remove_small_objects(mask, min_size=min_voxels)


# --------------------------------------------------------------------------- chromatic shift


def estimate_shift(
    reference1: np.ndarray,
    reference2: np.ndarray,
    *,
    spacing: Sequence[float],
    upsample_factor: int = 100,
) -> np.ndarray:
    """The translation that registers channel 2 onto channel 1, by phase correlation.

    Parameters
    ----------
    reference1, reference2 : numpy.ndarray
        The same scene (beads, a reference frame) seen in channel 1 and channel 2.
    spacing : sequence of float
        Voxel size per axis (physical units).
    upsample_factor : int
        Sub-pixel precision 1/``upsample_factor`` pixel
        (``skimage.registration.phase_cross_correlation``, unnormalised).

    Returns
    -------
    numpy.ndarray
        The shift, physical units, ``(z,) y, x``: ``apply_shift(reference2, shift)``
        lines up with ``reference1``.
    """
    reference1 = _check_frame(reference1, "reference1")
    reference2 = _check_frame(reference2, "reference2")
    if reference1.shape != reference2.shape:
        raise ValueError(
            f"reference images differ in shape ({reference1.shape} vs {reference2.shape}); "
            f"the two channels of the reference must cover the same voxels."
        )
    sp = _spacing_array(spacing, reference1.ndim)
    # Plain cross-correlation, not the default phase normalisation: whitening the
    # spectrum lets pixel noise dominate blurred beads (errors of 0.1-0.4 pixel on
    # synthetic beads with 1-5 % noise, against < 0.03 pixel without).
    shift_pixels, _, _ = phase_cross_correlation(
        reference1.astype(np.float32), reference2.astype(np.float32),
        upsample_factor=int(upsample_factor), normalization=None,
    )
    return np.asarray(shift_pixels, dtype=float) * sp


#: Shifts are applied in steps of 2**-30 pixel (about 1e-9 pixel, far below any
#: estimate's precision), so that scipy's sample coordinate ``i - shift`` is exact in
#: float64 for every voxel index below 2**23: a frame cut into tiles
#: (:mod:`cccdask.preprocess_tiled`) then gets bit for bit the values of the whole frame.
SHIFT_STEP_PIXELS = 2.0**-30


def shift_in_pixels(shift: Sequence[float], spacing: Sequence[float]) -> np.ndarray:
    """A physical shift divided by the spacing, axis by axis, rounded to :data:`SHIFT_STEP_PIXELS`."""
    sp = np.asarray(spacing, dtype=float)
    shift = np.asarray(shift, dtype=float).ravel()
    if shift.size != sp.size:
        raise ValueError(
            f"shift {tuple(shift)} has {shift.size} values for {sp.size} spatial axes; give one "
            f"per axis in (z,) y, x order (physical units)."
        )
    return np.round(shift / sp / SHIFT_STEP_PIXELS) * SHIFT_STEP_PIXELS


def apply_shift(
    frame: np.ndarray, shift: Sequence[float], *, spacing: Sequence[float], order: int = 1
) -> np.ndarray:
    """Translate a frame by ``shift`` (physical units, sub-pixel): ``out(x) = frame(x - shift)``.

    ``scipy.ndimage.shift`` with spline interpolation of ``order`` (1 = linear, 3 =
    cubic). Voxels that map outside the frame are filled with 0; they carry no data,
    so :func:`valid_region` gives them for exclusion from masks and backgrounds.

    Returns
    -------
    numpy.ndarray
        float32 (an integer image is not rounded back after interpolation).
    """
    frame = _check_frame(frame)
    sp = _spacing_array(spacing, frame.ndim)
    pixels = shift_in_pixels(shift, sp)
    image = frame.astype(np.float32, copy=False)
    if not np.any(pixels):
        return image.copy()
    return ndimage.shift(image, pixels, order=int(order), mode="constant", cval=0.0, output=np.float32)


def valid_region(shape: Sequence[int], shift: Sequence[float], *, spacing: Sequence[float]) -> np.ndarray:
    """Voxels of a frame shifted by :func:`apply_shift` that come from inside the frame.

    Output voxel ``i`` samples the input at ``i - shift/spacing``; it is valid when that
    position lies within ``[0, n - 1]`` on every axis (the samples' own extent, so the
    rule does not depend on the interpolation order).
    """
    shape = tuple(int(n) for n in shape)
    pixels = shift_in_pixels(shift, _spacing_array(spacing, len(shape)))
    valid = np.ones(shape, dtype=bool)
    for axis, (n, p) in enumerate(zip(shape, pixels)):
        source = np.arange(n) - p
        inside = (source >= -1e-9) & (source <= n - 1 + 1e-9)
        valid &= inside.reshape([-1 if a == axis else 1 for a in range(len(shape))])
    return valid


def median_from_counts(counts: np.ndarray, offset: int) -> float:
    """The median of integer values given by their histogram, as :func:`numpy.median` gives it.

    Parameters
    ----------
    counts : numpy.ndarray of int
        ``counts[i]``: how many voxels hold the value ``offset + i`` (intensity units).
    offset : int
        The value of the first bin.

    Returns
    -------
    float
        The middle value (odd count) or the mean of the two middle values (even count):
        exactly ``numpy.median`` of the voxels.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        raise ValueError("the median of no voxel is undefined; the region selects no voxel.")
    cumulative = np.cumsum(counts)
    low = int(np.searchsorted(cumulative, (total - 1) // 2, side="right")) + offset
    high = int(np.searchsorted(cumulative, total // 2, side="right")) + offset
    return float(np.mean(np.array([low, high], dtype=np.float64)))
