"""Contribution images: which signal of each image made the Gaussian peak.

``G(s) = S(s) exp(-(d(s) - |mu|)^2 / (2 sigma^2))`` is the subtracted correlogram
weighted by the fitted Gaussian (negatives kept). Then

* contribution1 = (I2m convolved with G) x I1m
* contribution2 = (I1m correlated with G) x I2m

with the images extended by mirroring at the frame border without repeating the edge
voxel (``numpy.pad`` mode "reflect"; the plugin's imglib2 ``Views.extendMirrorSingle``)
and zero padding nowhere else.
"""

from __future__ import annotations

import numpy as np

from cccdask.kernels.fit import GaussianFit


def gaussian_modified(subtracted: np.ndarray, distance_grid: np.ndarray, fit: GaussianFit) -> np.ndarray:
    """G: the subtracted correlogram times the fitted Gaussian of its distance.

    Parameters
    ----------
    subtracted : numpy.ndarray
        The subtracted correlogram S.
    distance_grid : numpy.ndarray
        Physical distance of each correlogram voxel (same shape).
    fit : GaussianFit
        A valid fit (its ``sigma`` and ``|mean|`` are used, not its height).
    """
    weight = np.exp(-0.5 * ((distance_grid - abs(fit.mean)) / fit.sigma) ** 2)
    return (subtracted * weight).astype(subtracted.dtype, copy=False)


def gaussian_support(gauss_ccf: np.ndarray, shift_lo):
    """G cropped to the bounding box of its non-zero values.

    The Gaussian weight underflows to exactly 0 a few tens of sigma from ``|mu|``
    (about 14 sigma in float32, 39 in float64), so the filters then cost a small
    kernel instead of a frame-sized one, with the same result: only exact zeros are
    dropped.

    Returns
    -------
    kernel : numpy.ndarray
        The cropped G (at least one voxel).
    kernel_lo : tuple of int
        Shift of its index 0 per axis.
    """
    crop, kernel_lo = [], []
    for axis, lo in enumerate(shift_lo):
        others = tuple(a for a in range(gauss_ccf.ndim) if a != axis)
        nonzero = np.flatnonzero(np.any(gauss_ccf != 0, axis=others))
        a, b = (int(nonzero[0]), int(nonzero[-1])) if len(nonzero) else (-lo, -lo)
        crop.append(slice(a, b + 1))
        kernel_lo.append(lo + a)
    return gauss_ccf[tuple(crop)], tuple(kernel_lo)


def filter_with_kernel(image: np.ndarray, kernel: np.ndarray, shift_lo, correlate: bool) -> np.ndarray:
    """Convolve (or correlate) ``image`` with a shift-indexed kernel, mirror-extended.

    Beyond the border the image is mirrored about its edge voxel, which is not
    repeated (``numpy.pad`` mode "reflect", periodic with period ``2 (N - 1)`` for any
    pad width), as the plugin's imglib2 FFT convolution extends its image.

    ``kernel[j]`` holds shift ``s = j + lo`` per axis. Convolution gives
    ``out(p) = sum_s K(s) image(p - s)``; correlation ``out(p) = sum_s K(s) image(p + s)``.
    The output has the image's shape.
    """
    pads = []
    for n_k, lo in zip(kernel.shape, shift_lo):
        hi = n_k - 1 + lo
        pads.append((-lo, hi) if correlate else (hi, -lo))
    extended = np.pad(image, pads, mode="reflect")
    taps = kernel[(slice(None, None, -1),) * kernel.ndim] if correlate else kernel
    from scipy import signal  # here: importing scipy.signal costs seconds, and most runs need no contributions

    return signal.fftconvolve(extended, taps, mode="valid").astype(image.dtype, copy=False)


def contribution_images(image1m: np.ndarray, image2m: np.ndarray, gauss_ccf: np.ndarray, shift_lo):
    """contribution1 = (I2m * G) x I1m, contribution2 = (I1m (star) G) x I2m.

    Parameters
    ----------
    image1m, image2m : numpy.ndarray
        The masked images (zero outside the mask).
    gauss_ccf : numpy.ndarray
        The Gaussian-modified correlogram G; ``shift_lo`` gives the shift of index 0.
    """
    contribution1 = filter_with_kernel(image2m, gauss_ccf, shift_lo, correlate=False) * image1m
    contribution2 = filter_with_kernel(image1m, gauss_ccf, shift_lo, correlate=True) * image2m
    return contribution1, contribution2
