"""``cccdask.ccc``: Colocalization by Cross Correlation on NumPy, Dask or xarray inputs."""

from __future__ import annotations

from typing import Any, Sequence

import dask
import dask.array as da
import numpy as np
import xarray as xr

from cccdask.frames import Frames, frame_time_coords, prepare_inputs
from cccdask.kernels.ccc import analyse_correlograms, ccc_frame, output_dims, output_names
from cccdask.kernels.components import (
    COMPONENT_DESCRIPTIONS,
    MAX_GAUSSIANS,
    STATUS_ATTRS,
    component_count,
)
from cccdask.kernels.correlate import MODES
from cccdask.kernels.profile import ProfileGeometry, profile_geometry
from cccdask.tile_memory import whole_frame_fits, worker_memory_budget
from cccdask.tiled import tiled_contributions, tiled_correlograms

_DESCRIPTIONS = {
    "profile_original": "radial profile of the original cross-correlation O",
    "profile_subtracted": "radial profile of the subtracted cross-correlation S (low-frequency part removed)",
    "profile_fit": "Gaussian fit to profile_subtracted, evaluated with |mean|",
    "mean": "mean distance of the correlation (Gaussian centre mu)",
    "sigma": "standard deviation of the correlation distance (Gaussian sigma)",
    "height": "fitted Gaussian height (normalised to the mask volume)",
    "confidence": "sum of S over sum of O, profile keys strictly within mean +- 3 sigma",
    "r_squared": "R^2 of the fit over keys in [mean - 3 sigma, mean + 3 sigma)",
    "fit_ok": "whether a valid Gaussian fit was found (False: parameters and statistics are NaN)",
    "contribution1": "signal of image 1 contributing to the Gaussian fit",
    "contribution2": "signal of image 2 contributing to the Gaussian fit",
    "ccf_original": "original cross-correlation O = CC(I1m, I2m) / maskVolume",
    "ccf_subtracted": "subtracted cross-correlation S = CC(L, I2m) / maskVolume",
    "ccf_gauss": "Gaussian-modified cross-correlation G = S x Gaussian(distance)",
}
_LENGTH_UNITS = {"mean", "sigma"}


def variable_attrs(name: str, units: str, ndim: int | None = None, components: bool = False) -> dict[str, str]:
    """Attributes of a CCC output variable: its description and units.

    Lengths (mean, sigma) are in ``units``; the profiles and correlograms, sums of
    intensity products over the mask volume, in ``intensity^2 / units^ndim`` (given
    ``ndim``, the frame's dimensionality); confidence and R squared are dimensionless.
    ``components``: the variable comes from a fit of several Gaussians.
    """
    descriptions = {**_DESCRIPTIONS, **COMPONENT_DESCRIPTIONS} if components else _DESCRIPTIONS
    attrs = {"description": descriptions[name]} if name in descriptions else {}
    if name in _LENGTH_UNITS:
        attrs["units"] = units
    elif name.startswith(("profile_", "ccf_")) and ndim is not None:
        attrs["units"] = f"intensity^2 / {units}^{ndim}"
    elif name in ("confidence", "r_squared"):
        attrs["units"] = "1"
    if components and name == "component_status":
        attrs.update(STATUS_ATTRS)
    return attrs


def _output_layout(name: str, frames: Frames, geometry: ProfileGeometry, dtype,
                   n_components: int = 0) -> tuple[tuple[str, ...], tuple[int, ...], np.dtype]:
    """Dims (without t), shape and dtype of one per-frame output (``n_components`` > 0: several Gaussians)."""
    dims = output_dims(name, frames.spatial_dims, components=n_components > 0)
    sizes = {"component": n_components, "n_components": n_components, "distance": len(geometry.distances)}
    if n_components and all(d in sizes for d in dims):
        kinds = {"fit_ok": bool, "component_status": np.int8, "n_selected": np.int64}
        return dims, tuple(sizes[d] for d in dims), np.dtype(kinds.get(name, np.float64))
    if name.startswith("profile_"):
        return dims, (len(geometry.distances),), np.dtype(np.float64)
    if name == "fit_ok":
        return dims, (), np.dtype(bool)
    if name.startswith("contribution"):
        return dims, frames.frame_shape, np.dtype(dtype)
    if name.startswith("ccf_"):
        return dims, geometry.ccf_shape, np.dtype(dtype)
    return dims, (), np.dtype(np.float64)


def best_frame(values: np.ndarray, mode: str) -> int:
    """The plugin's best frame: highest confidence, or smallest sigma without confidence.

    NaN values (failed fits) never win; ties keep the earliest frame; -1 when no frame
    has a value.
    """
    values = np.asarray(values, dtype=float)
    if not np.isfinite(values).any():
        return -1
    score = values if mode == "full" else -values
    return int(np.nanargmax(np.where(np.isfinite(score), score, -np.inf)))


def _best_frame_block(values: np.ndarray, mode: str) -> np.ndarray:
    return np.asarray(best_frame(values, mode), dtype=np.int64)


def _delayed_frames(frames: Frames):
    """One (image1, image2, mask) tuple of Delayed objects per frame.

    Each input is rechunked to whole frames (a no-op for per-frame chunks) and split
    without graph optimisation: calling Delayed functions on Dask arrays would
    optimise (and rename) their graphs once per frame.
    """

    def per_frame(array: xr.DataArray):
        data = array.data if isinstance(array.data, da.Array) else da.from_array(array.data, chunks=-1)
        frame_chunks = {0: 1, **{axis: -1 for axis in range(1, data.ndim)}}
        return list(data.rechunk(frame_chunks).to_delayed(optimize_graph=False).ravel())

    image1, image2 = per_frame(frames.image1), per_frame(frames.image2)
    if frames.mask is None:
        masks = [None] * frames.n_frames
    elif "t" in frames.mask.dims:
        masks = per_frame(frames.mask)
    else:
        masks = per_frame(frames.mask.expand_dims("t")) * frames.n_frames
    squeeze = dask.delayed(_squeeze_frame, pure=True)
    return [
        (squeeze(a), squeeze(b), None if m is None else squeeze(m))
        for a, b, m in zip(image1, image2, masks)
    ]


def _squeeze_frame(block: np.ndarray) -> np.ndarray:
    return block[0]


def _tiled_frame(frames: Frames, t: int, geometry: ProfileGeometry, *, mode, contributions, intermediates,
                 dtype, tile_shape, n_gaussians) -> dict:
    """One frame by tiles (issue: frames larger than memory); results as Dask arrays/Delayed."""
    image1, image2, mask = _frame_arrays(frames, t)
    correlograms = tiled_correlograms(image1, image2, mask, frames.spacing, geometry.max_distance,
                                      tile_shape=tile_shape, mode=mode, dtype=dtype)

    def as_delayed(name):
        array = correlograms.get(name)
        return None if array is None else array.to_delayed(optimize_graph=False).ravel()[0]

    analysis = dask.delayed(analyse_correlograms, pure=True, nout=None)(
        as_delayed("original"), as_delayed("subtracted"), geometry,
        mode=mode, gauss=contributions or intermediates, intermediates=False, n_gaussians=n_gaussians,
    )
    result = {name: analysis[name] for name in output_names(mode, components=n_gaussians != (1, False))}
    if intermediates:
        result.update({f"ccf_{name}": array for name, array in correlograms.items()
                       if name in ("original", "subtracted")})
        result["ccf_gauss"] = analysis["ccf_gauss"]
    if contributions:
        gauss = da.from_delayed(analysis["ccf_gauss"], shape=geometry.ccf_shape, dtype=np.dtype(dtype))
        result["contribution1"], result["contribution2"] = tiled_contributions(
            image1, image2, gauss, mask=mask, shift_lo=geometry.shift_lo, tile_shape=tile_shape, dtype=dtype
        )
    return result


def _frame_arrays(frames: Frames, index: int):
    m = frames.mask_frame(index)
    return (
        frames.image1.data[index],
        frames.image2.data[index],
        None if m is None else m.data,
    )


def fft_threads(requested: int | None = None) -> int:
    """Threads for one frame's FFTs: ``requested``, else 1 inside a Dask worker, else all cores.

    Inside a worker the cluster already runs one task per thread; outside (a notebook,
    a script) a single frame uses every core the process may run on.
    """
    if requested is not None:
        if int(requested) < 1:
            raise ValueError(f"fft_workers must be a positive number of threads, not {requested!r}.")
        return int(requested)
    try:
        from distributed import get_worker

        get_worker()
        return 1
    except (ImportError, ValueError):
        pass
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def ccc(
    image1: Any,
    image2: Any,
    mask: Any = None,
    *,
    mode: str = "full",
    spacing: float | Sequence[float] | None = None,
    max_distance: float | None = None,
    contributions: bool = False,
    intermediates: bool = False,
    fiji_compat: bool = False,
    dtype: str = "float32",
    memory_budget: float | None = None,
    tile_shape: Sequence[int] | None = None,
    n_gaussians: int | str = 1,
    max_gaussians: int = MAX_GAUSSIANS,
    fft_workers: int | None = None,
) -> xr.Dataset:
    """Colocalization by Cross Correlation of two channels, frame by frame.

    Parameters
    ----------
    image1, image2 : numpy.ndarray, dask.array.Array or xarray.DataArray
        A plain array with 2 or 3 dims is one frame ``(y, x)`` / ``(z, y, x)``. A
        DataArray names its dims from ``t, z, y, x``; a ``t`` dim makes a time series.
    mask : array-like, optional
        None (every voxel inside), one frame shared by all frames, or one per frame.
        Non-zero = inside.
    mode : {"full", "no_confidence", "correlation"}
        The plugin's three commands: CCC, CCC - No confidence, Just Cross Correlation.
    spacing : float or sequence of float, optional
        Physical voxel size per spatial axis in ``(z,) y, x`` order. Default: from the
        DataArray's coordinates, else 1 (distances in pixels).
    max_distance : float, optional
        Profile, fit and correlograms only out to this distance (units of spacing).
        None: out to the frame's corner, as the plugin does.
    contributions : bool
        Add the contribution images ``contribution1``/``contribution2``.
    intermediates : bool
        Add the correlograms ``ccf_original``, ``ccf_subtracted``, ``ccf_gauss``.
    fiji_compat : bool
        Reproduce the Fiji plugin 2.2.3's numbers: distances from ``(N - 1) / 2`` (half
        a voxel off on every even axis), one profile key per distinct float64 distance
        of the plugin's expression, Commons Math's starting guess and Levenberg-Marquardt
        (MINPACK) with its iteration limits, the plugin's retry windows and retry
        conditions (:func:`cccdask.kernels.fit.fit_gaussian`). Default: distances from
        the true zero shift, equal distances merged, cccdask's own guess and fit.
    dtype : {"float32", "float64"}
        Working precision of the correlations.
    memory_budget : float, optional
        Bytes one frame's whole-frame FFTs may use. A Dask-backed frame with
        ``max_distance`` whose FFTs would exceed it is correlated tile by tile
        (:mod:`cccdask.tiled`; never loaded whole; same numbers to float32 rounding).
        Default: half a worker's memory limit per thread
        (:func:`cccdask.tile_memory.worker_memory_budget`).
    tile_shape : sequence of int, optional
        Tile edge per axis (voxels) for the tiled path; default from the budget.
    n_gaussians : int or "auto"
        Gaussians fitted to the subtracted profile. 1 (default): the single fit
        described above, unchanged. n >= 2: a joint fit of a sum of n Gaussians
        (:mod:`cccdask.kernels.multifit`); "auto": 1..``max_gaussians`` fitted, the
        one with the smallest BIC among those whose components are all supported
        is reported. Then ``mean``, ``sigma``, ``height``, ``confidence``, ``fit_ok``
        and ``component_status`` run over a ``component`` dim (sorted by mean, failed
        components last with NaN), ``profile_fit`` is the sum model and
        ``profile_fit_component`` each Gaussian, ``rss``/``bic``/``aic`` run over
        ``n_components`` (every n tried), ``n_selected`` says which was reported;
        ``r_squared`` is that of the sum over component 1's range, and the best
        frame uses component 1's confidence.
    max_gaussians : int
        Largest number of Gaussians tried by ``n_gaussians="auto"``.
    fft_workers : int, optional
        Threads for each frame's FFTs (``scipy.fft`` workers) on in-memory (NumPy)
        inputs. Default: every core the process may use, or 1 inside a Dask worker
        (:func:`fft_threads`). Dask-backed inputs run one thread per task.

    Returns
    -------
    xarray.Dataset
        Coordinate ``distance`` (attrs ``units``) and, for a time series, ``t``.
        Per mode: ``profile_original``, ``profile_subtracted``, ``profile_fit`` over
        ``(t,) distance``; ``mean``, ``sigma``, ``height``, ``confidence``,
        ``r_squared``, ``fit_ok`` over ``t`` (scalars for one frame); contribution
        images over the image dims; correlograms over ``shift_*`` dims with physical
        coordinates. A failed fit is ``fit_ok = False`` with NaN parameters. A time
        series also has ``best_frame`` (0-d variable; -1 if no frame was fitted), and
        for NumPy inputs ``attrs["best_frame"]``. Lazy (one task per frame, each
        frame's FFTs run once) when any input is Dask-backed.

    Raises
    ------
    ValueError
        Mismatched shapes, frames that are not 2D/3D, non-numeric dtypes, non-positive
        spacing, an unknown mode or dtype, contributions in correlation mode; and, for
        NumPy inputs, an empty mask or NaN/Inf pixels inside it
        (:class:`cccdask.frames.InvalidFrameError`; for Dask inputs raised at compute).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}.")
    if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be 'float32' or 'float64', not {dtype!r}.")
    if max_distance is not None and not (np.isfinite(max_distance) and max_distance > 0):
        raise ValueError(f"max_distance must be a positive distance in units of spacing, not {max_distance!r}.")
    if contributions and mode == "correlation":
        raise ValueError("contribution images need the Gaussian fit; use mode 'full' or 'no_confidence'.")
    n_components, auto = component_count(n_gaussians, max_gaussians)
    several = (n_components, auto) != (1, False)
    if several and mode == "correlation":
        raise ValueError(f"n_gaussians needs the Gaussian fit; use mode 'full' or 'no_confidence', not {mode!r}.")
    threads = fft_threads(fft_workers)
    frames = prepare_inputs(image1, image2, mask, spacing)
    geometry = profile_geometry(frames.frame_shape, frames.spacing, max_distance, fiji_compat)
    names = output_names(mode, contributions, intermediates, components=several)
    options = dict(mode=mode, contributions=contributions, intermediates=intermediates, dtype=dtype,
                   n_gaussians=(n_components, auto))
    layout = {name: _output_layout(name, frames, geometry, dtype, n_components if several else 0) for name in names}

    per_frame = {name: [] for name in names}
    if frames.lazy:
        tiled = max_distance is not None and not whole_frame_fits(
            frames.frame_shape, max_distance, frames.spacing,
            worker_memory_budget() if memory_budget is None else memory_budget, dtype,
        )
        for t, arrays in enumerate(_delayed_frames(frames)):
            if tiled:
                result = _tiled_frame(frames, t, geometry, tile_shape=tile_shape, **options)
            else:
                result = dask.delayed(ccc_frame, pure=True, nout=None)(*arrays, geometry, **options)
            for name in names:
                _, shape, dt = layout[name]
                value = result[name]
                per_frame[name].append(
                    value if isinstance(value, da.Array) else da.from_delayed(value, shape=shape, dtype=dt)
                )
        stack = da.stack
    else:
        import scipy.fft

        with scipy.fft.set_workers(threads):
            for t in range(frames.n_frames):
                arrays = [None if a is None else np.asarray(a) for a in _frame_arrays(frames, t)]
                result = ccc_frame(*arrays, geometry, **options)
                for name in names:
                    per_frame[name].append(result[name])
        stack = np.stack

    data_vars = {}
    for name in names:
        dims, _, dt = layout[name]
        data_vars[name] = (("t",) + dims, stack(per_frame[name]).astype(dt, copy=False),
                           variable_attrs(name, frames.units, len(frames.spatial_dims), several))

    coords = {"distance": ("distance", geometry.distances, {"units": frames.units, "long_name": "distance"})}
    if several:
        numbers = np.arange(1, n_components + 1)
        coords["component"] = ("component", numbers, {"long_name": "Gaussian component, by increasing mean"})
        coords["n_components"] = ("n_components", numbers, {"long_name": "number of Gaussians fitted"})
    coords.update(frame_time_coords(frames))
    for dim in frames.spatial_dims:
        if any(n.startswith("contribution") for n in names) and dim in frames.image1.coords:
            coords[dim] = frames.image1.coords[dim]
    for dim, values in zip(frames.spatial_dims, geometry.shift_coords):
        if any(n.startswith("ccf_") for n in names):
            coords[f"shift_{dim}"] = (f"shift_{dim}", values, {"units": frames.units})

    ds = xr.Dataset(data_vars, coords=coords)
    ds.attrs.update(
        mode=mode,
        units=frames.units,
        spacing=list(frames.spacing),
        max_distance=float("nan") if max_distance is None else float(max_distance),
        fiji_compat=int(fiji_compat),
        dtype=str(np.dtype(dtype)),
        n_gaussians=str(n_gaussians) if auto else int(n_gaussians),
    )
    if auto:
        ds.attrs["max_gaussians"] = int(max_gaussians)
    if mode != "correlation":
        score = ds["confidence"] if mode == "full" else ds["sigma"]
        if several:
            score = score.isel(component=0, drop=True)  # component 1 (smallest mean) decides
        if frames.time_series:
            if frames.lazy:
                # stays inside the array graph: a Delayed wrapper would optimise (and so
                # rename) the frame tasks, and every frame would then run twice
                best = score.data.rechunk(-1).map_blocks(
                    _best_frame_block, mode, drop_axis=0, dtype=np.int64, meta=np.array(0, dtype=np.int64)
                )
            else:
                best = np.int64(best_frame(score.values, mode))
                ds.attrs["best_frame"] = int(best)
            ds["best_frame"] = ((), best, {"description": "index along t of the best frame: highest confidence (full mode) or smallest sigma (no_confidence); -1 if none was fitted"})
    if not frames.time_series:
        ds = ds.isel(t=0, drop=True)
    return ds
