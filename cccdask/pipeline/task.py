"""What one task does to its frames: read, preprocess, analyse, write.

Pure given its :class:`~cccdask.pipeline.plan.FramePlan`: a task holds no driver
state and never imports the driver. :func:`compute_frames` is the task:
:func:`_read_batch` **reads** its frames from the input files (one call per batch),
:func:`analyse_frame` runs preprocessing, the CCC kernel and the coefficients once per
frame, and :func:`cccdask.io.store.write_frames` **writes** the batch's large outputs
(images, correlograms) into the store chunks the task owns. The outcomes (status,
reason per frame) and the small outputs (scalars, profiles) go back to the driver,
which writes the small ones in blocks and then records the frames
(:mod:`cccdask.pipeline.blocks`, :mod:`cccdask.pipeline.record`).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache

import dask
import numpy as np
import xarray as xr

from cccdask.frames import InvalidFrameError
from cccdask.io import store as results_store
from cccdask.io.store import FRAME_FIT_FAILED, FRAME_INVALID, FRAME_OK
from cccdask.pipeline.errors import InputReadError
from cccdask.pipeline.inputs import SourceSpec, read_frame
from cccdask.pipeline.plan import FramePlan

FIT_FAILED_REASON = "no valid Gaussian fit (sigma <= pixel size, mean < -pixel size, height < 0 or no convergence)"
GENERATED_MASK = "generated_mask"
_PREPROCESS_NAMES = {"shift": "chromatic_shift"}


@lru_cache(maxsize=2)
def _read_shared(spec: SourceSpec, mtime_ns: int) -> np.ndarray:
    return read_frame(spec, 0)


def _settings_of(plan: FramePlan):
    return _preprocess_settings(json.dumps(plan.preprocess, sort_keys=True))


@lru_cache(maxsize=4)
def _preprocess_settings(settings_json: str):
    from cccdask.preprocess import Preprocessing

    return Preprocessing.model_validate(json.loads(settings_json))


def preprocess_outputs(plan: FramePlan, record: dict, mask) -> dict[str, tuple[tuple[str, ...], object]]:
    """The stored variables of a preprocessing record (and ``mask_used``, a generated per-frame mask).

    ``record`` and ``mask`` as :func:`cccdask.preprocess.preprocess_frame` (NumPy) or
    :func:`cccdask.preprocess_tiled.preprocess_lazy` (Dask) return them.
    """
    outputs = {}
    for key, value in record.items():
        value = np.asarray(value, dtype=float)
        outputs[_PREPROCESS_NAMES.get(key, key)] = (("axis",) if value.ndim == 1 else (), value)
    if plan.preprocess.get("mask") is not None and not plan.shared_generated_mask:
        outputs["mask_used"] = (plan.spatial_dims, mask.astype(np.uint8))
    return outputs


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
    from cccdask.kernels.components import component_count
    from cccdask.quality import intensity_floor

    geometry = geometry if geometry is not None else plan.geometry()
    spatial = plan.spatial_dims
    outputs: dict[str, tuple[tuple[str, ...], np.ndarray]] = {}
    try:
        if plan.preprocess is not None:
            from cccdask.preprocess import preprocess_frame

            image1, image2, mask, record = preprocess_frame(
                image1, image2, mask, _settings_of(plan), plan.spacing, background_regions=background_regions
            )
            outputs.update(preprocess_outputs(plan, record, mask))
        options = {k: plan.ccc[k] for k in ("mode", "contributions", "intermediates", "dtype")}
        n_gaussians = component_count(plan.ccc.get("n_gaussians", 1), plan.ccc.get("max_gaussians", 3))
        results = ccc_frame(image1, image2, mask, geometry, n_gaussians=n_gaussians, **options)
        for channel, image in (("intensity_floor1", image1), ("intensity_floor2", image2)):
            outputs[channel] = ((), np.asarray(intensity_floor(image, mask)))  # for frame_quality
        if "profile_subtracted" in results and "mean" in results:
            outputs["far_field_ratio"] = ((), stored_far_field(plan, geometry.distances, results))
        for name, value in results.items():
            outputs[name] = (output_dims(name, spatial, components=n_gaussians != (1, False)), np.asarray(value))
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
    if fit_ok is not None and not np.any(fit_ok[1]):  # several Gaussians: any component
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
    Zarr (or TIFF/.npy) call, and for a local Zarr v3 array one file read and decode per
    chunk in this thread (:mod:`cccdask.io.chunk_reader`). Built only when its shape
    agrees with ``open_image``'s.
    """

    def __init__(self, spec: SourceSpec, expected: xr.DataArray):
        from cccdask.io.chunk_reader import chunk_reader
        from cccdask.io.readers import stored_array

        array, storage_dims = stored_array(spec.path, spec.component, spec.dims)
        self.array = chunk_reader(array)
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
            f"rewrite it, then rerun the same config (with --overwrite when the file was rewritten: a changed input "
            f"is not resumed)"
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


def stored_dtype(plan: FramePlan, dims: tuple[str, ...], dtype) -> np.dtype:
    """The dtype the store keeps an output in: a bounded profile in float32 (README: results store)."""
    dtype = np.dtype(dtype)
    if "distance" in dims and plan.profile_points is not None and dtype == np.float64:
        return np.dtype(np.float32)
    return dtype


def stored_value(plan: FramePlan, dims: tuple[str, ...], value) -> np.ndarray:
    """An output as the store keeps it: profiles cut to the stored range (``plan.profile_points``)."""
    value = np.asarray(value)
    if plan.profile_points is not None and "distance" in dims:
        axis = dims.index("distance")
        value = value[(slice(None),) * axis + (slice(0, plan.profile_points),)]
    return value


def stored_far_field(plan: FramePlan, distances: np.ndarray, results) -> np.ndarray:
    """:func:`cccdask.quality.far_field_ratio` of a frame's subtracted profile as stored (for frame_quality).

    Computed by the task rather than when finalising, which would read every stored profile
    again. ``distances``: the full profile's (physical units); ``results``: the frame's
    outputs (mapping with ``profile_subtracted``, ``mean``, ``sigma``).
    """
    from cccdask.quality import far_field_ratio

    profile = stored_value(plan, ("distance",), results["profile_subtracted"])
    profile = profile.astype(stored_dtype(plan, ("distance",), profile.dtype), copy=False)
    mean, sigma = (np.ravel(np.asarray(results[k], dtype=float))[0] for k in ("mean", "sigma"))  # component 1
    return np.asarray(far_field_ratio(np.asarray(distances)[:profile.size], profile, mean, sigma))


def split_returned(plan: FramePlan, start: int, arrays: dict[str, np.ndarray]):
    """Write a batch's large outputs into the task's own chunks; return the small ones.

    The small outputs (``plan.returned``: scalars, profiles) go back to the driver,
    which writes them in blocks of many frames (:mod:`cccdask.pipeline.blocks`).
    """
    small = {name: arrays.pop(name) for name in plan.returned if name in arrays}
    if arrays:
        results_store.write_frames(plan.store, plan.identity, start, arrays)
    return small


def compute_frames(plan: FramePlan, start: int, stop: int) -> tuple[list[tuple[int, int, str]], dict]:
    """The task: read frames ``start..stop-1``, analyse them, write their large outputs.

    Returns
    -------
    outcomes : list of (frame, status, reason)
        One per frame; the driver records them.
    small : dict of str to numpy.ndarray
        The small outputs of the frames (frames first), for the driver to write in blocks.
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
        for name, (dims, value) in outputs.items():
            if name in arrays:
                arrays[name][k] = stored_value(plan, dims, value).astype(dtypes[name], copy=False)
        outcomes.append((index, status, reason))
    return outcomes, split_returned(plan, start, arrays)
