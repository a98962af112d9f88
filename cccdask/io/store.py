"""The results store: one Zarr v3 group written through xarray, filled frame by frame.

Layout (``xr.open_zarr(store)`` shows it as one Dataset):

* coordinates ``t`` (physical time, ``units`` attr), ``frame`` (index along ``t``),
  ``distance`` (physical units), and ``shift_z/y/x`` when correlograms are stored;
* per-frame variables over ``t`` (``mean``, ``sigma``, ``confidence``, ...), the
  profiles over ``(t, distance)``, image-sized variables over ``(t, [z,] y, x)``
  (contribution images, coefficient maps) chunked like the input, and any other
  per-frame output (coefficients, preprocessing records);
* ``frame_quality`` (uint8 bit mask, CF ``flag_masks``/``flag_meanings``): the quality
  warnings of each frame's fit (:mod:`cccdask.quality`), written when the run finalises;
* the completion record: ``frame_status`` (int8: 0 missing, 1 ok, 2 invalid frame,
  3 fit failed) and ``frame_error`` (the reason, empty when none), written only by the
  driver after a frame's writes finished;
* root attrs: ``cccdask_status`` (``"running"`` until the run finalised, then
  ``"complete"``), the resolved config, input paths, versions, and OME-Zarr (NGFF 0.5)
  ``multiscales`` metadata naming the image-sized arrays so OME-Zarr viewers open them.

Image-sized per-frame arrays (contributions, masks, maps) and correlograms are chunked
``frames_per_task`` along ``t``, aligned with the tasks, so no two tasks ever write the
same chunk. Small per-frame arrays (scalars, profiles, coefficients) are chunked in
blocks of up to 1024 frames and written only by the driver
(:mod:`cccdask.pipeline.blocks`). The store is created complete (all
metadata) in a temporary folder and renamed into place, so a store at the path always
has its full layout; frames not yet written read as NaN (fill value).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import threading
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from cccdask.quality import QUALITY_ATTRS

FRAME_MISSING = 0
FRAME_OK = 1
FRAME_INVALID = 2
FRAME_FIT_FAILED = 3
FRAME_STATUS_NAMES = {
    FRAME_MISSING: "missing",
    FRAME_OK: "ok",
    FRAME_INVALID: "invalid frame",
    FRAME_FIT_FAILED: "fit failed",
}

STORE_FORMAT = 1
STATUS_RUNNING = "running"
STATUS_COMPLETE = "complete"

# NGFF unit names for the unit strings cccdask uses
_NGFF_UNITS = {
    "um": "micrometer", "µm": "micrometer", "micron": "micrometer", "micrometer": "micrometer",
    "nm": "nanometer", "nanometer": "nanometer", "mm": "millimeter", "millimeter": "millimeter",
    "m": "meter", "meter": "meter", "pm": "picometer", "angstrom": "angstrom",
    "s": "second", "sec": "second", "second": "second", "ms": "millisecond",
    "millisecond": "millisecond", "min": "minute", "minute": "minute", "h": "hour", "hour": "hour",
}


@dataclass(frozen=True)
class VariableLayout:
    """One per-frame output in the store.

    Attributes
    ----------
    name : str
    dims : tuple of str
        Starting with ``"t"``.
    shape : tuple of int
    dtype : numpy.dtype
    chunks : tuple of int
        ``frames_per_task`` along ``t``.
    image : bool
        Image-sized (frame dims): listed in the OME-Zarr metadata.
    attrs : dict
    """

    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]
    image: bool = False
    attrs: dict = field(default_factory=dict)

    @property
    def fill_value(self):
        kind = np.dtype(self.dtype).kind
        if kind == "f":
            return np.nan
        if kind == "b":
            return False
        if kind in "iu":
            return 0
        return ""


@dataclass(frozen=True)
class StoreLayout:
    """Everything needed to create an empty store.

    Attributes
    ----------
    n_frames : int
    variables : tuple of VariableLayout
    coords : dict of str to xarray.Variable
        ``t``, ``frame``, ``distance`` and any other dim coordinate.
    spatial_dims : tuple of str
    spacing : tuple of float
    units : str
    time_interval : float
    time_units : str
    """

    n_frames: int
    variables: tuple[VariableLayout, ...]
    coords: dict[str, xr.Variable]
    spatial_dims: tuple[str, ...]
    spacing: tuple[float, ...]
    units: str
    time_interval: float
    time_units: str
    attrs: dict = field(default_factory=dict)

    def variable(self, name: str) -> VariableLayout:
        for v in self.variables:
            if v.name == name:
                return v
        raise KeyError(name)


def identity_hash(identity: dict[str, Any]) -> str:
    """A short stable hash of a run's analysis identity (see ``PipelineConfig.analysis_identity``)."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def versions() -> dict[str, str]:
    """Versions of the software that decides the numbers (provenance)."""
    import dask
    import scipy

    import cccdask

    return {
        "cccdask": cccdask.__version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "dask": dask.__version__,
        "xarray": xr.__version__,
        "zarr": zarr.__version__,
    }


def ngff_unit(unit: str | None) -> str | None:
    """The NGFF (UDUNITS-2) name of a unit, or None when it has none (e.g. pixel)."""
    if unit is None:
        return None
    return _NGFF_UNITS.get(str(unit).strip().lower())


def ngff_multiscales(
    images: list[tuple[str, tuple[str, ...]]],
    spacing: tuple[float, ...],
    units: str | None,
    time_interval: float = 1.0,
    time_units: str | None = None,
) -> dict[str, Any]:
    """The ``ome`` attribute (NGFF 0.5) for single-level images in one group.

    Parameters
    ----------
    images : list of (path, dims)
        Array path (relative to the group) and its dims, from ``t, c, z, y, x``.
    spacing : tuple of float
        Voxel size per spatial dim present, ``(z,) y, x`` order.
    """
    multiscales = []
    for path, dims in images:
        spatial = iter(spacing)
        axes, scale = [], []
        for dim in dims:
            if dim == "t":
                axis = {"name": "t", "type": "time"}
                unit = ngff_unit(time_units)
                scale.append(float(time_interval or 1.0))
            elif dim == "c":
                axis = {"name": "c", "type": "channel"}
                unit = None
                scale.append(1.0)
            else:
                axis = {"name": dim, "type": "space"}
                unit = ngff_unit(units)
                scale.append(float(next(spatial)))
            if unit is not None:
                axis["unit"] = unit
            axes.append(axis)
        multiscales.append({
            "name": path,
            "axes": axes,
            "datasets": [{"path": path, "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
        })
    return {"version": "0.5", "multiscales": multiscales}


def fast_compressors() -> list:
    """Blosc LZ4 with byte shuffle: 2-5x faster than Zarr's default zstd to read and write
    (performance.md), at a somewhat larger size. Used for the results and the demo data."""
    from zarr.codecs import BloscCodec

    return [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]


def _consolidate(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(str(path))


def _template(layout: StoreLayout, attrs: dict[str, Any]) -> tuple[xr.Dataset, dict[str, Any]]:
    """The empty Dataset (lazy fill values) and its encoding."""
    data_vars, encoding = {}, {}
    for v in layout.variables:
        if v.dtype.kind == "O":  # text (reasons): small, written eagerly with the layout
            data = np.full(v.shape, "", dtype=object)
        else:
            data = da.full(v.shape, v.fill_value, dtype=v.dtype, chunks=v.chunks)
        data_vars[v.name] = xr.Variable(v.dims, data, attrs=v.attrs)
        encoding[v.name] = {"chunks": v.chunks}
        if v.dtype.kind in "biuf":
            encoding[v.name]["compressors"] = fast_compressors()
        if v.dtype.kind == "f":
            encoding[v.name]["_FillValue"] = np.nan
    n = layout.n_frames
    data_vars["frame_status"] = xr.Variable(
        ("t",), np.zeros(n, dtype=np.int8),
        attrs={"description": "completion record: 0 missing, 1 ok, 2 invalid frame, 3 fit failed",
               "flag_values": [0, 1, 2, 3], "flag_meanings": "missing ok invalid_frame fit_failed"},
    )
    data_vars["frame_error"] = xr.Variable(
        ("t",), np.full(n, "", dtype=object), attrs={"description": "why a frame has no result (empty: none)"}
    )
    data_vars["frame_quality"] = xr.Variable(
        ("t",), np.zeros(n, dtype=np.uint8),
        attrs={**QUALITY_ATTRS, "description": "quality warnings of each frame's fit, set when the run "
               "finalises (cccdask.quality; 0: none)"},
    )
    encoding["frame_quality"] = {"chunks": (max(n, 1),)}
    encoding["frame_status"] = {"chunks": (max(n, 1),)}
    encoding["frame_error"] = {"chunks": (max(n, 1),)}
    dataset = xr.Dataset(data_vars, coords=layout.coords, attrs=attrs)
    return dataset, encoding


def create_store(path: Path | str, layout: StoreLayout, attrs: dict[str, Any],
                 initial: dict[str, np.ndarray] | None = None) -> None:
    """Create the empty store at ``path`` atomically (metadata, no frame data).

    The layout (and the ``initial`` arrays, e.g. a mask shared by all frames) is
    written into a temporary sibling folder and renamed into place, so a store at
    ``path`` always has its complete layout and initial data.

    Raises
    ------
    FileExistsError
        ``path`` exists.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists.")
    images = [(v.name, v.dims) for v in layout.variables if v.image]
    attrs = dict(attrs)
    attrs.update({"cccdask_store": STORE_FORMAT, "cccdask_status": STATUS_RUNNING})
    if images:
        attrs["ome"] = ngff_multiscales(
            images, layout.spacing, layout.units, layout.time_interval, layout.time_units
        )
    dataset, encoding = _template(layout, attrs)
    temporary = path.with_name(f".{path.name}.creating-{uuid.uuid4().hex[:8]}")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            dataset.to_zarr(str(temporary), mode="w-", zarr_format=3, consolidated=True,
                            compute=False, encoding=encoding)
        for name, values in (initial or {}).items():
            zarr.open_group(str(temporary), mode="r+", use_consolidated=False)[name][...] = values
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)


def read_store_attrs(path: Path | str) -> dict[str, Any] | None:
    """The root attrs of a cccdask store, or None when ``path`` holds no cccdask store."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        return None
    try:
        group = zarr.open_group(str(path), mode="r", use_consolidated=False)
    except Exception:  # not a Zarr group at all
        return None
    attrs = dict(group.attrs)
    return attrs if "cccdask_store" in attrs else None


def update_store_attrs(path: Path | str, **attrs: Any) -> None:
    """Set root attrs (driver only) and refresh the consolidated metadata."""
    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    group.attrs.update(attrs)
    _consolidate(Path(path))


def remove_store(path: Path | str) -> None:
    """Delete a store (only called for cccdask stores, or with the user's --overwrite)."""
    path = Path(path)
    # rename first: a half-deleted store is never seen at the path
    doomed = path.with_name(f".{path.name}.deleting-{uuid.uuid4().hex[:8]}")
    os.replace(path, doomed)
    shutil.rmtree(doomed)


_PARTIAL_WRITE = re.compile(r"\.[0-9a-f]{32}\.partial$")  # zarr LocalStore's temporary file of one write


def remove_interrupted_writes(path: Path | str) -> list[Path]:
    """Delete what writes cut off by a killed run left behind; return what was deleted.

    Zarr writes each chunk to a temporary ``<chunk>.<hex>.partial`` file and renames it,
    so a killed writer leaves that file (never a torn chunk); a killed :func:`create_store`
    or :func:`remove_store` leaves a hidden ``.<name>.creating-*`` / ``.deleting-*``
    sibling. Call only while no other run writes this store.
    """
    path = Path(path)
    leftovers = [p for p in path.rglob("*.partial") if p.is_file() and _PARTIAL_WRITE.search(p.name)]
    for pattern in (f".{path.name}.creating-*", f".{path.name}.deleting-*"):
        leftovers += list(path.parent.glob(pattern))
    for leftover in leftovers:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    return leftovers


@dataclass
class CompletionRecord:
    """Which frames are done: ``status`` (int8 per frame) and ``errors`` (reason per frame)."""

    status: np.ndarray
    errors: np.ndarray

    @property
    def complete(self) -> np.ndarray:
        """Bool per frame: recorded (ok, or a per-frame failure kept as data)."""
        return self.status != FRAME_MISSING

    @property
    def missing(self) -> np.ndarray:
        """Indices of the frames still to compute."""
        return np.flatnonzero(self.status == FRAME_MISSING)


def read_completion(path: Path | str) -> CompletionRecord:
    """The completion record of a store."""
    group = zarr.open_group(str(path), mode="r", use_consolidated=False)
    status = np.asarray(group["frame_status"][...], dtype=np.int8)
    errors = np.asarray(group["frame_error"][...], dtype=object)
    return CompletionRecord(status=status, errors=errors)


def write_completion(path: Path | str, record: CompletionRecord) -> None:
    """Write the completion record (driver only; one chunk each, replaced atomically)."""
    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    # the reasons first: a frame is complete once its status says so
    group["frame_error"][...] = np.asarray(record.errors, dtype=object)
    group["frame_status"][...] = np.asarray(record.status, dtype=np.int8)


def write_quality(path: Path | str, flags: np.ndarray) -> bool:
    """Write the per-frame quality bit mask (driver, when finalising); False for a store without it."""
    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    if "frame_quality" not in group:
        return False
    group["frame_quality"][...] = np.asarray(flags, dtype=np.uint8)
    return True


_ARRAYS: dict[tuple[str, str], dict[str, zarr.Array]] = {}
_ARRAYS_LOCK = threading.Lock()


def _writable_arrays(path: str, identity: str) -> dict[str, zarr.Array]:
    """The store's arrays opened for writing, cached per process (tasks of one run share them)."""
    key = (path, identity)
    with _ARRAYS_LOCK:
        arrays = _ARRAYS.get(key)
        if arrays is None:
            group = zarr.open_group(path, mode="r+", use_consolidated=True)
            if group.attrs.get("identity_hash") != identity:
                raise RuntimeError(
                    f"the store {path} was replaced by a run with a different config while this "
                    f"run was writing to it."
                )
            arrays = dict(group.arrays())
            if len(_ARRAYS) > 16:
                _ARRAYS.clear()
            _ARRAYS[key] = arrays
        return arrays


def write_frames(path: str, identity: str, start: int, arrays: dict[str, np.ndarray]) -> None:
    """Write the results of frames ``start .. start + n - 1`` (one task's own chunks).

    Parameters
    ----------
    path : str
        The store.
    identity : str
        The store's ``identity_hash`` (guards against writing into a replaced store).
    start : int
        First frame index; ``start`` is a multiple of the t chunk size.
    arrays : dict of str to numpy.ndarray
        Per variable, the frames stacked along a first axis.
    """
    opened = _writable_arrays(path, identity)
    for name, values in arrays.items():
        opened[name][start : start + len(values)] = values


def read_frames(path: str, name: str, start: int, stop: int) -> np.ndarray:
    """The stored values of frames ``start .. stop - 1`` of one variable (fill where unwritten)."""
    values = np.asarray(zarr.open_array(f"{path}/{name}", mode="r")[start:stop])
    return values.copy() if not values.flags.writeable else values


def write_ome_zarr(
    path: Path | str,
    data: np.ndarray,
    dims: str,
    spacing: tuple[float, ...],
    units: str = "um",
    time_interval: float = 1.0,
    time_units: str = "s",
    chunks: tuple[int, ...] | None = None,
) -> Path:
    """Write one image as OME-Zarr (NGFF 0.5, Zarr v3, a single resolution level ``0``).

    Parameters
    ----------
    data : numpy.ndarray
        The image, axes in ``dims`` order (from ``t, c, z, y, x``).
    dims : str
        E.g. ``"tcyx"``.
    spacing : tuple of float
        Voxel size per spatial axis present, ``(z,) y, x`` order.
    chunks : tuple of int, optional
        Default: one chunk per frame and channel.
    """
    path = Path(path)
    if chunks is None:
        chunks = tuple(1 if d in "tc" else n for d, n in zip(dims, data.shape))
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs["ome"] = ngff_multiscales([("0", tuple(dims))], tuple(spacing), units, time_interval, time_units)
    array = group.create_array("0", shape=data.shape, dtype=data.dtype, chunks=chunks,
                               dimension_names=list(dims), compressors=fast_compressors())
    array[...] = data
    return path
