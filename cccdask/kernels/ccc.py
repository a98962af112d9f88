"""One frame of CCC: correlate, profile, fit, statistics, contributions."""

from __future__ import annotations

import numpy as np

from cccdask.kernels.components import COMPONENT_DIMS, component_outputs, weighted_correlogram
from cccdask.kernels.contributions import contribution_images, gaussian_modified, gaussian_support
from cccdask.kernels.correlate import MODES, mask_images, masked_correlograms
from cccdask.kernels.fit import GaussianFit, confidence, fit_gaussian, r_squared
from cccdask.kernels.profile import ProfileGeometry, radial_profile

SCALARS = ("mean", "sigma", "height", "confidence", "r_squared", "fit_ok")
COMPONENT_EXTRAS = ("profile_fit_component", "component_status", "rss", "bic", "aic", "n_selected")


def output_dims(name: str, spatial_dims: tuple[str, ...], components: bool = False) -> tuple[str, ...]:
    """Dims (without t) of the :func:`ccc_frame` output ``name`` for a frame with ``spatial_dims``.

    ``components``: the outputs of a fit of several Gaussians (:data:`COMPONENT_DIMS`).
    """
    if components and name in COMPONENT_DIMS:
        return COMPONENT_DIMS[name]
    if name.startswith("profile_"):
        return ("distance",)
    if name.startswith("contribution"):
        return tuple(spatial_dims)
    if name.startswith("ccf_"):
        return tuple(f"shift_{d}" for d in spatial_dims)
    return ()


def output_names(mode: str, contributions: bool = False, intermediates: bool = False,
                 components: bool = False) -> list[str]:
    """The names :func:`ccc_frame` returns for a mode and options, in a fixed order.

    ``components``: a fit of several Gaussians (adds :data:`COMPONENT_EXTRAS`).
    """
    names = []
    if mode in ("full", "correlation"):
        names.append("profile_original")
    if mode in ("full", "no_confidence"):
        names += ["profile_subtracted", "profile_fit"]
        names += [n for n in SCALARS if n != "confidence" or mode == "full"]
        if components:
            names += list(COMPONENT_EXTRAS)
    if contributions:
        names += ["contribution1", "contribution2"]
    if intermediates:
        if mode in ("full", "correlation"):
            names.append("ccf_original")
        if mode in ("full", "no_confidence"):
            names += ["ccf_subtracted", "ccf_gauss"]
    return names


def ccc_frame(
    image1: np.ndarray,
    image2: np.ndarray,
    mask: np.ndarray | None,
    geometry: ProfileGeometry,
    *,
    mode: str = "full",
    contributions: bool = False,
    intermediates: bool = False,
    dtype="float32",
    n_gaussians: tuple[int, bool] = (1, False),
) -> dict[str, np.ndarray]:
    """Colocalization by cross correlation of one frame.

    Parameters
    ----------
    image1, image2 : numpy.ndarray
        One 2D or 3D frame each, same shape.
    mask : numpy.ndarray or None
        Non-zero = inside; None = every voxel inside.
    geometry : ProfileGeometry
        From :func:`cccdask.kernels.profile.profile_geometry` for this frame shape.
    mode : {"full", "no_confidence", "correlation"}
    contributions : bool
        Also return the contribution images (need a fit: not in correlation mode).
        Zero images for a frame whose fit failed.
    intermediates : bool
        Also return the correlograms O, S and G.
    dtype : str
        Working precision of the correlation, "float32" or "float64".
    n_gaussians : (int, bool)
        Gaussians fitted, and whether to choose 1..n by BIC
        (:func:`cccdask.kernels.components.component_count`); (1, False) is the
        single-Gaussian fit.

    Returns
    -------
    dict of numpy.ndarray
        The keys of :func:`output_names`. Scalars are 0-d arrays; a failed fit gives
        NaN parameters, NaN statistics and ``fit_ok = False``.

    Raises
    ------
    InvalidFrameError
        Empty mask, or NaN/Inf pixels inside the mask.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}.")
    if contributions and mode == "correlation":
        raise ValueError("contribution images need a Gaussian fit; use mode 'full' or 'no_confidence'.")
    masked = mask_images(image1, image2, mask, geometry.spacing, dtype)
    original, subtracted = masked_correlograms(
        masked, geometry.shift_lo, geometry.shift_hi, mode, keep_images=contributions
    )
    out = analyse_correlograms(original, subtracted, geometry, mode=mode,
                               gauss=contributions or intermediates, intermediates=intermediates,
                               n_gaussians=n_gaussians)
    if contributions:
        gauss = out["ccf_gauss"] if intermediates else out.pop("ccf_gauss")
        if np.any(out["fit_ok"]):
            kernel, kernel_lo = gaussian_support(gauss, geometry.shift_lo)
            out["contribution1"], out["contribution2"] = contribution_images(
                masked.image1, masked.image2, kernel, kernel_lo
            )
        else:
            out["contribution1"] = np.zeros_like(masked.image1)
            out["contribution2"] = np.zeros_like(masked.image2)
    return out


def analyse_correlograms(
    original: np.ndarray | None,
    subtracted: np.ndarray | None,
    geometry: ProfileGeometry,
    *,
    mode: str = "full",
    gauss: bool = False,
    intermediates: bool = False,
    n_gaussians: tuple[int, bool] = (1, False),
) -> dict[str, np.ndarray]:
    """Profiles, Gaussian fit and statistics of one frame's correlograms.

    Shared by the whole-frame and the tiled paths (which differ only in how the
    correlograms are computed).

    Parameters
    ----------
    original, subtracted : numpy.ndarray or None
        O and S, shape ``geometry.ccf_shape`` (None where the mode has none).
    geometry : ProfileGeometry
    mode : {"full", "no_confidence", "correlation"}
    gauss : bool
        Also return ``ccf_gauss``, the Gaussian-modified correlogram G (zeros when
        the fit failed).
    intermediates : bool
        Also return ``ccf_original`` and ``ccf_subtracted``.
    n_gaussians : (int, bool)
        As :func:`ccc_frame`. Beyond one Gaussian the fit outputs come from
        :func:`cccdask.kernels.components.component_outputs` (per component, the sum
        model, the model-choice table) and G uses 2.3.0's weight.

    Returns
    -------
    dict of numpy.ndarray
    """
    keys = geometry.distances
    out: dict[str, np.ndarray] = {}
    if original is not None:
        out["profile_original"] = radial_profile(original, geometry)
    fit = GaussianFit.failed()
    if subtracted is not None:
        profile = radial_profile(subtracted, geometry)
        fit = fit_gaussian(keys, profile, pixel_size=geometry.spacing[-1], fiji_compat=geometry.fiji_compat)
        out["profile_subtracted"] = profile
        out["profile_fit"] = fit.curve(keys) if fit.ok else np.full(len(keys), np.nan)
        out["mean"], out["sigma"], out["height"] = fit.mean, fit.sigma, fit.height
        if mode == "full":
            out["confidence"] = confidence(keys, profile, out["profile_original"], fit)
        out["r_squared"] = r_squared(keys, profile, fit)
        out["fit_ok"] = fit.ok
        if n_gaussians != (1, False):
            out.update(component_outputs(keys, profile, out.get("profile_original") if mode == "full" else None,
                                         fit, *n_gaussians, pixel_size=geometry.spacing[-1]))
    sum_fit = out.pop("_fit", None)
    if intermediates and original is not None:
        out["ccf_original"] = original
    if intermediates and subtracted is not None:
        out["ccf_subtracted"] = subtracted
    if (gauss or intermediates) and subtracted is not None:
        if sum_fit is not None:
            out["ccf_gauss"] = weighted_correlogram(subtracted, geometry.distance_grid(), sum_fit)
        else:
            out["ccf_gauss"] = (
                gaussian_modified(subtracted, geometry.distance_grid(), fit) if fit.ok else np.zeros_like(subtracted)
            )
    return {k: np.asarray(v) for k, v in out.items()}
