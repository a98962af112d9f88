"""Turn user inputs (NumPy, Dask or xarray) into labelled frames.

Every public entry point (``cccdask.ccc``, ``cccdask.coefficients``, the pipeline)
normalises its inputs through :func:`prepare_inputs`, so that the rules below hold
everywhere:

* A NumPy or Dask array with 2 or 3 dims is one frame, ``(y, x)`` or ``(z, y, x)``.
* An ``xarray.DataArray`` names its dims from ``t, z, y, x`` (in that order); a ``t``
  dim makes it a time series. Spacing is read from its spatial coordinates (the step
  between the first two values) unless ``spacing=`` is given; the unit from the
  coordinate's ``units`` attribute.
* The mask is ``None`` (every voxel inside), one frame shared by all frames, or one
  mask per frame. Non-zero means inside.
* image1, image2 and the mask must agree on voxel size, units and frame interval where
  they carry one (:mod:`cccdask.calibration`); one without takes the others'.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from numbers import Real
from typing import Any, Sequence

import dask.array as da
import numpy as np
import xarray as xr

from cccdask.calibration import calibration_of, settle_calibration

SPATIAL_DIMS = ("z", "y", "x")
ALL_DIMS = ("t",) + SPATIAL_DIMS


class InvalidFrameError(ValueError):
    """A frame that cannot be analysed (empty mask, NaN or Inf pixels).

    Raised by the per-frame kernels; the pipeline records it as data for that frame.
    """


@dataclass(frozen=True)
class Frames:
    """Normalised inputs of one analysis.

    Attributes
    ----------
    image1, image2 : xarray.DataArray
        Dims ``("t", *spatial_dims)``; ``t`` has length 1 for a single frame.
        NumPy- or Dask-backed, never loaded by this class.
    mask : xarray.DataArray or None
        Dims ``spatial_dims`` (shared by every frame) or ``("t", *spatial_dims)``.
    spacing : tuple of float
        Physical voxel size per spatial axis, in ``spatial_dims`` order.
    units : str
        Unit of ``spacing`` (``"pixel"`` when none was given).
    time_series : bool
        Whether the input had a ``t`` dim (results then keep it).
    notes : tuple of str
        How the calibration was settled where an input had none (for a run's log).
    """

    image1: xr.DataArray
    image2: xr.DataArray
    mask: xr.DataArray | None
    spacing: tuple[float, ...]
    units: str
    time_series: bool
    notes: tuple[str, ...] = ()

    @property
    def spatial_dims(self) -> tuple[str, ...]:
        return tuple(self.image1.dims[1:])

    @property
    def frame_shape(self) -> tuple[int, ...]:
        return tuple(self.image1.shape[1:])

    @property
    def n_frames(self) -> int:
        return int(self.image1.sizes["t"])

    @property
    def lazy(self) -> bool:
        """True when any input is Dask-backed."""
        arrays = [self.image1, self.image2] + ([self.mask] if self.mask is not None else [])
        return any(isinstance(a.data, da.Array) for a in arrays)

    def mask_frame(self, index: int) -> xr.DataArray | None:
        """The mask of frame ``index`` (the shared one, or that frame's own)."""
        if self.mask is None:
            return None
        if "t" in self.mask.dims:
            return self.mask.isel(t=index)
        return self.mask


def _to_dataarray(array: Any, name: str) -> xr.DataArray:
    """Wrap a NumPy/Dask array as a DataArray with default dims; check DataArray dims."""
    if isinstance(array, xr.DataArray):
        dims = tuple(array.dims)
        unknown = [d for d in dims if d not in ALL_DIMS]
        if unknown:
            raise ValueError(
                f"{name} has dims {dims}; cccdask understands only t, z, y, x. "
                f"Rename or select the others first (e.g. .isel(c=0) or .rename(...))."
            )
        order = [d for d in ALL_DIMS if d in dims]
        if list(dims) != order:
            array = array.transpose(*order)
        return array
    if isinstance(array, (np.ndarray, da.Array)):
        data = array
    elif hasattr(array, "__array__") and not isinstance(array, (str, bytes)):
        data = np.asarray(array)
    else:
        raise ValueError(
            f"{name} must be a NumPy array, a Dask array or an xarray.DataArray, "
            f"not {type(array).__name__}."
        )
    if data.ndim not in (2, 3):
        raise ValueError(
            f"{name} has {data.ndim} dims; a plain array must be one 2D (y, x) or 3D "
            f"(z, y, x) frame. For a time series pass an xarray.DataArray with a 't' dim."
        )
    return xr.DataArray(data, dims=SPATIAL_DIMS[-data.ndim :])


def _check_numeric(array: xr.DataArray, name: str, allow_bool: bool = False) -> None:
    kind = array.dtype.kind
    ok = "iuf" + ("b" if allow_bool else "")
    if kind not in ok:
        raise ValueError(
            f"{name} has dtype {array.dtype}, which is not a real number type; "
            f"convert it to an integer or float array first."
        )


def validate_spacing(spacing: Any, ndim: int) -> tuple[float, ...]:
    """Check a user spacing: one positive finite number per spatial axis (or a scalar)."""
    if isinstance(spacing, Real):
        spacing = (float(spacing),) * ndim
    spacing = tuple(float(s) for s in np.ravel(np.asarray(spacing, dtype=float)))
    if len(spacing) != ndim:
        raise ValueError(
            f"spacing has {len(spacing)} values but the frames have {ndim} spatial axes; "
            f"give one physical voxel size per axis in (z,) y, x order."
        )
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(
            f"spacing {spacing} must be positive and finite on every axis "
            f"(a physical voxel size, e.g. 0.065 for 65 nm pixels in um)."
        )
    return spacing


def _prepare_mask(mask: Any, spatial: list[str], images: xr.DataArray, time_series: bool) -> xr.DataArray:
    """A mask as a DataArray: dims ``spatial`` (shared) or ``("t", *spatial)`` (per frame)."""
    frame_shape = tuple(images.sizes[d] for d in spatial)
    if isinstance(mask, xr.DataArray):
        m = _to_dataarray(mask, "mask")
    else:
        data = mask if isinstance(mask, (np.ndarray, da.Array)) else np.asarray(mask)
        if data.ndim == len(spatial):
            m = xr.DataArray(data, dims=tuple(spatial))
        elif data.ndim == len(spatial) + 1 and time_series:
            m = xr.DataArray(data, dims=("t", *spatial))
        else:
            raise ValueError(
                f"mask has {data.ndim} dims; give one frame {tuple(spatial)} shared by all "
                f"frames, or (for a time series) one mask per frame ('t', {', '.join(spatial)})."
            )
    _check_numeric(m, "mask", allow_bool=True)
    per_frame = "t" in m.dims
    if per_frame and not time_series:
        raise ValueError("mask has a 't' dim but the images are a single frame; pass one mask frame.")
    if set(m.dims) - {"t"} != set(spatial):
        raise ValueError(f"mask dims {m.dims} do not match the frame dims {tuple(spatial)}.")
    expected = (images.sizes["t"],) + frame_shape if per_frame else frame_shape
    if m.shape != expected:
        raise ValueError(
            f"mask shape {m.shape} does not match the images: expected {expected} "
            f"({'one mask per frame' if per_frame else 'one frame shared by all frames'})."
        )
    return m.drop_vars(list(m.coords))


def prepare_inputs(
    image1: Any,
    image2: Any,
    mask: Any = None,
    spacing: float | Sequence[float] | None = None,
    units: str | None = None,
) -> Frames:
    """Validate and normalise two channels and an optional mask into :class:`Frames`.

    Parameters
    ----------
    image1, image2 : array-like
        NumPy, Dask or xarray inputs (see the module docstring).
    mask : array-like, optional
        ``None``, one frame shared by all frames, or one mask per frame.
    spacing : float or sequence of float, optional
        Physical voxel size per spatial axis in ``(z,) y, x`` order. Default: from the
        DataArray coordinates, else 1 (pixels).
    units : str, optional
        Unit of ``spacing``; default from the coordinates' ``units`` attribute, else
        ``"um"`` when spacing is given, else ``"pixel"``.

    Raises
    ------
    ValueError
        Shapes that do not match, frames that are not 2D or 3D, non-numeric dtypes,
        non-positive spacing. The message names the problem and the fix.
    """
    a1 = _to_dataarray(image1, "image1")
    a2 = _to_dataarray(image2, "image2")
    for a, name in ((a1, "image1"), (a2, "image2")):
        _check_numeric(a, name)
    if a1.dims != a2.dims or a1.shape != a2.shape:
        raise ValueError(
            f"image1 {dict(a1.sizes)} and image2 {dict(a2.sizes)} differ in shape or dims; "
            f"the two channels must cover the same voxels."
        )
    time_series = "t" in a1.dims
    spatial = [d for d in a1.dims if d != "t"]
    if len(spatial) not in (2, 3):
        raise ValueError(
            f"frames have {len(spatial)} spatial dims {tuple(spatial)}; CCC needs 2D (y, x) "
            f"or 3D (z, y, x) frames."
        )
    if not time_series:
        a1 = a1.expand_dims("t")
        a2 = a2.expand_dims("t")

    calibrations = {"image1": calibration_of(a1), "image2": calibration_of(a2)}
    if isinstance(mask, xr.DataArray):
        calibrations["mask"] = calibration_of(_to_dataarray(mask, "mask"))
    m = None if mask is None else _prepare_mask(mask, spatial, a1, time_series)
    if spacing is not None:
        spacing = validate_spacing(spacing, len(spatial))
    settled = settle_calibration(calibrations, spatial, spacing, units)
    if spacing is None:
        spacing = settled.spacing if settled.spacing is not None else (1.0,) * len(spatial)
        if not isinstance(image1, xr.DataArray) and len(spatial) == 3 and settled.spacing is None:
            warnings.warn(
                "image1 is a 3D array without spacing: it is treated as one z, y, x frame at spacing 1 (pixels). "
                "Pass spacing=(dz, dy, dx) for a z-stack, or an xarray.DataArray with dims ('t', 'y', 'x') for a "
                "time series of 2D frames.", UserWarning, stacklevel=3,
            )
        units = units or settled.units or ("pixel" if all(s == 1.0 for s in spacing) else "um")
    else:
        units = units or settled.units or "um"
    spacing = validate_spacing(spacing, len(spatial))
    if time_series and settled.time_source not in (None, "image1"):
        a1, a2 = (_with_frame_interval(a, settled.time_interval, settled.time_units) for a in (a1, a2))

    return Frames(image1=a1, image2=a2, mask=m, spacing=spacing, units=units, time_series=time_series,
                  notes=settled.notes)


def _with_frame_interval(array: xr.DataArray, interval: float, units: str | None) -> xr.DataArray:
    """``array`` with ``t`` coordinates (and attrs) of the given frame interval."""
    times = xr.Variable("t", np.arange(array.sizes["t"]) * interval, attrs={"units": units} if units else {})
    array = array.assign_coords(t=times)
    array.attrs = {**array.attrs, "time_interval": interval, "time_units": units}
    return array


def frame_time_coords(frames: Frames) -> dict[str, Any]:
    """Coordinates of the ``t`` dim to carry into results (the input's own, else the index).

    Each value is a ``(dims, values, attrs)`` tuple, so the time keeps its ``units``.
    """
    if "t" in frames.image1.coords:
        t = frames.image1.coords["t"]
        return {"t": ("t", t.values, dict(t.attrs))}
    return {"t": ("t", np.arange(frames.n_frames), {"units": "frame"})}
