"""Lazy image readers: Zarr, OME-Zarr, TIFF / OME-TIFF / ImageJ, .npy -> xarray.DataArray.

:func:`open_image` reads only metadata; the pixels stay on disk behind a Dask array
with one chunk per frame along ``t`` and ``c`` (and the whole frame along ``z, y, x``),
so each task of a run reads exactly its own frame. The Dask graph holds no pixel data
and no open file handle: Zarr arrays pickle as their store path, and TIFF and .npy
files are wrapped by :class:`FileArray`, which pickles as its path and opens the file
again in each worker process.

Dims are named from ``t, c, z, y, x`` and returned in that order; ``z, y, x`` carry
coordinates in physical units (index times voxel size) and ``t`` the time of each
frame (index times the frame interval) plus a ``frame`` index coordinate.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any, Sequence

import dask.array as da
import numpy as np
import tifffile
import xarray as xr
import zarr
from dask.base import tokenize

from cccdask.frames import validate_spacing
from cccdask.io.ome import (
    LENGTH_UNITS,
    NgffImage,
    convert_length,
    normalise_unit,
    parse_ngff_multiscales,
    parse_ome_xml,
)

__all__ = ["open_image", "stored_array", "select_channel", "FileArray", "DIM_ORDER", "SUPPORTED_FORMATS"]

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
class _Source:
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


def _read_zarr(path: Path, component: str | None) -> _Source:
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
        return _Source(array, _zarr_axes(array), unknown, unknown, component)
    if len(ngff.axes) != array.ndim:
        raise ValueError(
            f"OME-Zarr metadata of {path} names {len(ngff.axes)} axes {ngff.axes} but the array "
            f"{dataset!r} has {array.ndim} dims; fix the metadata or pass dims=."
        )
    axes = tuple(_canonical_axis(n, t) for n, t in zip(ngff.axes, ngff.axis_types))
    return _Source(array, axes, ngff.scales[dataset], ngff.units, component)


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


def _read_tiff(path: Path, component: str | None) -> _Source:
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
    return _Source(array, axes, scale, units)


# ------------------------------------------------------------------------- .npy


def _read_npy(path: Path, component: str | None) -> _Source:
    if component is not None:
        raise ValueError(f"component= applies to Zarr groups only; {path} is a .npy file. Remove it.")
    try:
        header = np.load(path, mmap_mode="r")
    except ValueError as error:
        raise ValueError(f"{path} cannot be memory-mapped ({error}); save it without pickled objects.") from error
    array = FileArray(str(path), "npy", header.shape, header.dtype)
    del header
    return _Source(array, None, _unknown_per_axis(array.ndim), _unknown_per_axis(array.ndim))


_READERS = {"zarr": _read_zarr, "tiff": _read_tiff, "npy": _read_npy}


def _detect_format(path: Path) -> str:
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


# ------------------------------------------------------------------ labelling


def _parse_dims(dims: str | Sequence[str], ndim: int) -> tuple[str, ...]:
    letters = tuple(str(d).lower() for d in (list(dims) if isinstance(dims, str) else dims))
    unknown = [d for d in letters if d not in DIM_ORDER]
    if unknown:
        raise ValueError(
            f"dims {dims!r} has {unknown}, which are not among t, c, z, y, x; name each axis with one of those."
        )
    if len(set(letters)) != len(letters):
        raise ValueError(f"dims {dims!r} repeats a dim; name each axis once.")
    if len(letters) != ndim:
        raise ValueError(
            f"dims {dims!r} names {len(letters)} axes but the image has {ndim}; give one letter per axis."
        )
    return letters


def _resolve_dims(dims: Any, source: _Source, path: Path) -> tuple[str, ...]:
    ndim = source.array.ndim
    if dims is not None:
        resolved = _parse_dims(dims, ndim)
    elif source.axes is not None:
        unknown = [a for a in source.axes if a not in DIM_ORDER]
        if unknown:
            raise ValueError(
                f"{path} names its axes {source.axes}; {unknown} are not among t, c, z, y, x. "
                f"Pass dims= (e.g. dims='tczyx') to say which axis is which."
            )
        resolved = _parse_dims(source.axes, ndim)
    elif ndim in (2, 3):
        resolved = SPATIAL_DIMS[-ndim:]
    elif ndim > len(DIM_ORDER):
        raise ValueError(f"{path} has {ndim} dims; cccdask reads at most {len(DIM_ORDER)} (t, c, z, y, x).")
    else:
        raise ValueError(
            f"{path} has {ndim} dims {tuple(source.array.shape)} and no axis metadata, so which "
            f"axis is which is ambiguous; pass dims= to name them (e.g. dims='{''.join(DIM_ORDER[-ndim:])}')."
        )
    if "y" not in resolved or "x" not in resolved:
        raise ValueError(f"dims {''.join(resolved)!r} lack y or x; every frame needs y and x axes.")
    return resolved


def _spatial_calibration(dims: tuple[str, ...], source: _Source, path: Path) -> tuple[tuple[float, ...], str]:
    """Voxel size per spatial dim (in (z,) y, x order) and its unit, from the metadata.

    Axes without a size get 1; sizes in other length units than x's are converted to
    x's unit. Without any unit: ``"pixel"`` when every size is 1, else ``"um"`` (the
    convention of :func:`cccdask.frames.prepare_inputs`).
    """
    spatial = [d for d in SPATIAL_DIMS if d in dims]
    known = {
        d: (source.scale[dims.index(d)], source.units[dims.index(d)])
        for d in spatial
        if source.scale[dims.index(d)] is not None
    }
    named_units = [unit for _, unit in known.values() if unit is not None]
    target = known["x"][1] if "x" in known and known["x"][1] is not None else next(iter(named_units), None)
    spacing = []
    for d in spatial:
        size, unit = known.get(d, (1.0, None))
        if unit is not None and unit != target:
            if unit not in LENGTH_UNITS or target not in LENGTH_UNITS:
                raise ValueError(
                    f"{path} gives axis {d} in {unit!r} and another axis in {target!r}, which "
                    f"cccdask cannot convert into each other; pass spacing= and units= explicitly."
                )
            size = convert_length(size, unit, target)
        spacing.append(float(size))
    if target is None:
        target = "pixel" if all(s == 1.0 for s in spacing) else "um"
    return tuple(spacing), target


def _time_calibration(dims: tuple[str, ...], source: _Source) -> tuple[float | None, str | None]:
    if "t" not in dims:
        return None, None
    position = dims.index("t")
    interval, unit = source.scale[position], source.units[position]
    if interval is None:
        return 1.0, "frame"
    return float(interval), unit or ("frame" if interval == 1.0 else "s")


def _frame_chunks(dims: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """One chunk per frame: 1 along t and c, the whole extent along z, y, x."""
    return tuple(1 if d in ("t", "c") else n for d, n in zip(dims, shape))


def _dask_array(source: _Source, dims: tuple[str, ...], path: Path) -> da.Array:
    chunks = _frame_chunks(dims, tuple(source.array.shape))
    stat = os.stat(path)
    identity = (str(path.resolve()), source.component, stat.st_mtime_ns, stat.st_size, dims, chunks)
    name = "open-image-" + tokenize(*identity)
    if isinstance(source.array, zarr.Array):
        return da.from_zarr(source.array, chunks=chunks, name=name)
    meta = np.empty((0,) * source.array.ndim, dtype=source.array.dtype)
    return da.from_array(source.array, chunks=chunks, name=name, meta=meta, asarray=False, lock=False)


def select_channel(array: xr.DataArray, channel: int) -> xr.DataArray:
    """One channel of an image: ``array.isel(c=channel)`` with the ``c`` dim dropped.

    Parameters
    ----------
    array : xarray.DataArray
        An image from :func:`open_image`. Without a ``c`` dim it counts as one channel,
        so ``channel=0`` returns it unchanged.
    channel : int
        Index along ``c``, from 0.

    Returns
    -------
    xarray.DataArray
        Same attrs plus ``attrs["channel"]``; still lazy.

    Raises
    ------
    ValueError
        ``channel`` is not an integer or is outside ``0 .. n_channels - 1``.
    """
    n_channels = int(array.sizes.get("c", 1))
    if isinstance(channel, bool) or not isinstance(channel, Integral):
        raise ValueError(f"channel must be an integer index along c (0 to {n_channels - 1}), not {channel!r}.")
    channel = int(channel)
    source = array.attrs.get("source", "the image")
    if not 0 <= channel < n_channels:
        raise ValueError(
            f"channel {channel} is out of range: {source} has {n_channels} channel"
            f"{'s' if n_channels != 1 else ''} (valid indices 0 to {n_channels - 1})."
        )
    if "c" not in array.dims:
        return array
    selected = array.isel(c=channel)
    selected = selected.drop_vars("c", errors="ignore")
    selected.attrs = {**array.attrs, "channel": channel}
    return selected


def _open_source(path: Path, component: str | None, dims: Any) -> tuple[_Source, tuple[str, ...]]:
    """The stored source of ``path`` (format detected) and its dims in storage order."""
    source = _READERS[_detect_format(path)](path, component)
    return source, _resolve_dims(dims, source, path)


def stored_array(path: str | Path, component: str | None = None, dims: Any = None) -> tuple[Any, tuple[str, ...]]:
    """The array :func:`open_image` reads, without a Dask graph, and its dims in storage order.

    A Zarr array (also for TIFF, through tifffile's Zarr store) or a memory-mapped
    ``.npy``: slicing it reads only the chunks it needs. ``component`` and ``dims`` as
    for :func:`open_image`; no channel is selected.
    """
    source, storage_dims = _open_source(Path(path).expanduser(), component, dims)
    return source.array, storage_dims


def open_image(
    path: str | os.PathLike,
    *,
    component: str | None = None,
    channel: int | None = None,
    dims: str | Sequence[str] | None = None,
    spacing: float | Sequence[float] | None = None,
    units: str | None = None,
) -> xr.DataArray:
    """Open an image lazily as a Dask-backed ``xarray.DataArray``; reads metadata only.

    Parameters
    ----------
    path : str or path-like
        A Zarr v2/v3 array or group, an OME-Zarr image (NGFF 0.4/0.5), a TIFF,
        OME-TIFF or ImageJ hyperstack, or a ``.npy`` file. The format is recognised
        from the content, not the file name.
    component : str, optional
        Path of the array inside a Zarr group. Default: the OME-Zarr level 0 (full
        resolution) array, else the group's only array. A component that names an
        OME-Zarr subgroup opens its level 0.
    channel : int, optional
        Keep only this channel (index along ``c``, from 0); the ``c`` dim is dropped.
    dims : str or sequence of str, optional
        Names of the stored axes in storage order, from ``t, c, z, y, x`` (e.g.
        ``"tcyx"``). Overrides the file's axis metadata. Needed for 4D and 5D arrays
        without metadata; 2D and 3D default to ``yx`` and ``zyx``.
    spacing : float or sequence of float, optional
        Voxel size per spatial axis in ``(z,) y, x`` order, overriding the metadata.
    units : str, optional
        Unit of the spacing (e.g. ``"um"``), overriding the metadata.

    Returns
    -------
    xarray.DataArray
        Dims from ``("t", "c", "z", "y", "x")`` in that order; Dask-backed with one
        chunk per frame (1 along ``t`` and ``c``, whole ``z, y, x``). Coordinates:
        ``z, y, x`` = index times the voxel size (``attrs["units"]``); ``t`` = index
        times the frame interval (``attrs["units"]``) and ``frame`` = index along ``t``.
        Attrs: ``spacing`` (tuple, ``(z,) y, x``), ``units`` (``"pixel"`` when the file
        has no calibration), ``time_interval`` and ``time_units`` (1 ``"frame"`` when
        unknown; None without ``t``), ``source`` (the path), and ``component`` /
        ``channel`` when given.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        Unknown format, a component missing from a group, axes that cannot be named,
        a channel index out of range, invalid dims or spacing.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"Image not found: {path} (no such file or directory).")
    source, storage_dims = _open_source(path, component, dims)

    calibrated_spacing, calibrated_units = _spatial_calibration(storage_dims, source, path)
    spatial = [d for d in SPATIAL_DIMS if d in storage_dims]
    if spacing is not None:
        calibrated_spacing = validate_spacing(spacing, len(spatial))
        if units is None and calibrated_units == "pixel":
            calibrated_units = "um"
    if units is not None:
        calibrated_units = normalise_unit(units) or "pixel"
    time_interval, time_units = _time_calibration(storage_dims, source)

    order = [d for d in DIM_ORDER if d in storage_dims]
    data = _dask_array(source, storage_dims, path).transpose(*[storage_dims.index(d) for d in order])

    coords: dict[str, Any] = {}
    for d, step in zip(spatial, calibrated_spacing):
        coords[d] = xr.Variable(d, np.arange(data.shape[order.index(d)]) * step, attrs={"units": calibrated_units})
    if "t" in order:
        n_frames = data.shape[order.index("t")]
        coords["t"] = xr.Variable("t", np.arange(n_frames) * time_interval, attrs={"units": time_units})
        coords["frame"] = xr.Variable("t", np.arange(n_frames))
    attrs = {
        "spacing": tuple(calibrated_spacing),
        "units": calibrated_units,
        "time_interval": time_interval,
        "time_units": time_units,
        "source": str(path),
    }
    if component is not None:
        attrs["component"] = component
    image = xr.DataArray(data, dims=order, coords=coords, attrs=attrs, name=path.name)
    if channel is not None:
        image = select_channel(image, channel)
    return image
