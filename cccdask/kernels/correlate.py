"""Masked linear cross-correlation by real FFTs.

Convention: ``CC_raw(A, B)(s) = sum_m A(m + s) B(m)`` (no wrap-around). The forward
transform of image 2 is shared; full mode needs 3 forward and 2 inverse real FFTs,
each done axis by axis so that all-zero padding lines are skipped going forward and
shifts that are not reported are dropped going back.
The FFTs run with scipy.fft's thread setting (``scipy.fft.set_workers``), so callers
choose threads; nothing here starts threads of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np
import scipy.fft

from cccdask.frames import InvalidFrameError

MODES = ("full", "no_confidence", "correlation")


def padded_shape(frame_shape, shift_lo, shift_hi) -> tuple[int, ...]:
    """The smallest fast FFT shape that keeps shifts ``lo..hi`` free of wrap-around.

    A circular correlation of length P equals the linear one at shift s when no alias
    ``s +- P`` falls in ``-(N-1)..(N-1)``, i.e. ``P >= N + max(-lo, hi)``: ``N + N/2``
    for the frame-sized correlogram (the plugin pads to ``2N - 1``), ``N + R`` for
    shifts up to R.
    """
    return tuple(
        scipy.fft.next_fast_len(n + max(-lo, hi), real=True)
        for n, lo, hi in zip(frame_shape, shift_lo, shift_hi)
    )


def crop_shifts(circular: np.ndarray, shift_lo, shift_hi, axes=None) -> np.ndarray:
    """Shifts ``lo..hi`` of a circular correlogram, zero shift moved to index ``-lo``.

    Parameters
    ----------
    circular : numpy.ndarray
        Circular correlogram (shift s at index ``s mod P``) along ``axes``.
    shift_lo, shift_hi : sequence of int
        Shift range per cropped axis.
    axes : sequence of int, optional
        The axes to crop (default all, in order).

    Copies 2**len(axes) blocks (negative and non-negative shifts per axis) into a new
    array, cheaper than fancy indexing or repeated rolls.
    """
    axes = tuple(range(circular.ndim)) if axes is None else tuple(a % circular.ndim for a in axes)
    shape = list(circular.shape)
    for axis, lo, hi in zip(axes, shift_lo, shift_hi):
        shape[axis] = hi - lo + 1
    out = np.empty(shape, dtype=circular.dtype)
    for halves in product((0, 1), repeat=len(axes)):
        src, dst = [slice(None)] * circular.ndim, [slice(None)] * circular.ndim
        for half, axis, lo, hi in zip(halves, axes, shift_lo, shift_hi):
            p = circular.shape[axis]
            if half == 0:  # negative shifts, stored at the end of the circular axis
                src[axis], dst[axis] = slice(p + lo, p), slice(0, -lo)
            else:
                src[axis], dst[axis] = slice(0, hi + 1), slice(-lo, -lo + hi + 1)
        out[tuple(dst)] = circular[tuple(src)]
    return out


def padded_spectrum(image: np.ndarray, shape) -> np.ndarray:
    """Real FFT of ``image`` zero-padded to ``shape``, one axis at a time.

    The last axis first (real to complex), then the others from the last to the
    first: lines that are all padding are never transformed, and no padded copy of
    the whole image is made.
    """
    spectrum = scipy.fft.rfft(image, n=shape[-1], axis=-1)
    for axis in range(image.ndim - 2, -1, -1):
        spectrum = scipy.fft.fft(spectrum, n=shape[axis], axis=axis, overwrite_x=True)
    return spectrum


def inverse_leading_axes(spectrum: np.ndarray, shift_lo, shift_hi, slab: int = 64) -> np.ndarray:
    """Inverse complex FFTs of all but the last axis, each cropped to shifts ``lo..hi``.

    Slab by slab along the last (half-spectrum) axis, so besides the result only a
    slab-sized temporary exists. With :func:`inverse_last_axis` the inverse of
    :func:`padded_spectrum` keeping only the reported shifts: each axis is cropped as
    soon as it is transformed, so later transforms run on fewer lines and the full
    padded result never exists.
    """
    ndim = spectrum.ndim
    out_shape = tuple(h - lo + 1 for lo, h in zip(shift_lo[:-1], shift_hi[:-1])) + spectrum.shape[-1:]
    out = np.empty(out_shape, dtype=spectrum.dtype)
    for start in range(0, spectrum.shape[-1], slab):
        block = spectrum[..., start : start + slab]
        for axis in range(ndim - 1):
            block = scipy.fft.ifft(block, axis=axis, overwrite_x=axis > 0)
            block = crop_shifts(block, [shift_lo[axis]], [shift_hi[axis]], axes=[axis])
        out[..., start : start + slab] = block
    return out


def inverse_last_axis(partial: np.ndarray, n: int, lo: int, hi: int) -> np.ndarray:
    """Complex-to-real inverse FFT (length ``n``) of the last axis, cropped to ``lo..hi``."""
    real = scipy.fft.irfft(partial, n=n, axis=-1, overwrite_x=True)
    return crop_shifts(real, [lo], [hi], axes=[-1])


@dataclass
class MaskedImages:
    """One frame's images after masking, with the numbers the correlations need.

    Attributes
    ----------
    image1, image2 : numpy.ndarray
        The images converted to the working dtype, zero outside the mask.
    inside : numpy.ndarray or None
        bool mask (None = every voxel inside).
    mean : float
        Mean of image 1 inside the mask.
    mask_volume : float
        Voxels inside the mask times the voxel volume (physical units).
    """

    image1: np.ndarray
    image2: np.ndarray
    inside: np.ndarray | None
    mean: float
    mask_volume: float

    def centred_image1(self, in_place: bool = False) -> np.ndarray:
        """L = (image1 - mean) inside the mask, exactly 0 outside.

        ``in_place`` overwrites ``image1`` (saving a frame-sized buffer) when the
        masked image is not needed afterwards.
        """
        centred = self.image1 if in_place else self.image1.copy()
        centred -= centred.dtype.type(self.mean)
        if self.inside is not None:
            centred[~self.inside] = 0
        return centred


def mask_images(image1, image2, mask, spacing, dtype=np.float32) -> MaskedImages:
    """Convert to ``dtype``, zero outside the mask, and take the mean under the mask.

    Raises
    ------
    InvalidFrameError
        The mask has no voxel inside, or a pixel inside the mask is NaN or infinite.
    """
    dtype = np.dtype(dtype)
    i1 = np.array(image1, dtype=dtype, copy=True)
    i2 = np.array(image2, dtype=dtype, copy=True)
    inside = None
    if mask is not None:
        inside = np.asarray(mask) != 0
        outside = ~inside
        i1[outside] = 0
        i2[outside] = 0
        count = int(np.count_nonzero(inside))
    else:
        count = i1.size
    if count == 0:
        raise InvalidFrameError(
            "the mask has no voxel inside (all zero); pass a mask with non-zero voxels "
            "where the signal may be, or mask=None to use the whole frame."
        )
    for name, im in (("image1", i1), ("image2", i2)):
        if not np.isfinite(im).all():
            raise InvalidFrameError(
                f"{name} has NaN or infinite pixels inside the mask; replace them "
                f"(e.g. numpy.nan_to_num) or exclude them with the mask."
            )
    mean = float(i1.sum(dtype=np.float64) / count)
    return MaskedImages(i1, i2, inside, mean, count * float(np.prod(spacing)))


def masked_correlograms(masked: MaskedImages, shift_lo, shift_hi, mode: str = "full",
                        keep_images: bool = True):
    """Original and/or subtracted correlograms of one masked frame.

    Parameters
    ----------
    masked : MaskedImages
    shift_lo, shift_hi : tuple of int
        Shifts kept per axis (see :func:`cccdask.kernels.profile.shift_range`).
    mode : {"full", "no_confidence", "correlation"}
        full: O and S (3 forward + 2 inverse FFTs); no_confidence: S only;
        correlation: O only (2 forward + 1 inverse each).
    keep_images : bool
        Leave ``masked.image1``/``image2`` intact (the contribution images need them).
        False lets the correlation reuse their memory: afterwards they are invalid.

    Returns
    -------
    original, subtracted : numpy.ndarray or None
        ``CC_raw(I1m, I2m) / maskVolume`` and ``CC_raw(L, I2m) / maskVolume``, shape
        ``hi - lo + 1`` per axis; None where the mode does not produce it.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}.")
    shape = padded_shape(masked.image1.shape, shift_lo, shift_hi)
    # conj(F(I2m)) once, in place: every correlation then is one in-place multiply.
    spectrum2 = padded_spectrum(masked.image2, shape)
    np.conjugate(spectrum2, out=spectrum2)
    if not keep_images:
        masked.image2 = None

    def correlate_with_image2(image):
        spectrum = padded_spectrum(image, shape)
        spectrum *= spectrum2
        partial = inverse_leading_axes(spectrum, shift_lo, shift_hi)
        del spectrum  # before the last axis: the padded spectrum is the largest array
        out = inverse_last_axis(partial, shape[-1], shift_lo[-1], shift_hi[-1])
        out /= out.dtype.type(masked.mask_volume)
        return out

    original = correlate_with_image2(masked.image1) if mode in ("full", "correlation") else None
    subtracted = (
        correlate_with_image2(masked.centred_image1(in_place=not keep_images))
        if mode in ("full", "no_confidence")
        else None
    )
    return original, subtracted
