"""The file formats behind :func:`cccdask.io.readers.open_image`: Zarr / OME-Zarr, TIFF, .npy.

:func:`detect_format` tells the format of a path; :data:`READERS` maps each format to
the reader that opens it lazily as a :class:`Source` (the stored array, its axis names
and its calibration where the file has them). :class:`FileArray` wraps TIFF and .npy
files so that a Dask graph holds only their path.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr

from cccdask.io.ome import NgffImage, convert_length, normalise_unit, parse_ngff_multiscales, parse_ome_xml


DIM_ORDER = ("t", "c", "z", "y", "x")
SPATIAL_DIMS = ("z", "y", "x")
SUPPORTED_FORMATS = (
    "Zarr v2 or v3 array or group (a directory with .zarray/.zgroup or zarr.json)",
    "OME-Zarr image (NGFF 0.4 or 0.5)",
    "TIFF, OME-TIFF or ImageJ hyperstack (.tif, .tiff)",
    "NumPy .npy file",
)
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_NPY_MAGIC = b"\x93NUMPY"
_ZARR_METADATA_FILES = (".zarray", ".zgroup", "zarr.json")
# TIFF ResolutionUnit values that are physical lengths (INCH is left out on purpose:
# it is the 72-dpi default of image editors, not a microscope calibration).
_TIFF_RESOLUTION_UNITS = {3: "cm", 4: "mm", 5: "um"}


# --------------------------------------------------------------------------- sources


def _open_tiff_zarr(path: str, series: int) -> zarr.Array:
    """The full-resolution level of a TIFF image series as a read-only Zarr array.

    ``level=0`` matters for pyramidal (OME-)TIFFs, whose store is otherwise a
    multiscales group rather than an array.
    """
    store = tifffile.imread(path, aszarr=True, series=series, level=0)
    return zarr.open(store, mode="r")


def _open_npy(path: str, series: int) -> np.ndarray:
    return np.load(path, mmap_mode="r")


_OPENERS = {"tiff": _open_tiff_zarr, "npy": _open_npy}


class FileArray:
    """Array-like view of one image file that opens the file on first read.

    It pickles as ``(path, kind, shape, dtype)`` only, so a Dask graph built on it
    carries no pixel data and no open file handle (tifffile's Zarr store holds a file
    handle and a lock, which cannot be pickled); each process opens the file once,
    on its first read.

    Parameters
    ----------
    path : str
        The file.
    kind : {"tiff", "npy"}
        ``"tiff"`` reads through ``tifffile.imread(path, aszarr=True)`` opened with
        ``zarr.open``; ``"npy"`` through ``numpy.load(path, mmap_mode="r")``.
    shape : tuple of int
    dtype : numpy.dtype
        What the file holds (checked by the caller when the metadata is read).
    series : int
        TIFF image series (0 for the main image).
    """

    def __init__(self, path: str, kind: str, shape: tuple[int, ...], dtype: Any, series: int = 0):
        if kind not in _OPENERS:
            raise ValueError(f"kind must be one of {sorted(_OPENERS)}, not {kind!r}.")
        self.path = str(path)
        self.kind = kind
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.series = int(series)
        self._array: Any = None
        self._lock = threading.Lock()

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _opened(self) -> Any:
        if self._array is None:
            with self._lock:
                if self._array is None:
                    self._array = _OPENERS[self.kind](self.path, self.series)
        return self._array

    def __getitem__(self, key: Any) -> np.ndarray:
        chunk = self._opened()[key]
        # Copy out of the memory map: a chunk must not keep the .npy file mapped.
        return np.array(chunk) if self.kind == "npy" else np.asarray(chunk)

    def __getstate__(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in ("path", "kind", "shape", "dtype", "series")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def __repr__(self) -> str:
        return f"FileArray({self.path!r}, kind={self.kind!r}, shape={self.shape}, dtype={self.dtype})"


@dataclass(frozen=True)
class Source:
    """One array on disk and what its metadata says, per axis (in storage order).

    ``axes`` is None when the file names no axes; ``scale`` and ``units`` hold None
    where the metadata gives nothing for that axis.
    """

    array: Any  # zarr.Array or FileArray
    axes: tuple[str, ...] | None
    scale: tuple[float | None, ...]
    units: tuple[str | None, ...]
    component: str | None = None


def _unknown_per_axis(ndim: int) -> tuple[None, ...]:
    return (None,) * ndim


def _canonical_axis(name: str, axis_type: str | None = None) -> str:
    """An axis name as one of t, c, z, y, x where the name or the NGFF type says which."""
    name = str(name).lower()
    if name in DIM_ORDER:
        return name
    return {"time": "t", "channel": "c"}.get(axis_type or "", name)


# ------------------------------------------------------------------------ Zarr


def _array_paths(group: zarr.Group) -> list[str]:
    return sorted(path for path, node in group.members(max_depth=None) if isinstance(node, zarr.Array))


def _ngff_of(group: zarr.Group) -> NgffImage | None:
    return parse_ngff_multiscales(dict(group.attrs))


def _resolve_group(
    group: zarr.Group, component: str | None, where: str
) -> tuple[zarr.Array, NgffImage | None, str]:
    """The array of a group that ``component`` names (default: NGFF level 0, else the only one).

    Returns the array, the multiscales metadata that describes it (or None) and its
    dataset path within that metadata (or its path in the group when there is none).
    """
    if component is None:
        ngff = _ngff_of(group)
        if ngff is not None:
            level0 = ngff.datasets[0]
            try:
                return group[level0], ngff, level0
            except KeyError:
                raise ValueError(
                    f"{where} is an OME-Zarr image whose level 0 array {level0!r} is missing; "
                    f"arrays present: {', '.join(_array_paths(group)) or 'none'}."
                ) from None
        arrays = _array_paths(group)
        if len(arrays) == 1:
            return group[arrays[0]], None, arrays[0]
        if not arrays:
            raise ValueError(f"{where} is a Zarr group with no arrays; there is no image to read.")
        raise ValueError(
            f"{where} is a Zarr group with {len(arrays)} arrays and no OME-Zarr multiscales "
            f"metadata; choose one with component=, one of: {', '.join(arrays)}."
        )
    component = component.strip("/")
    try:
        node = group[component]
    except KeyError:
        raise ValueError(
            f"component {component!r} is not in the Zarr group {where}; arrays present: "
            f"{', '.join(_array_paths(group)) or 'none'}."
        ) from None
    if isinstance(node, zarr.Group):
        return _resolve_group(node, None, f"{where}/{component}")
    parent_path, _, name = component.rpartition("/")
    ngff = _ngff_of(group[parent_path] if parent_path else group)
    if ngff is not None and name in ngff.datasets:
        return node, ngff, name
    return node, None, component


def _zarr_axes(array: zarr.Array) -> tuple[str, ...] | None:
    """Dim names stored with a plain Zarr array (v3 dimension_names, v2 _ARRAY_DIMENSIONS)."""
    names = getattr(array.metadata, "dimension_names", None) or array.attrs.get("_ARRAY_DIMENSIONS")
    if not names or len(names) != array.ndim or any(n is None for n in names):
        return None
    names = tuple(str(n).lower() for n in names)
    return names if all(n in DIM_ORDER for n in names) else None


def _parent_ngff(path: Path) -> NgffImage | None:
    """The multiscales metadata of the group around an array opened by its own path."""
    parent = path.parent
    if not any((parent / name).exists() for name in _ZARR_METADATA_FILES):
        return None
    try:
        group = zarr.open_group(str(parent), mode="r")
    except Exception:  # a parent that is not a readable group has no metadata for us
        return None
    ngff = _ngff_of(group)
    return ngff if ngff is not None and path.name in ngff.datasets else None


def _read_zarr(path: Path, component: str | None) -> Source:
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as error:
        raise ValueError(f"{path} looks like a Zarr store but cannot be opened: {error}") from error
    if isinstance(node, zarr.Array):
        if component is not None:
            raise ValueError(f"{path} is a Zarr array, not a group; remove component={component!r}.")
        array, ngff, dataset = node, _parent_ngff(path), path.name
    else:
        array, ngff, dataset = _resolve_group(node, component, str(path))
    if ngff is None:
        unknown = _unknown_per_axis(array.ndim)
        return Source(array, _zarr_axes(array), unknown, unknown, component)
    if len(ngff.axes) != array.ndim:
        raise ValueError(
            f"OME-Zarr metadata of {path} names {len(ngff.axes)} axes {ngff.axes} but the array "
            f"{dataset!r} has {array.ndim} dims; fix the metadata or pass dims=."
        )
    axes = tuple(_canonical_axis(n, t) for n, t in zip(ngff.axes, ngff.axis_types))
    return Source(array, axes, ngff.scales[dataset], ngff.units, component)


# ------------------------------------------------------------------------ TIFF


def _tiff_axes(series: Any) -> tuple[str, ...] | None:
    """Axes of a TIFF series whose metadata names them (ImageJ, OME, tifffile 'shaped')."""
    axes = series.axes.upper()
    if series.kind not in ("imagej", "ome", "shaped") or any(a not in "TCZYXS" for a in axes):
        return None
    if "S" in axes:
        if "C" in axes:
            raise ValueError(
                f"TIFF axes {axes!r} have both channels (C) and samples per pixel (S); "
                f"cccdask reads one of the two as 'c'. Convert the file to one channel axis."
            )
        axes = axes.replace("S", "C")
    return tuple(axes.lower())


def _tiff_metadata(tif: tifffile.TiffFile) -> dict[str, tuple[float, str | None]]:
    """Per-dim (size, unit) from ImageJ, OME or resolution-tag metadata."""
    page = tif.pages.first
    found: dict[str, tuple[float, str | None]] = {}
    x_resolution, y_resolution = page.resolution
    if tif.is_imagej:
        meta = tif.imagej_metadata or {}
        unit = normalise_unit(meta.get("unit"))
        if unit is not None:  # ImageJ "pixel": uncalibrated, the resolution means nothing
            if x_resolution:
                found["x"] = (1.0 / x_resolution, unit)
            if y_resolution:
                found["y"] = (1.0 / y_resolution, unit)
            if meta.get("spacing"):
                found["z"] = (float(meta["spacing"]), unit)
        if meta.get("finterval"):
            found["t"] = (float(meta["finterval"]), normalise_unit(meta.get("tunit", "sec")) or "s")
    elif tif.is_ome:
        pixels = parse_ome_xml(tif.ome_metadata)
        found.update(pixels.physical_size)
        if pixels.time_increment is not None:
            found["t"] = pixels.time_increment
    elif int(page.resolutionunit) in _TIFF_RESOLUTION_UNITS:
        unit = _TIFF_RESOLUTION_UNITS[int(page.resolutionunit)]
        if x_resolution:
            found["x"] = (convert_length(1.0 / x_resolution, unit, "um"), "um")
        if y_resolution:
            found["y"] = (convert_length(1.0 / y_resolution, unit, "um"), "um")
    return found


def _check_decoder(compression: int, path: Path) -> None:
    """Fail at open time, not in a worker, on compressions tifffile cannot decode here."""
    try:
        tifffile.TIFF.DECOMPRESSORS[compression]
    except KeyError:
        name = getattr(compression, "name", compression)
        raise ValueError(
            f"{path} is {name}-compressed and decoding it needs the imagecodecs package; "
            f"install it (pip install imagecodecs) or save the file uncompressed."
        ) from None


def _read_tiff(path: Path, component: str | None) -> Source:
    if component is not None:
        raise ValueError(f"component= applies to Zarr groups only; {path} is a TIFF file. Remove it.")
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        _check_decoder(tif.pages.first.compression, path)
        axes = _tiff_axes(series)
        found = _tiff_metadata(tif)
        shape, dtype = tuple(series.shape), series.dtype
        # tifffile's own letters place Y and X even where the file names no other axis
        letters = series.axes.lower()
    array = FileArray(str(path), "tiff", shape, dtype)
    scale = tuple(found[a][0] if a in found else None for a in letters)
    units = tuple(found[a][1] if a in found else None for a in letters)
    return Source(array, axes, scale, units)


# ------------------------------------------------------------------------- .npy


def _read_npy(path: Path, component: str | None) -> Source:
    if component is not None:
        raise ValueError(f"component= applies to Zarr groups only; {path} is a .npy file. Remove it.")
    try:
        header = np.load(path, mmap_mode="r")
    except ValueError as error:
        raise ValueError(f"{path} cannot be memory-mapped ({error}); save it without pickled objects.") from error
    array = FileArray(str(path), "npy", header.shape, header.dtype)
    del header
    return Source(array, None, _unknown_per_axis(array.ndim), _unknown_per_axis(array.ndim))


READERS = {"zarr": _read_zarr, "tiff": _read_tiff, "npy": _read_npy}


def detect_format(path: Path) -> str:
    if path.is_dir():
        if any((path / name).exists() for name in _ZARR_METADATA_FILES):
            return "zarr"
    else:
        with open(path, "rb") as handle:
            head = handle.read(8)
        if head.startswith(_NPY_MAGIC):
            return "npy"
        if head[:4] in _TIFF_MAGIC:
            return "tiff"
    raise ValueError(
        f"{path} is not an image format cccdask can read. Supported: " + "; ".join(SUPPORTED_FORMATS) + "."
    )
