"""OME metadata: NGFF (OME-Zarr 0.4 / 0.5) multiscales, OME-XML pixel sizes, unit names.

Pure parsing, no I/O: the readers hand in the attributes (a dict) or the XML text and
get back per-axis names, scales and units.

Units are reported as short symbols (``"um"``, ``"nm"``, ``"s"``, ``"ms"``, ...),
whatever spelling the file used (``"micrometer"``, ``"micron"``, ``"µm"``, ``"sec"``).
:func:`ngff_unit` turns a symbol back into the name the NGFF specification requires,
for writers of OME-Zarr metadata.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import Any

# Length symbol -> power of ten of its size in metres (integer powers convert exactly:
# 0.5 um is 500.0 nm, not 499.99999999999994).
LENGTH_UNITS = {"pm": -12, "angstrom": -10, "nm": -9, "um": -6, "mm": -3, "cm": -2, "m": 0}

_UNIT_ALIASES = {
    "pm": ("picometer", "picometre", "picometers", "picometres"),
    "angstrom": ("å", "ångström", "angstroms", "ångströms"),
    "nm": ("nanometer", "nanometre", "nanometers", "nanometres"),
    "um": (
        "µm", "μm", "\\u00b5m", "micron", "microns", "micrometer", "micrometre", "micrometers", "micrometres",
    ),
    "mm": ("millimeter", "millimetre", "millimeters", "millimetres"),
    "cm": ("centimeter", "centimetre", "centimeters", "centimetres"),
    "m": ("meter", "metre", "meters", "metres"),
    "ns": ("nanosecond", "nanoseconds", "nsec"),
    "us": ("µs", "μs", "\\u00b5s", "microsecond", "microseconds", "usec"),
    "ms": ("millisecond", "milliseconds", "msec"),
    "s": ("sec", "second", "seconds"),
    "min": ("minute", "minutes"),
    "h": ("hr", "hour", "hours"),
    "d": ("day", "days"),
}
_SYMBOL_OF = {alias: symbol for symbol, aliases in _UNIT_ALIASES.items() for alias in (symbol, *aliases)}

# The unit names of the NGFF specification (UDUNITS-2 names).
_NGFF_NAME = {
    "pm": "picometer",
    "angstrom": "angstrom",
    "nm": "nanometer",
    "um": "micrometer",
    "mm": "millimeter",
    "cm": "centimeter",
    "m": "meter",
    "ns": "nanosecond",
    "us": "microsecond",
    "ms": "millisecond",
    "s": "second",
    "min": "minute",
    "h": "hour",
    "d": "day",
}


def normalise_unit(unit: str | None) -> str | None:
    """The short symbol of a unit name (``"micrometer"`` -> ``"um"``); unknown names unchanged.

    ``None``, ``""`` and ImageJ's ``"pixel"``/``"pixels"`` (no calibration) give ``None``.
    """
    if unit is None:
        return None
    text = str(unit).strip()
    if text.lower() in ("", "pixel", "pixels", "none"):
        return None
    return _SYMBOL_OF.get(text.lower(), _SYMBOL_OF.get(text, text))


def ngff_unit(symbol: str) -> str | None:
    """The NGFF unit name of a short symbol (``"um"`` -> ``"micrometer"``); None if it has none."""
    return _NGFF_NAME.get(normalise_unit(symbol) or "")


def convert_length(value: float, unit: str, to_unit: str) -> float:
    """``value`` in ``unit`` expressed in ``to_unit``; both short length symbols."""
    exponent = LENGTH_UNITS[unit] - LENGTH_UNITS[to_unit]
    return value * 10.0**exponent if exponent >= 0 else value / 10.0**-exponent


@dataclass(frozen=True)
class NgffImage:
    """What one NGFF multiscales entry says about its arrays.

    Attributes
    ----------
    version : str or None
        The NGFF version (``"0.4"``, ``"0.5"``, ...), when the metadata names it.
    axes : tuple of str
        Axis names in array order, lower case (``"t"``, ``"c"``, ``"z"``, ``"y"``, ``"x"``
        for conforming files).
    axis_types : tuple of str or None
        ``"time"``, ``"channel"``, ``"space"`` or None, per axis.
    units : tuple of str or None
        Short unit symbol per axis (None where the file gives none).
    datasets : tuple of str
        Array paths, highest resolution (level 0) first.
    scales : dict
        Array path -> per-axis scale: the dataset's scale times the multiscale-level
        scale (1 where neither gives one). Translations are ignored.
    """

    version: str | None
    axes: tuple[str, ...]
    axis_types: tuple[str | None, ...]
    units: tuple[str | None, ...]
    datasets: tuple[str, ...]
    scales: dict[str, tuple[float, ...]]


def _scale_of(transforms: Any, ndim: int, where: str) -> tuple[float, ...]:
    """The scale vector of a coordinateTransformations list (ones when there is none)."""
    for transform in transforms or ():
        if transform.get("type") == "scale":
            if "scale" not in transform:
                raise ValueError(
                    f"OME-Zarr {where} has a scale transformation without an inline 'scale' "
                    f"list (a 'path' to a scale array is not supported); pass spacing= instead."
                )
            scale = tuple(float(s) for s in transform["scale"])
            if len(scale) != ndim:
                raise ValueError(
                    f"OME-Zarr {where} scale {list(scale)} has {len(scale)} values but the "
                    f"image has {ndim} axes; fix the metadata or pass spacing=."
                )
            return scale
    return (1.0,) * ndim


def parse_ngff_multiscales(attrs: dict[str, Any], ndim: int | None = None) -> NgffImage | None:
    """The first multiscales entry of an OME-Zarr group's attributes, or None if it has none.

    Parameters
    ----------
    attrs : dict
        The group attributes: NGFF 0.5 keeps the metadata under ``attrs["ome"]``,
        0.4 and earlier at the top level.
    ndim : int, optional
        Number of dims of the level-0 array; needed only for files without ``axes``
        (NGFF 0.1/0.2, implicitly ``tczyx``) to check that count.
    """
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else None
    container = ome if ome is not None and "multiscales" in ome else attrs
    multiscales = container.get("multiscales")
    if not multiscales:
        return None
    entry = multiscales[0]
    version = (ome or {}).get("version") or entry.get("version")
    raw_axes = entry.get("axes")
    if raw_axes is None:
        axes_list: list[dict[str, Any]] = [{"name": name} for name in "tczyx"]
        if ndim is not None and ndim != 5:
            raise ValueError(
                f"OME-Zarr metadata without 'axes' implies 5D tczyx, but the array has {ndim} "
                f"dims; pass dims= to name them."
            )
    else:
        axes_list = [a if isinstance(a, dict) else {"name": str(a)} for a in raw_axes]
    axes = tuple(str(a.get("name", "")).lower() for a in axes_list)
    axis_types = tuple((a.get("type") or None) for a in axes_list)
    units = tuple(normalise_unit(a.get("unit")) for a in axes_list)
    datasets = tuple(str(d["path"]) for d in entry.get("datasets", ()))
    if not datasets:
        raise ValueError("OME-Zarr multiscales entry lists no datasets; the image has no arrays to read.")
    level_scale = _scale_of(entry.get("coordinateTransformations"), len(axes), "multiscales")
    scales = {}
    for dataset in entry["datasets"]:
        path = str(dataset["path"])
        scale = _scale_of(dataset.get("coordinateTransformations"), len(axes), f"dataset {path!r}")
        scales[path] = tuple(s * m for s, m in zip(scale, level_scale))
    return NgffImage(version, axes, axis_types, units, datasets, scales)


@dataclass(frozen=True)
class OmePixels:
    """Physical sizes from an OME-XML ``Pixels`` element (None where absent).

    Attributes
    ----------
    physical_size : dict
        ``"x"``, ``"y"``, ``"z"`` -> (size, short unit symbol) for the axes that have one.
    time_increment : tuple of (float, str) or None
        Time between frames and its unit symbol.
    """

    physical_size: dict[str, tuple[float, str]]
    time_increment: tuple[float, str] | None


def parse_ome_xml(xml: str, image_index: int = 0) -> OmePixels:
    """Pixel sizes and the time increment of one image of an OME-XML document.

    Units default to micrometre and second, as in the OME schema.
    """
    root = ElementTree.fromstring(xml)
    pixels = [el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"]
    if len(pixels) <= image_index:
        return OmePixels({}, None)
    attrib = pixels[image_index].attrib
    sizes = {}
    for axis in "xyz":
        value = attrib.get(f"PhysicalSize{axis.upper()}")
        if value is not None:
            unit = normalise_unit(attrib.get(f"PhysicalSize{axis.upper()}Unit", "µm")) or "um"
            sizes[axis] = (float(value), unit)
    increment = None
    if attrib.get("TimeIncrement") is not None:
        increment = (float(attrib["TimeIncrement"]), normalise_unit(attrib.get("TimeIncrementUnit", "s")) or "s")
    return OmePixels(sizes, increment)
