"""Lazy image readers: Zarr, OME-Zarr, TIFF / OME-TIFF / ImageJ, .npy -> xarray.DataArray.

:func:`open_image` reads only metadata; the pixels stay on disk behind a Dask array
with one chunk per frame along ``t`` and ``c`` (and the whole frame along ``z, y, x``),
so each task of a run reads exactly its own frame; a frame larger than Dask's
``array.chunk-size`` keeps the file's own chunks along ``z, y, x``, so that a tile
reads only its part. The Dask graph holds no pixel data
and no open file handle: Zarr arrays pickle as their store path, and TIFF and .npy
files are wrapped by :class:`FileArray`, which pickles as its path and opens the file
again in each worker process.

Dims are named from ``t, c, z, y, x`` and returned in that order; ``z, y, x`` carry
coordinates in physical units (index times voxel size) and ``t`` the time of each
frame (index times the frame interval) plus a ``frame`` index coordinate.
"""

from __future__ import annotations

import math
import os
from numbers import Integral
from pathlib import Path
from typing import Any, Mapping, Sequence

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
from dask.array.core import normalize_chunks
from dask.base import tokenize
from dask.utils import parse_bytes

from cccdask.frames import validate_spacing
from cccdask.io.formats import DIM_ORDER, READERS, SPATIAL_DIMS, SUPPORTED_FORMATS, FileArray, Source, detect_format
from cccdask.io.ome import LENGTH_UNITS, convert_length, normalise_unit

__all__ = ["open_image", "stored_array", "select_channel", "describe_image", "FileArray", "DIM_ORDER", "SUPPORTED_FORMATS"]


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


def _resolve_dims(dims: Any, source: Source, path: Path) -> tuple[str, ...]:
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


def _spatial_calibration(dims: tuple[str, ...], source: Source, path: Path) -> tuple[tuple[float, ...], str]:
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


def _time_calibration(dims: tuple[str, ...], source: Source) -> tuple[float | None, str | None]:
    if "t" not in dims:
        return None, None
    position = dims.index("t")
    interval, unit = source.scale[position], source.units[position]
    if interval is None:
        return 1.0, "frame"
    return float(interval), unit or ("frame" if interval == 1.0 else "s")


def _frame_chunks(dims: tuple[str, ...], shape: tuple[int, ...], dtype: np.dtype, stored,
                  frame_chunks: Mapping[str, int] | None = None) -> tuple:
    """1 along t and c; along z, y, x the whole frame when it fits Dask's ``array.chunk-size``.

    A larger frame keeps the stored chunks along z, y, x (Dask's automatic chunks where
    those are larger too or there are none): the tiled path then reads each tile's part
    alone, where one chunk per frame would make every tile task read the whole frame.
    ``frame_chunks`` (voxels per spatial dim name) overrides both.
    """
    if frame_chunks is not None:
        return tuple(1 if d in ("t", "c") else min(int(frame_chunks[d]), n) for d, n in zip(dims, shape))
    whole = tuple(1 if d in ("t", "c") else n for d, n in zip(dims, shape))
    limit = parse_bytes(dask.config.get("array.chunk-size"))
    if math.prod(whole) * dtype.itemsize <= limit:
        return whole
    stored = tuple(stored) if stored is not None and len(stored) == len(shape) else None
    stored_frame = None if stored is None else math.prod(s for d, s in zip(dims, stored) if d not in ("t", "c"))
    if stored_frame is not None and stored_frame * dtype.itemsize <= limit:
        return tuple(1 if d in ("t", "c") else s for d, s in zip(dims, stored))
    return normalize_chunks(tuple(1 if d in ("t", "c") else "auto" for d in dims), shape, limit=limit, dtype=dtype)


def _dask_array(source: Source, dims: tuple[str, ...], path: Path,
                frame_chunks: Mapping[str, int] | None = None) -> da.Array:
    shape, dtype = tuple(source.array.shape), np.dtype(source.array.dtype)
    chunks = _frame_chunks(dims, shape, dtype, getattr(source.array, "chunks", None), frame_chunks)
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


SHORT_AXIS = 4  # a first axis this short, of axes guessed as z, y, x, may well be channels


def _axes_origin(dims: Any, source: Source) -> str:
    """How the axes were named: ``"dims"`` (given), ``"metadata"`` (the file's) or ``"guessed"``."""
    return "dims" if dims is not None else ("metadata" if source.axes is not None else "guessed")


def _check_guessed_channel(path: Path, storage_dims: tuple[str, ...], shape: tuple[int, ...]) -> None:
    """A channel asked of a file whose axes were guessed as z, y, x and whose first axis is short.

    A plain two-channel TIFF or .npy of shape (2, 256, 256) is otherwise read as a z-stack of
    2 planes: ``channel: 0`` would silently take both planes as one 3D frame.
    """
    if "c" in storage_dims or storage_dims[0] != "z" or shape[0] > SHORT_AXIS:
        return
    suggestion = "c" + "".join(storage_dims[1:])
    raise ValueError(
        f"{path} has no axis metadata, so its axes were guessed as {', '.join(storage_dims)} for shape "
        f"{tuple(shape)}; a channel was asked for and its first axis is short ({shape[0]}), like channels. "
        f"Name the axes: dims: {suggestion} (dims='{suggestion}' in Python) if that axis holds the channels, "
        f"or dims: {''.join(storage_dims)} if it is a z-stack (then without a channel)."
    )


def describe_image(image: xr.DataArray) -> str:
    """The axes and calibration settled for one opened image, in one line (for logs and ``validate``)."""
    origin = {"dims": "given by dims", "metadata": "from the file's metadata",
              "guessed": "guessed: the file names no axes"}.get(image.attrs.get("axes_from"), "")
    axes = image.attrs.get("axes", "".join(image.dims))
    text = f"axes {axes} ({origin})" if origin else f"axes {axes}"
    if image.attrs.get("channel") is not None:
        text += f", channel {image.attrs['channel']}"
    spacing = image.attrs.get("spacing")
    if spacing is not None:
        units = image.attrs.get("units")
        dims = [d for d in SPATIAL_DIMS if d in image.dims]
        text += f"; voxel size {', '.join(f'{d} {v:g}' for d, v in zip(dims, spacing))} {units}"
        if units == "pixel":
            text += " (no calibration in the file)"
    if image.attrs.get("time_interval") is not None:
        unit = image.attrs.get("time_units")
        text += f"; frame interval {image.attrs['time_interval']:g} {unit}"
        if unit == "frame":
            text += " (none in the file)"
    return text


def _open_source(path: Path, component: str | None, dims: Any) -> tuple[Source, tuple[str, ...]]:
    """The stored source of ``path`` (format detected) and its dims in storage order."""
    source = READERS[detect_format(path)](path, component)
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
    frame_chunks: Mapping[str, int] | None = None,
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
    frame_chunks : mapping of str to int, optional
        Dask chunk edge (voxels) per spatial dim, e.g. ``{"z": 64, "y": 128, "x": 128}``,
        instead of the default below: each chunk is then read on its own (the tiled
        path reads a frame tile by tile this way).

    Returns
    -------
    xarray.DataArray
        Dims from ``("t", "c", "z", "y", "x")`` in that order; Dask-backed with one
        chunk per frame (1 along ``t`` and ``c``, whole ``z, y, x``; a frame larger
        than Dask's ``array.chunk-size``, 128 MiB by default, on the file's chunks along
        ``z, y, x``). Coordinates:
        ``z, y, x`` = index times the voxel size (``attrs["units"]``); ``t`` = index
        times the frame interval (``attrs["units"]``) and ``frame`` = index along ``t``.
        Attrs: ``spacing`` (tuple, ``(z,) y, x``), ``units`` (``"pixel"`` when the file
        has no calibration), ``time_interval`` and ``time_units`` (1 ``"frame"`` when
        unknown; None without ``t``), ``source`` (the path), ``axes`` (the stored axes, in
        storage order) and ``axes_from`` (``"metadata"``, ``"dims"`` or ``"guessed"``), and
        ``component`` / ``channel`` when given.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        Unknown format, a component missing from a group, axes that cannot be named,
        a channel index out of range, a channel asked of a file whose axes were guessed
        as ``z, y, x`` with a short (<= 4) first axis (name them with ``dims=``), invalid
        dims or spacing.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"Image not found: {path} (no such file or directory).")
    source, storage_dims = _open_source(path, component, dims)
    origin = _axes_origin(dims, source)
    if channel is not None and origin == "guessed":
        _check_guessed_channel(path, storage_dims, tuple(source.array.shape))

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
    data = _dask_array(source, storage_dims, path, frame_chunks).transpose(*[storage_dims.index(d) for d in order])

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
        "axes": "".join(storage_dims),
        "axes_from": origin,
    }
    if component is not None:
        attrs["component"] = component
    image = xr.DataArray(data, dims=order, coords=coords, attrs=attrs, name=path.name)
    if channel is not None:
        image = select_channel(image, channel)
    return image
