"""A run: plan the frames, submit one task per frame (or batch), record completion, resume.

The driver (:func:`run`) never touches pixel data. It opens the inputs lazily (metadata
only) to validate them, creates the results store, and submits tasks that each carry a
small :class:`FramePlan` (paths, settings) and a range of frame indices. A task reads
its own frames from storage, runs the CCC kernel (and the coefficients and
preprocessing when configured) once per frame for all outputs, and writes the results
into the store chunks it owns. Only when a task has returned does the driver record
its frames in the completion record (``frame_status``), so a frame marked complete
always has its data on disk. A rerun with the same config computes only the frames
still missing; a different config on an existing store is refused unless overwrite.

Frames that cannot be analysed (empty mask, NaN/Inf pixels: InvalidFrameError) and
frames whose Gaussian fit failed are results too: recorded with their status and
reason, never a crash of the run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import signal
import time
import uuid
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import dask
import numpy as np
import xarray as xr

from cccdask.ccc import variable_attrs
from cccdask.config import PipelineConfig, config_json, load_config
from cccdask.frames import InvalidFrameError, prepare_inputs
from cccdask.io import store as results_store
from cccdask.io.store import (
    FRAME_FIT_FAILED,
    FRAME_INVALID,
    FRAME_MISSING,
    FRAME_OK,
    CompletionRecord,
    StoreLayout,
    VariableLayout,
)

FIT_FAILED_REASON = "no valid Gaussian fit (sigma <= pixel size, mean < -pixel size, height < 0 or no convergence)"
GENERATED_MASK = "generated_mask"
AUTO_VOXELS_PER_TASK = 2**22
_PREPROCESS_NAMES = {"shift": "chromatic_shift"}


class PipelineError(RuntimeError):
    """A run that could not finish; the store (if any) is left incomplete and resumable."""


class StoreConflictError(ValueError):
    """The output store exists and was written with a different config."""


class InputReadError(RuntimeError):
    """A task could not read its frames from an input file (corrupted or truncated data)."""


class FrameTooLargeError(ValueError):
    """One frame needs more memory than a worker thread has."""


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class SourceSpec:
    """How a task opens one input lazily (see :func:`cccdask.io.readers.open_image`)."""

    path: str
    channel: int | None = None
    component: str | None = None
    dims: str | None = None

    def open(self) -> xr.DataArray:
        stat = os.stat(self.path)
        return _open_source(self, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _open_source(spec: SourceSpec, mtime_ns: int) -> xr.DataArray:
    from cccdask.io.readers import open_image

    return open_image(spec.path, component=spec.component, channel=spec.channel, dims=spec.dims)


def _read_frame(spec: SourceSpec, index: int) -> np.ndarray:
    """Frame ``index`` of an input (the whole input when it has no t dim)."""
    array = spec.open()
    if "t" in array.dims:
        array = array.isel(t=index)
    return np.asarray(array.data.compute(scheduler="synchronous"))


@lru_cache(maxsize=2)
def _read_shared(spec: SourceSpec, mtime_ns: int) -> np.ndarray:
    return _read_frame(spec, 0)


def resolve_frames_per_task(setting: int | str, frame_shape: tuple[int, ...], n_frames: int) -> int:
    """Frames per task: the setting, or for "auto" enough frames for ~4 Mvoxels of work.

    Small frames are batched so that reading, writing and scheduling are shared by
    several frames; a series always keeps at least ~16 tasks to spread over workers.
    """
    if setting != "auto":
        return int(setting)
    by_size = math.ceil(AUTO_VOXELS_PER_TASK / max(math.prod(frame_shape), 1))
    by_count = math.ceil(n_frames / 16)
    return int(max(1, min(by_size, by_count, 64)))


@dataclass(frozen=True)
class FramePlan:
    """Everything a task needs, small enough to travel with every task.

    Attributes
    ----------
    store, identity : str
        The results store and its identity hash.
    image1, image2, mask : SourceSpec
        Inputs; ``mask`` None for no mask. ``mask_per_frame``: the mask has a t dim.
    spacing, units, frame_shape, spatial_dims
        Frame geometry (physical units).
    ccc : dict
        Settings for :func:`cccdask.kernels.ccc.ccc_frame` and the profile geometry.
    coefficients : dict or None
        Keyword arguments of :func:`cccdask.coefficients.coefficients`.
    preprocess : dict or None
        The preprocessing settings (shift already estimated), as a dict.
    shared_generated_mask : bool
        The mask is one generated mask stored in the results store.
    background_regions : tuple of SourceSpec or None
    variables : tuple of (name, shape without t, dtype, fill value)
        What the task writes.
    """

    store: str
    identity: str
    image1: SourceSpec
    image2: SourceSpec
    mask: SourceSpec | None
    mask_per_frame: bool
    spacing: tuple[float, ...]
    units: str
    frame_shape: tuple[int, ...]
    spatial_dims: tuple[str, ...]
    ccc: dict
    coefficients: dict | None = None
    preprocess: dict | None = None
    shared_generated_mask: bool = False
    background_regions: tuple[SourceSpec | None, SourceSpec | None] = (None, None)
    variables: tuple = ()
    frames_per_task: int = 1

    def geometry(self):
        from cccdask.kernels.profile import profile_geometry

        return profile_geometry(self.frame_shape, self.spacing, self.ccc["max_distance"], self.ccc["fiji_compat"])


def _settings_of(plan: FramePlan):
    return _preprocess_settings(json.dumps(plan.preprocess, sort_keys=True))


@lru_cache(maxsize=4)
def _preprocess_settings(settings_json: str):
    from cccdask.preprocess import Preprocessing

    return Preprocessing.model_validate(json.loads(settings_json))


# --------------------------------------------------------------------------- one frame


def analyse_frame(
    plan: FramePlan,
    image1: np.ndarray,
    image2: np.ndarray,
    mask: np.ndarray | None,
    background_regions: tuple = (None, None),
    geometry=None,
) -> tuple[dict[str, tuple[tuple[str, ...], np.ndarray]], int, str]:
    """All outputs of one frame: preprocessing, CCC, coefficients.

    Returns
    -------
    outputs : dict
        name -> (dims without t, array).
    status : int
        FRAME_OK, FRAME_FIT_FAILED or FRAME_INVALID (then ``outputs`` is empty).
    reason : str
        Why the frame has no (valid) result; empty when ok.
    """
    from cccdask.kernels.ccc import ccc_frame, output_dims

    geometry = geometry if geometry is not None else plan.geometry()
    spatial = plan.spatial_dims
    outputs: dict[str, tuple[tuple[str, ...], np.ndarray]] = {}
    try:
        if plan.preprocess is not None:
            from cccdask.preprocess import preprocess_frame

            image1, image2, mask, record = preprocess_frame(
                image1, image2, mask, _settings_of(plan), plan.spacing, background_regions=background_regions
            )
            for key, value in record.items():
                name = _PREPROCESS_NAMES.get(key, key)
                value = np.asarray(value, dtype=float)
                outputs[name] = (("axis",) if value.ndim == 1 else (), value)
            if plan.preprocess.get("mask") is not None and not plan.shared_generated_mask:
                outputs["mask_used"] = (spatial, np.asarray(mask, dtype=np.uint8))
        options = {k: plan.ccc[k] for k in ("mode", "contributions", "intermediates", "dtype")}
        results = ccc_frame(image1, image2, mask, geometry, **options)
        for name, value in results.items():
            outputs[name] = (output_dims(name, spatial), np.asarray(value))
        if plan.coefficients is not None:
            from cccdask.coefficients import coefficients

            with dask.config.set(scheduler="synchronous"):
                table = coefficients(image1, image2, mask, spacing=plan.spacing, **plan.coefficients)
                for name, variable in table.data_vars.items():
                    dims = tuple(variable.dims)
                    if "t" in dims:
                        variable = variable.isel(t=0)
                        dims = tuple(variable.dims)
                    outputs[name] = (dims, np.asarray(variable.values))
    except InvalidFrameError as error:
        return {}, FRAME_INVALID, str(error)
    fit_ok = outputs.get("fit_ok")
    if fit_ok is not None and not bool(fit_ok[1]):
        return outputs, FRAME_FIT_FAILED, _fit_failed_reason(image1, image2, mask)
    return outputs, FRAME_OK, ""


def _fit_failed_reason(image1: np.ndarray, image2: np.ndarray, mask: np.ndarray | None) -> str:
    """Why a frame has no fit: a channel without signal inside the mask (e.g. all zero), or the fit."""
    for name, image in (("image1", image1), ("image2", image2)):
        inside = np.asarray(image) if mask is None else np.asarray(image)[np.asarray(mask) != 0]
        if inside.size and inside.min() == inside.max():
            return f"{name} is constant inside the mask (every voxel {inside.flat[0]:g}): no signal to correlate"
    return FIT_FAILED_REASON


class _StoredArray:
    """Reads frames of one input straight from its stored array, in one call per batch.

    The same array, axes and channel that :func:`cccdask.io.readers.open_image` uses
    (through the readers' own format detection and axis resolution), without a Dask
    graph: computing a slice of ``open_image``'s lazy array costs a cull of the whole
    series' graph (O(frames)) and one Zarr call per chunk; reading a batch here is one
    Zarr (or TIFF/.npy) call. Built only when its shape agrees with ``open_image``'s.
    """

    def __init__(self, spec: SourceSpec, expected: xr.DataArray):
        from cccdask.io.readers import stored_array

        self.array, storage_dims = stored_array(spec.path, spec.component, spec.dims)
        select = spec.channel is not None and "c" in storage_dims
        self.index = [spec.channel if (d == "c" and select) else slice(None) for d in storage_dims]
        kept = [d for d in storage_dims if not (d == "c" and select)]
        self.t_axis = kept.index("t") if "t" in kept else None
        self.order = [kept.index(d) for d in expected.dims]
        shape = tuple(self.array.shape[storage_dims.index(d)] for d in expected.dims)
        if shape != tuple(expected.shape):
            raise ValueError(f"stored shape {shape} differs from the opened image {tuple(expected.shape)}")

    def read(self, start: int, stop: int) -> np.ndarray:
        index = list(self.index)
        if self.t_axis is not None:
            position = [i for i, s in enumerate(index) if isinstance(s, slice)][self.t_axis]
            index[position] = slice(start, stop)
        return np.asarray(self.array[tuple(index)]).transpose(self.order)


@lru_cache(maxsize=16)
def _stored_array(spec: SourceSpec, mtime_ns: int) -> _StoredArray | None:
    try:
        return _StoredArray(spec, spec.open())
    except Exception:  # the readers changed shape: read through the Dask graph instead
        return None


def _read_batch(spec: SourceSpec | None, start: int, stop: int):
    """Frames ``start..stop-1`` of an input (None when absent), with a leading frame axis.

    An input without a t dim (a single frame, a shared mask) is one frame for all.
    """
    if spec is None:
        return None
    try:
        stored = _stored_array(spec, os.stat(spec.path).st_mtime_ns)
        array = spec.open()
        has_t = "t" in array.dims
        if stored is not None:
            data = stored.read(start, stop)
            return data if has_t else data[None]
        data = array.isel(t=slice(start, stop)).data if has_t else array.data[None]
        return np.asarray(data.compute(scheduler="synchronous"))
    except Exception as error:
        frames = f"frame {start}" if stop - start == 1 else f"frames {start}-{stop - 1}"
        raise InputReadError(
            f"cannot read {frames} of {spec.path}" + (f" (channel {spec.channel})" if spec.channel is not None else "")
            + f": {type(error).__name__}: {error}. The file may be corrupted, truncated or changed: repair or "
            f"rewrite it, then rerun the same config"
        ) from error


def _batch_inputs(plan: FramePlan, start: int, stop: int):
    """The input arrays of frames ``start..stop-1``, read from storage in one go."""
    mask_spec = plan.mask if plan.mask_per_frame else None
    specs = (plan.image1, plan.image2, mask_spec) + tuple(plan.background_regions)
    image1, image2, masks, *regions = [_read_batch(s, start, stop) for s in specs]
    if plan.shared_generated_mask:
        shared = _read_generated_mask(plan.store, plan.identity)
    elif plan.mask is not None and not plan.mask_per_frame:
        shared = _read_shared(plan.mask, os.stat(plan.mask.path).st_mtime_ns)
    else:
        shared = None

    def frame(batch, k):
        return None if batch is None else batch[min(k, len(batch) - 1)]

    for k in range(stop - start):
        mask = shared if masks is None else masks[k]
        yield frame(image1, k), frame(image2, k), mask, tuple(frame(r, k) for r in regions)


@lru_cache(maxsize=2)
def _read_generated_mask(store: str, identity: str) -> np.ndarray:
    import zarr

    return np.asarray(zarr.open_group(store, mode="r", use_consolidated=False)[GENERATED_MASK][...]) != 0


def compute_frames(plan: FramePlan, start: int, stop: int) -> list[tuple[int, int, str]]:
    """The task: read frames ``start..stop-1``, analyse them, write their store chunks.

    Returns ``(frame, status, reason)`` per frame; the driver records them.
    """
    n = stop - start
    arrays = {
        name: np.full((n,) + tuple(shape), fill, dtype=dtype) for name, shape, dtype, fill in plan.variables
    }
    dtypes = {name: dtype for name, _, dtype, _ in plan.variables}
    geometry = plan.geometry()
    outcomes = []
    for k, (index, inputs) in enumerate(zip(range(start, stop), _batch_inputs(plan, start, stop))):
        outputs, status, reason = analyse_frame(plan, *inputs, geometry=geometry)
        for name, (_, value) in outputs.items():
            if name in arrays:
                arrays[name][k] = np.asarray(value).astype(dtypes[name], copy=False)
        outcomes.append((index, status, reason))
    results_store.write_frames(plan.store, plan.identity, start, arrays)
    return outcomes


# --------------------------------------------------------------------------- planning


@dataclass
class RunInputs:
    """The validated inputs of a run (lazy)."""

    frames: Any  # cccdask.frames.Frames
    image1: SourceSpec
    image2: SourceSpec
    mask: SourceSpec | None
    chunks: tuple[int, ...]


def _open_checked(source, label: str) -> xr.DataArray:
    from cccdask.io.readers import open_image

    try:
        array = open_image(source.path, component=source.component, channel=source.channel, dims=source.dims)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{label}: {error}") from None
    except ValueError as error:
        raise ValueError(f"{label}: {error}") from None
    if "c" in array.dims:
        n = array.sizes["c"]
        raise ValueError(
            f"{label}: {source.path} has {n} channels; set {label}.channel to one of 0..{n - 1}."
        )
    return array


def open_inputs(config: PipelineConfig) -> RunInputs:
    """Open and validate the inputs (metadata only).

    Raises
    ------
    FileNotFoundError, ValueError
        Missing files, channels out of range, shape mismatches between the channels
        and the mask; the message names the config key.
    """
    section = config.input
    image1 = _open_checked(section.image1, "input.image1")
    image2 = _open_checked(section.image2, "input.image2")
    mask = None if section.mask is None else _open_checked(section.mask, "input.mask")
    if mask is not None and "t" in mask.dims and "t" not in image1.dims:
        raise ValueError("input.mask has a t dim but the images are a single frame; give one mask frame.")
    if mask is not None and "t" in mask.dims and mask.sizes["t"] != image1.sizes.get("t"):
        raise ValueError(
            f"input.mask has {mask.sizes['t']} frames but the images have {image1.sizes.get('t')}; "
            f"give one mask per frame or a single mask frame."
        )
    try:
        frames = prepare_inputs(image1, image2, mask, spacing=section.spacing, units=section.units)
    except ValueError as error:
        raise ValueError(f"input: {error}") from None
    if frames.mask is not None and "t" not in frames.mask.dims and not bool(np.asarray(frames.mask.any().values)):
        raise ValueError(
            f"input.mask: {section.mask.path} has no voxel inside (all zero), so every frame would be empty; "
            f"give a mask with non-zero voxels where the signal is, or remove input.mask to use whole frames."
        )
    chunks = tuple(c[0] for c in frames.image1.chunks[1:]) if frames.lazy else frames.frame_shape

    def spec(source):
        return None if source is None else SourceSpec(str(source.path), source.channel, source.component, source.dims)

    return RunInputs(frames, spec(section.image1), spec(section.image2), spec(section.mask), chunks)


def _probe_frame(shape: tuple[int, ...], spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A small smooth two-channel frame (a blob plus texture) to learn the output layout."""
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum(g**2 for g in grid)
    rng = np.random.default_rng(0)
    blob = np.exp(-r2 / 0.3).astype(np.float32)
    image1 = blob * (1 + 0.5 * rng.random(shape, dtype=np.float32))
    image2 = blob * (1 + 0.5 * rng.random(shape, dtype=np.float32))
    return image1, image2, np.ones(shape, dtype=bool)


def _output_layout(plan: FramePlan, n_frames: int, chunks: tuple[int, ...], frames_per_task: int):
    """Names, dims, shapes and dtypes of every per-frame output, from a small probe frame."""
    from cccdask.kernels.profile import profile_geometry

    cap = 64
    if plan.coefficients is not None:
        cap = max(cap, 2 * int(plan.coefficients.get("van_steensel_shifts", 20)) + 3)
    probe_shape = tuple(min(n, cap) for n in plan.frame_shape)
    geometry = plan.geometry()
    probe_geometry = profile_geometry(probe_shape, plan.spacing, plan.ccc["max_distance"], plan.ccc["fiji_compat"])
    image1, image2, mask = _probe_frame(probe_shape, plan.spacing)
    probe_plan = replace(plan, frame_shape=probe_shape, shared_generated_mask=False)
    regions = tuple(None if spec is None else mask for spec in plan.background_regions)
    outputs, status, reason = analyse_frame(probe_plan, image1, image2, mask, regions, geometry=probe_geometry)
    if status == FRAME_INVALID:
        raise PipelineError(f"could not determine the outputs of a frame: {reason}")
    sizes = {"distance": len(geometry.distances), "axis": len(plan.spatial_dims)}
    sizes.update(dict(zip(plan.spatial_dims, plan.frame_shape)))
    sizes.update({f"shift_{d}": n for d, n in zip(plan.spatial_dims, geometry.ccf_shape)})
    layouts = []
    extra_dims = {}
    for name, (dims, value) in outputs.items():
        shape = []
        for dim, n in zip(dims, value.shape):
            if dim not in sizes:
                extra_dims[dim] = n
            shape.append(sizes.get(dim, n))
        image = len(dims) > 0 and set(dims) == set(plan.spatial_dims)
        frame_chunks = tuple(chunks) if image else tuple(shape)
        dtype = value.dtype if value.dtype.kind in "biuf" else np.dtype(object)
        layouts.append(VariableLayout(
            name=name, dims=("t",) + tuple(dims), shape=(n_frames,) + tuple(shape), dtype=np.dtype(dtype),
            chunks=(frames_per_task,) + frame_chunks, image=image,
        ))
    return layouts, extra_dims


def _coordinates(inputs: RunInputs, plan: FramePlan, layouts, extra_dims, coefficient_coords) -> dict:
    frames = inputs.frames
    geometry = plan.geometry()
    n = frames.n_frames
    image1 = frames.image1
    if "t" in image1.coords:
        t_values = np.asarray(image1.coords["t"].values)
        t_attrs = dict(image1.coords["t"].attrs)
    else:
        t_values, t_attrs = np.arange(n, dtype=float), {"units": "frame"}
    t_attrs.setdefault("long_name", "time")
    coords = {
        "t": xr.Variable("t", t_values, attrs=t_attrs),
        "frame": xr.Variable("t", np.arange(n), attrs={"long_name": "frame index"}),
    }
    used = {d for v in layouts for d in v.dims}
    if "distance" in used:
        coords["distance"] = xr.Variable("distance", np.asarray(geometry.distances),
                                         attrs={"units": frames.units, "long_name": "distance"})
    for dim, values in zip(plan.spatial_dims, geometry.shift_coords):
        if f"shift_{dim}" in used:
            coords[f"shift_{dim}"] = xr.Variable(f"shift_{dim}", np.asarray(values), attrs={"units": frames.units})
    for dim, step, size in zip(plan.spatial_dims, frames.spacing, frames.frame_shape):
        if dim in used:
            coords[dim] = xr.Variable(dim, np.arange(size) * step, attrs={"units": frames.units})
    if "axis" in used:
        coords["axis"] = xr.Variable("axis", np.array(plan.spatial_dims, dtype=object))
    for dim in extra_dims:
        if dim in coefficient_coords:
            coords[dim] = coefficient_coords[dim]
    return coords


def _coefficient_coords(plan: FramePlan) -> dict:
    """Coordinates of the coefficients' own dims (e.g. the Van Steensel shift)."""
    if plan.coefficients is None:
        return {}
    from cccdask.coefficients import coefficients

    cap = max(64, 2 * int(plan.coefficients.get("van_steensel_shifts", 20)) + 3)
    shape = tuple(min(n, cap) for n in plan.frame_shape)
    image1, image2, mask = _probe_frame(shape, plan.spacing)
    with dask.config.set(scheduler="synchronous"):
        table = coefficients(image1, image2, mask, spacing=plan.spacing, **plan.coefficients)
    coords = {}
    for name, coord in table.coords.items():
        if name in table.dims and name not in plan.spatial_dims and name != "t":
            values = np.asarray(coord.values)
            if values.dtype.kind == "U":  # variable-length text: a specified Zarr v3 type
                values = values.astype(object)
            coords[name] = xr.Variable(name, values, attrs=dict(coord.attrs))
    coords["_attrs"] = {k: v for k, v in table.attrs.items() if k not in ("spacing", "units")}
    return coords


def estimate_task_memory(config: PipelineConfig, frames, frames_per_task: int) -> int:
    """Bytes one task needs at its peak (an estimate, on the safe side).

    Inputs as read (the whole batch), float32 working copies, the padded FFT buffers
    and spectra of the correlations, the correlograms, contribution images and
    coefficient maps (image outputs are held for the batch). Needs only the frame
    shape: it runs before anything is planned.
    """
    from cccdask.kernels.correlate import padded_shape
    from cccdask.kernels.profile import shift_range

    shape = tuple(frames.frame_shape)
    voxels = math.prod(shape)
    item = np.dtype(config.ccc.dtype).itemsize
    lo, hi = shift_range(shape, tuple(frames.spacing), config.ccc.max_distance)
    padded = math.prod(padded_shape(shape, lo, hi))
    ccf = math.prod(h - l + 1 for l, h in zip(lo, hi))
    read = voxels * (frames.image1.dtype.itemsize + frames.image2.dtype.itemsize
                     + (frames.mask.dtype.itemsize if frames.mask is not None else 0))
    working = voxels * item * 3 + voxels  # masked images, mean-subtracted image, bool mask
    ffts = padded * item * 2 + (padded // 2 + 1) * 2 * item * 3  # real buffers + 3 half spectra
    ccfs = ccf * item * 3 + ccf * 8 * 2  # correlograms, distance keys
    images = 0
    if config.ccc.contributions:
        images += voxels * item * 2 * frames_per_task + padded * item * 3
    if config.ccc.intermediates:
        images += ccf * item * 3 * frames_per_task
    if config.coefficients is not None:
        images += voxels * 8 * 6  # float64 channels, ranks and products
        if config.coefficients.maps:
            images += voxels * 8 * 8 * frames_per_task
    if config.preprocessing is not None:
        images += voxels * 4 * 3
    return int(1.25 * (read * frames_per_task + working + ffts + ccfs + images))


def _check_memory(estimate: int, per_thread: float | None, config: PipelineConfig, frame_shape) -> bool:
    """Whether frames fit one task; False: take the tiled path. Raises when neither works.

    The tiled path (:mod:`cccdask.tiled`, through :func:`cccdask.ccc`) needs
    ``ccc.max_distance`` and, for now, no contribution images, correlograms,
    coefficients or preprocessing.
    """
    from dask.utils import format_bytes

    if per_thread is None or estimate <= per_thread:
        return True
    blockers = [name for name, on in (
        ("ccc.max_distance is not set", config.ccc.max_distance is None),
        ("ccc.contributions", config.ccc.contributions),
        ("ccc.intermediates", config.ccc.intermediates),
        ("coefficients", config.coefficients is not None),
        ("preprocess", config.preprocessing is not None),
    ) if on]
    if not blockers:
        return False
    which = "a worker thread's memory limit" if config.execution.memory_budget is None else "execution.memory_budget"
    raise FrameTooLargeError(
        f"one frame of shape {tuple(frame_shape)} needs about {format_bytes(estimate)} per task, but the "
        f"workers have {format_bytes(int(per_thread))} per thread ({which}). Frames this large are correlated "
        f"tile by tile when ccc.max_distance is set and contributions, intermediates, coefficients and "
        f"preprocess are off (here: {', '.join(blockers)}). Otherwise give the workers more memory "
        f"(cluster.local.memory_limit, or fewer threads_per_worker) or set execution.frames_per_task to 1."
    )


# --------------------------------------------------------------------------- driver


def check_output_location(path: Path, create: bool = False) -> None:
    """Fail early, before any work, when the store cannot be written at ``path``.

    Writes (and removes) a probe file in the nearest existing folder; with ``create``,
    first creates the store's parent folders.
    """
    probe_dir = path.parent
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise PermissionError(
            f"output.store {path}: {probe_dir} is a file, not a folder; choose another output location."
        )
    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
            probe_dir = path.parent
        probe = probe_dir / f".{path.name}.write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise PermissionError(
            f"output.store {path}: cannot write in {probe_dir} ({error.strerror or error}); choose another "
            f"output location."
        ) from None
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"output.store {path} exists and is a file, not a results store.")


def _existing_store(path: Path, identity: str, overwrite: bool) -> bool:
    """Whether to resume the store at ``path``; removes it when it must be replaced.

    Raises
    ------
    StoreConflictError
        A store with a different config (without overwrite), or a folder that is not a
        cccdask store.
    """
    if not path.exists():
        return False
    attrs = results_store.read_store_attrs(path)
    if attrs is None:
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
            return False
        raise StoreConflictError(
            f"output.store {path} exists and is not a cccdask results store; choose another path "
            f"(cccdask never deletes folders it did not write)."
        )
    if attrs.get("identity_hash") == identity:
        return True
    if not overwrite:
        raise StoreConflictError(
            f"output.store {path} holds results of a different config (analysis settings or inputs "
            f"differ); rerun with --overwrite (or output.overwrite: true) to replace it, or choose "
            f"another output.store."
        )
    results_store.remove_store(path)
    return False


def output_state(config: PipelineConfig) -> str:
    """What a run of ``config`` would do with its output: "new", "resume" or "replace".

    Raises
    ------
    PermissionError, FileExistsError, StoreConflictError
        As :func:`run` would, without touching anything.
    """
    return _output_state(Path(config.output.store), run_identity(config, open_inputs(config).frames),
                         config.output.overwrite)


def run_identity(config: PipelineConfig, frames) -> str:
    """The identity hash of a run: its analysis settings and what its inputs hold.

    A store is resumed only by a run of the same identity; the frame count, frame shape,
    dtypes and spacing are included so that a changed input file is never resumed into.
    """
    identity = config.analysis_identity()
    identity["inputs_seen"] = {
        "n_frames": frames.n_frames,
        "frame_shape": list(frames.frame_shape),
        "spacing": list(frames.spacing),
        "units": frames.units,
        "dtypes": [str(frames.image1.dtype), str(frames.image2.dtype),
                   None if frames.mask is None else str(frames.mask.dtype)],
        "mask_dims": None if frames.mask is None else list(frames.mask.dims),
    }
    return results_store.identity_hash(identity)


def _output_state(path: Path, identity: str, overwrite: bool) -> str:
    check_output_location(path)
    if not path.exists():
        return "new"
    attrs = results_store.read_store_attrs(path)
    if attrs is not None and attrs.get("identity_hash") == identity:
        return "resume"
    if attrs is not None and overwrite:
        return "replace"
    if path.is_dir() and not any(path.iterdir()):
        return "new"
    raise StoreConflictError(
        f"output.store {path} exists and "
        + ("holds results of a different config; use --overwrite to replace it." if attrs is not None
           else "is not a cccdask results store; choose another path.")
    )


class _Completion:
    """The driver's completion record, flushed to the store at most every ``interval`` s."""

    def __init__(self, path: Path, record: CompletionRecord, interval: float = 0.5):
        self.path, self.record, self.interval = path, record, interval
        self.dirty = False
        self.last = time.monotonic()

    def add(self, outcomes) -> None:
        first = not self.dirty and not self.record.complete.any()  # the first frames are flushed at once
        for index, status, reason in outcomes:
            self.record.errors[index] = reason
            self.record.status[index] = status
        self.dirty = True
        if first or time.monotonic() - self.last >= self.interval:
            self.flush()

    def flush(self) -> None:
        if self.dirty:
            results_store.write_completion(self.path, self.record)
            self.dirty = False
        self.last = time.monotonic()


def _prepare_preprocessing(config: PipelineConfig, inputs: RunInputs, log):
    """Driver-side preprocessing steps: estimate the chromatic shift once."""
    settings = config.preprocessing
    if settings is None:
        return None
    chromatic = settings.chromatic_shift
    if chromatic is not None and chromatic.reference is not None:
        reference = chromatic.reference
        if reference.frame is not None:
            if reference.frame >= inputs.frames.n_frames:
                raise ValueError(
                    f"preprocess.chromatic_shift.reference.frame is {reference.frame} but the input has "
                    f"{inputs.frames.n_frames} frames."
                )
            ref1 = _read_frame(inputs.image1, reference.frame)
            ref2 = _read_frame(inputs.image2, reference.frame)
        else:
            ref1 = _read_frame(SourceSpec(str(reference.image1)), 0)
            ref2 = _read_frame(SourceSpec(str(reference.image2)), 0)
        settings = settings.with_estimated_shift(ref1, ref2, inputs.frames.spacing)
        log(f"Estimated chromatic shift: {settings.chromatic_shift.shift} {inputs.frames.units}")
    return settings


def _shared_generated_mask(settings, inputs: RunInputs, plan: FramePlan) -> np.ndarray | None:
    if settings is None or settings.mask is None or settings.mask.from_frame is None:
        return None
    from cccdask.preprocess import generate_shared_mask

    index = settings.mask.from_frame
    if index >= inputs.frames.n_frames:
        raise ValueError(f"preprocess.mask.from_frame is {index} but the input has {inputs.frames.n_frames} frames.")
    mask = None
    if plan.mask is not None:
        mask = _read_frame(plan.mask, index if plan.mask_per_frame else 0)
    generated, _ = generate_shared_mask(
        _read_frame(plan.image1, index), _read_frame(plan.image2, index), mask, settings, plan.spacing
    )
    return generated


def plan_run(config: PipelineConfig, inputs: RunInputs, identity: str, settings=None) -> tuple[FramePlan, StoreLayout]:
    """The task plan and the store layout of a run."""
    frames = inputs.frames
    ccc = config.ccc.model_dump()
    coefficients = None
    if config.coefficients is not None:
        coefficients = config.coefficients.model_dump()
        for key in ("threshold", "threshold_range"):
            if isinstance(coefficients[key], list):
                coefficients[key] = tuple(coefficients[key])
    regions = (None, None)
    shared_generated = False
    if settings is not None:
        shared_generated = settings.mask is not None and settings.mask.from_frame is not None
        regions = tuple(
            None if b.region_mask is None else SourceSpec(str(b.region_mask))
            for b in (settings.background.image1, settings.background.image2)
        )
    plan = FramePlan(
        store=str(config.output.store),
        identity=identity,
        image1=inputs.image1,
        image2=inputs.image2,
        mask=inputs.mask,
        mask_per_frame=frames.mask is not None and "t" in frames.mask.dims,
        spacing=tuple(frames.spacing),
        units=frames.units,
        frame_shape=tuple(frames.frame_shape),
        spatial_dims=tuple(frames.spatial_dims),
        ccc=ccc,
        coefficients=coefficients,
        preprocess=None if settings is None else settings.model_dump(mode="json"),
        shared_generated_mask=shared_generated,
        background_regions=regions,
    )
    fpt = resolve_frames_per_task(config.execution.frames_per_task, tuple(frames.frame_shape), frames.n_frames)
    layouts, extra_dims = _output_layout(plan, frames.n_frames, inputs.chunks, fpt)
    layouts = [replace(v, attrs=variable_attrs(v.name, frames.units)) for v in layouts]
    coefficient_coords = _coefficient_coords(plan)
    coefficient_attrs = coefficient_coords.pop("_attrs", None)
    coords = _coordinates(inputs, plan, layouts, extra_dims, coefficient_coords)
    variables = tuple(
        (v.name, v.shape[1:], v.dtype, v.fill_value) for v in layouts
    )
    plan = replace(plan, variables=variables, frames_per_task=fpt)
    image1 = frames.image1
    layout = StoreLayout(
        n_frames=frames.n_frames,
        variables=tuple(layouts),
        coords=coords,
        spatial_dims=tuple(frames.spatial_dims),
        spacing=tuple(frames.spacing),
        units=frames.units,
        time_interval=float(image1.attrs.get("time_interval") or 1.0),
        time_units=str(image1.attrs.get("time_units") or "frame"),
    )
    if coefficient_attrs:
        layout = replace(layout, attrs={"coefficients": coefficient_attrs})
    return plan, layout


def _batches(n_frames: int, frames_per_task: int) -> list[tuple[int, int]]:
    return [(s, min(s + frames_per_task, n_frames)) for s in range(0, n_frames, frames_per_task)]


def _provenance(config: PipelineConfig, inputs: RunInputs, identity: str, settings) -> dict[str, Any]:
    frames = inputs.frames
    attrs = {
        "identity_hash": identity,
        "config": config_json(config),
        "inputs": {
            name: (None if spec is None else {"path": spec.path, "channel": spec.channel, "component": spec.component})
            for name, spec in (("image1", inputs.image1), ("image2", inputs.image2), ("mask", inputs.mask))
        },
        "versions": results_store.versions(),
        "mode": config.ccc.mode,
        "units": frames.units,
        "spacing": list(frames.spacing),
        "max_distance": config.ccc.max_distance,
        "fiji_compat": config.ccc.fiji_compat,
        "n_frames": frames.n_frames,
        "time_series": bool(frames.time_series),
        "title": "cccdask results",
    }
    if settings is not None and settings.chromatic_shift is not None:
        attrs["chromatic_shift"] = list(settings.chromatic_shift.shift)
    return attrs


def run(
    config: PipelineConfig | str | os.PathLike,
    *,
    overwrite: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Run a configured analysis and return the path of the results store.

    Parameters
    ----------
    config : PipelineConfig or path
        A validated config, or the path of a YAML file.
    overwrite : bool, optional
        Replace a store written with a different config (default: ``output.overwrite``).
    progress : callable, optional
        ``progress(frames_done, n_frames)``, called as frames are recorded.
    log : callable, optional
        Receives status lines (cluster, dashboard, resume).

    Raises
    ------
    FileNotFoundError, ValueError, PermissionError
        Bad inputs or output location, found before any work and before the store exists.
    StoreConflictError
        An existing store of a different config (without overwrite).
    FrameTooLargeError
        A frame that cannot fit a worker.
    PipelineError
        Tasks that failed; the store is left incomplete and a rerun computes only the
        missing frames.
    """
    from cccdask.cluster import connect

    if not isinstance(config, PipelineConfig):
        config = load_config(config)
    log = log or (lambda message: None)
    overwrite = config.output.overwrite if overwrite is None else overwrite
    path = Path(config.output.store)
    inputs = open_inputs(config)
    identity = run_identity(config, inputs.frames)
    check_output_location(path, create=True)
    _output_state(path, identity, overwrite)  # refuse a conflicting store before starting a cluster
    frames = inputs.frames
    fpt = resolve_frames_per_task(config.execution.frames_per_task, tuple(frames.frame_shape), frames.n_frames)
    estimate = estimate_task_memory(config, frames, fpt)

    with connect(config.cluster, config.execution, log=log) as cluster, _disk_full_is_named(path):
        budget = (cluster.memory_per_thread() if config.execution.memory_budget is None
                  else _parse_bytes(config.execution.memory_budget))
        whole_frames = _check_memory(estimate, budget, config, frames.frame_shape)
        if not whole_frames:
            log("Frames do not fit one task: correlating each frame tile by tile (ccc.max_distance)")
        resume = _existing_store(path, identity, overwrite)
        results_store.remove_interrupted_writes(path)
        settings = _prepare_preprocessing(config, inputs, log)
        plan, layout = plan_run(config, inputs, identity, settings)
        if not resume:
            shared_mask = _shared_generated_mask(settings, inputs, plan)
            if shared_mask is not None:
                spatial = plan.spatial_dims
                layout = replace(layout, variables=layout.variables + (VariableLayout(
                    GENERATED_MASK, spatial, shared_mask.shape, np.dtype(np.uint8), shared_mask.shape, image=False,
                    attrs={"description": "the mask generated once and used for every frame"}),))
            results_store.create_store(
                path, layout, {**_provenance(config, inputs, identity, settings), **layout.attrs},
                initial=None if shared_mask is None else {GENERATED_MASK: shared_mask.astype(np.uint8)},
            )
        else:
            log(f"Resuming {path}")
        record = results_store.read_completion(path)
        n_frames = layout.n_frames
        todo = [b for b in _batches(n_frames, fpt) if (record.status[b[0]:b[1]] == FRAME_MISSING).any()]
        done = int(record.complete.sum())
        if resume:
            log(f"{done} of {n_frames} frames already complete; computing {n_frames - done}")
        if progress:
            progress(done, n_frames)
        completion = _Completion(path, record)
        if whole_frames:
            failures = _submit(cluster, plan, todo, completion, config.execution.retries, progress, n_frames)
        else:
            failures = _run_tiled(cluster, plan, inputs, config, budget, todo, completion, progress, n_frames)
        completion.flush()
        if failures:
            lines = "\n".join(f"  frames {s}-{e - 1}: {message}" for (s, e), message in failures[:10])
            raise PipelineError(
                f"{len(failures)} task(s) failed; the store {path} is incomplete. Fix the cause and rerun "
                f"the same config: only the missing frames are computed.\n{lines}"
            )
    with _disk_full_is_named(path):
        finalise(path, config)
    return path


@contextlib.contextmanager
def _disk_full_is_named(path: Path):
    """Turn a full disk met by the driver (store, completion record, reports) into a PipelineError."""
    try:
        yield
    except OSError as error:
        if error.errno not in DISK_FULL_ERRNOS:
            raise
        state = "is incomplete" if path.exists() else "was not created"
        raise PipelineError(f"writing {path} failed: {error.strerror} ({error.filename or path}); the store "
                            f"{state}. Cause: {DISK_FULL_HINT}.") from error


def _submit(cluster, plan: FramePlan, todo, completion: _Completion, retries: int, progress, n_frames):
    """Submit the batches with a bounded number in flight; record each as it finishes."""
    client = cluster.client
    tag = uuid.uuid4().hex[:8]
    queue = list(reversed(todo))
    failures = []

    def window() -> int:
        return max(4, 3 * max(cluster.total_threads(), 1))

    def submit_one(batch):
        start, stop = batch
        future = client.submit(
            compute_frames, plan, start, stop, key=f"cccdask-frames-{start}-{tag}",
            retries=retries, pure=False,
        )
        batches[future.key] = batch
        return future

    batches: dict[str, tuple[int, int]] = {}
    pending = cluster.as_completed()
    limit = window()
    for _ in range(min(limit, len(queue))):
        pending.add(submit_one(queue.pop()))
    last_window = time.monotonic()
    try:
        for future in pending:
            batch = batches.pop(future.key)
            if future.status == "finished":
                outcomes = future.result()
                _test_kill_point("first_frame")  # its frames are written, not yet recorded
                completion.add(outcomes)
                if progress:
                    progress(int(completion.record.complete.sum()), n_frames)
                if completion.record.complete.sum() >= n_frames // 2:
                    _test_kill_point("midway")
            else:
                try:
                    future.result()
                except Exception as error:  # the task raised: report, keep going
                    failures.append((batch, _failure_message(error)))
            future.release()
            if time.monotonic() - last_window > 2.0:
                limit, last_window = window(), time.monotonic()
            while queue and pending.count() < limit:
                pending.add(submit_one(queue.pop()))
    finally:
        completion.flush()
    return failures


def _parse_bytes(text: str) -> int:
    from dask.utils import parse_bytes

    return int(parse_bytes(text))


def _run_tiled(cluster, plan: FramePlan, inputs: RunInputs, config: PipelineConfig, budget: float, todo,
               completion: _Completion, progress, n_frames):
    """Frames over the task budget: each frame correlated tile by tile on the cluster.

    :func:`cccdask.ccc` builds the tiled graph of one frame (tasks read their own tiles;
    the frame is never loaded whole); its small results (profiles, fit) come back to the
    driver, which writes them into the frame's own chunks and then records the frame.
    """
    import cccdask

    frames = inputs.frames
    dtypes = {name: dtype for name, _, dtype, _ in plan.variables}
    failures = []
    for start, stop in todo:
        arrays = {name: np.full((stop - start,) + tuple(shape), fill, dtype=dtype)
                  for name, shape, dtype, fill in plan.variables}
        outcomes = []
        try:
            for k, index in enumerate(range(start, stop)):
                mask = frames.mask_frame(index)
                result = cccdask.ccc(
                    frames.image1.isel(t=index).data, frames.image2.isel(t=index).data,
                    None if mask is None else mask.data, mode=config.ccc.mode, spacing=frames.spacing,
                    max_distance=config.ccc.max_distance, fiji_compat=config.ccc.fiji_compat,
                    dtype=config.ccc.dtype, memory_budget=budget,
                )
                try:
                    values = cluster.client.compute(result).result()
                except InvalidFrameError as error:
                    outcomes.append((index, FRAME_INVALID, str(error)))
                    continue
                for name in values.data_vars:
                    if name in arrays:
                        arrays[name][k] = np.asarray(values[name].values).astype(dtypes[name], copy=False)
                ok = bool(values["fit_ok"]) if "fit_ok" in values else True
                outcomes.append((index, FRAME_OK if ok else FRAME_FIT_FAILED, "" if ok else FIT_FAILED_REASON))
            results_store.write_frames(plan.store, plan.identity, start, arrays)
        except Exception as error:  # report, keep going with the other frames
            failures.append(((start, stop), _failure_message(error)))
            continue
        completion.add(outcomes)
        if progress:
            progress(int(completion.record.complete.sum()), n_frames)
    return failures


def finalise(path: Path, config: PipelineConfig | None = None) -> None:
    """After every frame is recorded: best frame, reports, then mark the store complete.

    The ``complete`` status is written last, so a store killed while finalising is
    finalised again by the next run.
    """
    from cccdask.ccc import best_frame

    attrs = results_store.read_store_attrs(path) or {}
    record = results_store.read_completion(path)
    if (record.status == FRAME_MISSING).any():
        raise PipelineError(f"{path} still has missing frames; rerun to complete it.")
    mode = attrs.get("mode", "full")
    best = -1
    if mode != "correlation":
        with xr.open_zarr(str(path)) as ds:
            score = ds["confidence"] if mode == "full" else ds["sigma"]
            best = best_frame(np.asarray(score.values), mode)
    failed = int((record.status != FRAME_OK).sum())
    results_store.update_store_attrs(path, best_frame=int(best), frames_failed=failed)
    reports = True if config is None else config.output.reports
    if reports:
        from cccdask.io.reports import write_reports

        write_reports(path)
    _test_kill_point("finalise")
    results_store.update_store_attrs(path, cccdask_status=results_store.STATUS_COMPLETE)


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
DISK_FULL_HINT = ("the disk holding the store is full, or a file size or quota limit was reached: free space "
                  "and rerun the same config; frames already recorded are kept")


def _failure_message(error: BaseException) -> str:
    """One line for a failed task: the exception, with what to do when the disk is full."""
    message = f"{type(error).__name__}: {error}"
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        message += f" ({DISK_FULL_HINT})"
    return message


TEST_KILL_ENV = "CCCDASK_TEST_KILL_AT"


def _test_kill_point(stage: str) -> None:
    """Test-only: SIGKILL this process at ``stage`` when ``$CCCDASK_TEST_KILL_AT`` names it.

    Lets tests/test_reliability.py interrupt a real ``cccdask run`` at a chosen moment
    (``first_frame``: a task's frames written but not recorded; ``midway``: half the
    frames recorded; ``finalise``: reports written, store not yet marked complete).
    The variable is never set in normal use.
    """
    if os.environ.get(TEST_KILL_ENV) == stage:
        os.kill(os.getpid(), signal.SIGKILL)
