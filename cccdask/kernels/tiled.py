"""Tile kernels for frames larger than memory: correlation and filtering bounded by K.

With shifts bounded by ``|s_d| <= K_d`` voxels, the linear cross-correlation of a frame
is the sum over tiles of the correlation of each tile of image 1 with the matching
tile of image 2 grown by a halo of K (zero outside the frame)::

    CC_raw(A, B)(s) = sum_m A(m + s) B(m) = sum_tiles sum_{m' in tile} A(m') B(m' - s)

and a convolution of the frame with a ``(2K + 1)^d`` kernel is, tile by tile, the
valid part of the convolution of the tile grown by K (overlap-save). Every function
here takes NumPy arrays of one tile and returns NumPy arrays; none knows about Dask.
The FFTs run with scipy.fft's thread setting (``scipy.fft.set_workers``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.fft


def fft_shape(extended_shape: Sequence[int]) -> tuple[int, ...]:
    """The fast real-FFT shape for a halo-extended tile: ``next_fast_len(n + 2K)`` per axis.

    A circular correlation (or convolution) of length ``P >= n + 2K`` has no
    wrap-around on the shifts ``|s| <= K`` a tile of ``n`` voxels needs.
    """
    return tuple(scipy.fft.next_fast_len(int(n), real=True) for n in extended_shape)


def _check_halo(tile_shape, extended_shape, max_shift) -> tuple[int, ...]:
    max_shift = tuple(int(k) for k in max_shift)
    if len(max_shift) != len(tile_shape) or len(extended_shape) != len(tile_shape):
        raise ValueError(
            f"max_shift {max_shift}, tile {tuple(tile_shape)} and extended tile "
            f"{tuple(extended_shape)} must have one entry per axis."
        )
    expected = tuple(n + 2 * k for n, k in zip(tile_shape, max_shift))
    if any(k < 0 for k in max_shift) or tuple(extended_shape) != expected:
        raise ValueError(
            f"the halo-extended tile has shape {tuple(extended_shape)}, expected {expected}: "
            f"the tile {tuple(tile_shape)} grown by max_shift {max_shift} voxels on each side."
        )
    return max_shift


def correlate_tile(a_tile, b_tile_with_halo: np.ndarray, max_shift: Sequence[int]):
    """Partial linear cross-correlation of one tile, for shifts ``|s_d| <= K_d``.

    ``P(s) = sum_{m in tile} A(m) B(m - s)``: summed over tiles that partition the
    frame this is ``CC_raw(A, B)(s) = sum_m A(m + s) B(m)`` restricted to
    ``|s_d| <= K_d``, exactly (no wrap-around).

    Parameters
    ----------
    a_tile : numpy.ndarray or sequence of numpy.ndarray
        The tile of the first operand, shape ``n``; or several such tiles (e.g. I1m
        and L), each correlated with the same ``b_tile_with_halo``, whose spectrum is
        then computed once.
    b_tile_with_halo : numpy.ndarray
        The second operand over the same tile grown by ``K_d`` voxels on each side of
        axis d (shape ``n + 2K``), zero where the halo lies outside the frame.
    max_shift : sequence of int
        ``K_d`` per axis (voxels).

    Returns
    -------
    numpy.ndarray or list of numpy.ndarray
        Shape ``2K + 1``, zero shift at index ``K``, dtype of the FFT (float32 for
        float32 input). A list, one per tile, when ``a_tile`` is a sequence.
    """
    several = not isinstance(a_tile, np.ndarray)
    a_tiles = list(a_tile) if several else [a_tile]
    b = np.asarray(b_tile_with_halo)
    for a in a_tiles:
        max_shift = _check_halo(a.shape, b.shape, max_shift)
    shape = fft_shape(b.shape)
    axes = tuple(range(b.ndim))
    spectrum_b = scipy.fft.rfftn(b, s=shape, axes=axes)
    # circular c(t) = sum_i a(i) b_ext(i + t) for t in 0..2K; then P(s) = c(K - s)
    keep = tuple(slice(2 * k, None, -1) for k in max_shift)
    out = []
    for a in a_tiles:
        spectrum = scipy.fft.rfftn(a, s=shape, axes=axes)
        np.conjugate(spectrum, out=spectrum)
        spectrum *= spectrum_b
        circular = scipy.fft.irfftn(spectrum, s=shape, axes=axes, overwrite_x=True)
        del spectrum
        out.append(np.ascontiguousarray(circular[keep]))
    return out if several else out[0]


def mirror_indices(start: int, stop: int, size: int) -> np.ndarray:
    """Frame indices of positions ``start..stop-1`` of the frame extended by mirroring.

    The extension mirrors about the edge voxel without repeating it (``numpy.pad``
    mode "reflect", imglib2's ``extendMirrorSingle``, the plugin's rule): for any pad
    width the ``2 * (size - 1)``-periodic mirror image of the frame (a one-voxel axis
    repeats its voxel).
    """
    positions = np.arange(start, stop)
    if size == 1:
        return np.zeros_like(positions)
    period = 2 * (size - 1)
    wrapped = positions % period
    return np.where(wrapped < size, wrapped, period - wrapped)


def contribution_tile(image1_extended: np.ndarray, image2_extended: np.ndarray,
                      gauss_correlogram: np.ndarray):
    """Contribution images over one tile by overlap-save.

    ``contribution1 = (I2m convolved with G) x I1m`` and
    ``contribution2 = (I1m correlated with G) x I2m`` on the tile, where convolution
    is ``sum_s G(s) I(m - s)`` and correlation ``sum_s G(s) I(m + s)``.

    Parameters
    ----------
    image1_extended, image2_extended : numpy.ndarray
        The masked images over the tile grown by ``K_d`` voxels on each side of axis d
        (shape ``n + 2K``), the halo taken from the frame and, beyond the frame
        border, from the frame mirrored (:func:`mirror_indices`).
    gauss_correlogram : numpy.ndarray
        The kernel G, shape ``2K + 1``, zero shift at index ``K``.

    Returns
    -------
    contribution1, contribution2 : numpy.ndarray
        Shape ``n`` (the tile without its halo), dtype of the FFT.
    """
    kernel = np.asarray(gauss_correlogram)
    if any(k % 2 == 0 for k in kernel.shape):
        raise ValueError(
            f"the kernel has shape {kernel.shape}; it must be 2K + 1 per axis (odd), zero "
            f"shift at index K. Pad an asymmetric correlogram with zeros first."
        )
    max_shift = tuple(k // 2 for k in kernel.shape)
    extended_shape = image1_extended.shape
    tile_shape = tuple(n - 2 * k for n, k in zip(extended_shape, max_shift))
    _check_halo(tile_shape, extended_shape, max_shift)
    _check_halo(tile_shape, image2_extended.shape, max_shift)
    shape = fft_shape(extended_shape)
    axes = tuple(range(kernel.ndim))
    spectrum_kernel = scipy.fft.rfftn(kernel.astype(image1_extended.dtype, copy=False), s=shape,
                                      axes=axes)
    centre = tuple(slice(k, k + n) for k, n in zip(max_shift, tile_shape))

    # convolution: sum_j g(j) ext(t - j) is valid (no wrap) for t >= 2K; tile i is t = i + 2K
    spectrum = scipy.fft.rfftn(image2_extended, s=shape, axes=axes)
    spectrum *= spectrum_kernel
    convolved = scipy.fft.irfftn(spectrum, s=shape, axes=axes, overwrite_x=True)
    contribution1 = convolved[tuple(slice(2 * k, 2 * k + n) for k, n in zip(max_shift, tile_shape))]
    contribution1 = contribution1 * image1_extended[centre]
    del convolved

    # correlation: sum_j g(j) ext(t + j) with conj(F(g)); tile i is t = i
    spectrum = scipy.fft.rfftn(image1_extended, s=shape, axes=axes)
    spectrum *= np.conjugate(spectrum_kernel, out=spectrum_kernel)
    correlated = scipy.fft.irfftn(spectrum, s=shape, axes=axes, overwrite_x=True)
    contribution2 = correlated[tuple(slice(0, n) for n in tile_shape)] * image2_extended[centre]
    return contribution1, contribution2


def tile_memory_bytes(tile_shape: Sequence[int], max_shift: Sequence[int], dtype="float32") -> int:
    """Estimated peak memory of one tile task (bytes).

    Five arrays of the padded FFT shape (the spectrum of image 2's tile, one working
    spectrum, the inverse transform, scipy's padded input copy and one spare; a real
    spectrum of P voxels takes as many bytes as a real array of P voxels) plus four
    arrays of the halo-extended shape (image 2 and the mask as read, their masked
    copy, image 1's tiles).
    """
    extended = tuple(int(n) + 2 * int(k) for n, k in zip(tile_shape, max_shift))
    itemsize = np.dtype(dtype).itemsize
    return int((5 * np.prod(fft_shape(extended), dtype=float) + 4 * np.prod(extended, dtype=float))
               * itemsize)
