"""Calibration agreement: image1, image2 and the mask must describe one grid in space and time.

:func:`cccdask.frames.prepare_inputs` (behind ``cccdask.ccc``, ``cccdask.coefficients``
and YAML runs) reads each input's calibration with :func:`calibration_of` and settles one
with :func:`settle_calibration`:

* voxel size (spacing) per spatial axis, agreeing to a relative 1e-6;
* the unit of the voxel size;
* the frame interval (and its unit) of time series.

Values in different known units are compared after conversion (50 nm is 0.05 um, 2000 ms
is 2 s) and the run takes the first input's unit; units that cannot be converted into
each other (an unknown name) must be equal.

Inputs that carry a calibration must agree; a mismatch is a ``ValueError`` naming both
values and the fix. An input without one (a NumPy array, a DataArray without
coordinates, a file without metadata, which :func:`cccdask.io.readers.open_image`
reports in ``"pixel"`` / ``"frame"`` units) takes the others', with a note that a run
writes to its log. An explicit ``spacing=`` / ``units=`` (``input.spacing`` /
``input.units`` in YAML) overrides the inputs' and is not checked against them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import xarray as xr

from cccdask.io.ome import LENGTH_UNITS, normalise_unit

SPATIAL_DIMS = ("z", "y", "x")
RELATIVE_TOLERANCE = 1e-6
_UNCALIBRATED_TIME = ("frame", "frames", "index")
_SECONDS_PER = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def _in_units(values: Sequence[float], unit: str | None, to_unit: str | None) -> tuple[float, ...] | None:
    """``values`` in ``unit`` expressed in ``to_unit`` (lengths or times); None if not convertible.

    The same unit (or both missing) converts as is.
    """
    if unit == to_unit:
        return tuple(values)
    for scale in ({u: 10.0**e for u, e in LENGTH_UNITS.items()}, _SECONDS_PER):
        if unit in scale and to_unit in scale:
            return tuple(v * scale[unit] / scale[to_unit] for v in values)
    return None


@dataclass(frozen=True)
class Calibration:
    """The calibration one input carries; None where it carries none.

    Attributes
    ----------
    spacing : tuple of float or None
        Voxel size per spatial dim, ``(z,) y, x`` order.
    units : str or None
        Unit of ``spacing`` (a short symbol such as ``"um"``).
    time_interval : float or None
        Time between frames (inputs with a ``t`` dim).
    time_units : str or None
    """

    spacing: tuple[float, ...] | None = None
    units: str | None = None
    time_interval: float | None = None
    time_units: str | None = None


@dataclass(frozen=True)
class SettledCalibration:
    """The calibration of a run: what every input agreed on, and how it was settled.

    Attributes
    ----------
    spacing : tuple of float or None
        None when no input (and no override) gives one.
    units : str or None
    time_interval, time_units : float or str or None
        None when no input gives a frame interval.
    time_source : str or None
        Which input the frame interval comes from.
    notes : tuple of str
        One line per input that took another input's calibration.
    """

    spacing: tuple[float, ...] | None
    units: str | None
    time_interval: float | None
    time_units: str | None
    time_source: str | None
    notes: tuple[str, ...]


def _step(values: np.ndarray) -> float:
    step = values[1] - values[0]
    if isinstance(step, np.timedelta64):
        return float(step / np.timedelta64(1, "s"))
    return float(step)


def calibration_of(array) -> Calibration:
    """What calibration ``array`` carries (nothing for NumPy/Dask arrays).

    From a DataArray's coordinates: the step between the first two values of each
    spatial coordinate and its ``units`` attr; of ``t``, the frame interval and its
    ``units`` (seconds for datetime coordinates). Units ``"pixel"`` (space) and
    ``"frame"`` (time) mean uncalibrated, as :func:`cccdask.io.readers.open_image` writes
    for files without metadata.
    """
    if not isinstance(array, xr.DataArray):
        return Calibration()
    spatial = [d for d in array.dims if d in SPATIAL_DIMS]
    spacing = units = None
    if any(d in array.coords and array.sizes[d] > 1 for d in spatial):
        steps, named = [], []
        for d in spatial:
            if d in array.coords and array.sizes[d] > 1:
                steps.append(_step(np.asarray(array.coords[d].values[:2])))
                named.append(array.coords[d].attrs.get("units"))
            else:
                steps.append(1.0)
        raw_units = next((u for u in named if u is not None), None)
        if raw_units is None or normalise_unit(raw_units) is not None:
            spacing, units = tuple(steps), normalise_unit(raw_units)
    interval = time_units = None
    if "t" in array.coords and array.sizes.get("t", 0) > 1:
        values = np.asarray(array.coords["t"].values[:2])
        raw = "s" if values.dtype.kind == "M" else array.coords["t"].attrs.get("units")
        if raw is None or str(raw).strip().lower() not in _UNCALIBRATED_TIME:
            interval = _step(values)
            time_units = None if raw is None else (normalise_unit(raw) or str(raw))
    return Calibration(spacing, units, interval, time_units)


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _close(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and bool(np.allclose(a, b, rtol=RELATIVE_TOLERANCE, atol=0.0))


def settle_calibration(
    calibrations: dict[str, Calibration],
    spatial_dims: Sequence[str],
    spacing: tuple[float, ...] | None = None,
    units: str | None = None,
) -> SettledCalibration:
    """One calibration for all inputs, or a ``ValueError`` naming the disagreement.

    Parameters
    ----------
    calibrations : dict of str to Calibration
        Per input name (``"image1"``, ``"image2"``, ``"mask"``), in order of precedence.
    spatial_dims : sequence of str
        The frames' spatial dims (named in messages).
    spacing, units : optional
        An explicit override: the inputs' voxel sizes (units) are then neither used nor
        compared.

    Raises
    ------
    ValueError
        Voxel sizes differing by more than a relative 1e-6, different units, or different
        frame intervals (or their units), naming both inputs' values and the fix.
    """
    axes = ", ".join(spatial_dims)
    notes: list[str] = []
    settled_spacing, settled_units = spacing, units
    with_spacing = [(n, c) for n, c in calibrations.items() if c.spacing is not None]
    if spacing is None and with_spacing:
        first, reference = with_spacing[0]
        for name, other in with_spacing[1:]:
            as_is = None in (reference.units, other.units) or units is not None  # nothing to convert
            converted = other.spacing if as_is else _in_units(other.spacing, other.units, reference.units)
            if converted is None:
                raise ValueError(
                    f"{first} and {name} give their voxel sizes in different units: {first} "
                    f"{_fmt(reference.spacing)} {reference.units} and {name} {_fmt(other.spacing)} "
                    f"{other.units} ({axes}). Set the calibration explicitly (input.spacing: and input.units: "
                    f"in a YAML run, spacing= and units= in Python), or convert one image's calibration."
                )
            if not _close(reference.spacing, converted):
                shown = "" if converted == other.spacing else f" = {_fmt(converted)} {reference.units}"
                raise ValueError(
                    f"{first} and {name} have different voxel sizes: {first} {_fmt(reference.spacing)} "
                    f"{reference.units or '(no unit)'} and {name} {_fmt(other.spacing)} {other.units or '(no unit)'}"
                    f"{shown} ({axes}). They must be on one grid (to a relative 1e-6): if a file's calibration is "
                    f"wrong, set the voxel size explicitly (input.spacing: in a YAML run, spacing= in Python); "
                    f"otherwise resample one image onto the other's grid."
                )
        settled_spacing = reference.spacing
        for name, calibration in calibrations.items():
            if calibration.spacing is None:
                notes.append(f"{name} has no voxel size; using {first}'s {_fmt(reference.spacing)} "
                             f"{reference.units or ''}".rstrip())
    if units is None:
        settled_units = next((c.units for _, c in with_spacing if c.units is not None), None)
    with_time = [(n, c) for n, c in calibrations.items() if c.time_interval is not None]
    interval = time_units = source = None
    if with_time:
        source, reference = with_time[0]
        for name, other in with_time[1:]:
            converted = ([other.time_interval] if None in (other.time_units, reference.time_units)
                         else _in_units([other.time_interval], other.time_units, reference.time_units))
            if converted is None or not _close([reference.time_interval], converted):
                raise ValueError(
                    f"{source} and {name} have different frame intervals: {source} {reference.time_interval:g} "
                    f"{reference.time_units or '(no unit)'} and {name} {other.time_interval:g} "
                    f"{other.time_units or '(no unit)'}. They must be one time series: if a file's metadata is "
                    f"wrong, correct it (in Python, give both the same t coordinates); otherwise resample one "
                    f"series in time."
                )
        interval = reference.time_interval
        time_units = reference.time_units or next((c.time_units for _, c in with_time if c.time_units), None)
        for name, calibration in calibrations.items():
            if calibration.time_interval is None and name != "mask":
                notes.append(f"{name} has no frame interval; using {source}'s {interval:g} {time_units or ''}"
                             .rstrip())
    return SettledCalibration(settled_spacing, settled_units, interval, time_units, source, tuple(notes))

