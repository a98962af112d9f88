"""The plan and the store layout of a run, learnt from a small probe frame.

:func:`plan_run` builds the :class:`~cccdask.pipeline.plan.FramePlan` and the
:class:`~cccdask.io.store.StoreLayout`: the names, dims, shapes, dtypes and coordinates
of every per-frame output come from running :func:`~cccdask.pipeline.task.analyse_frame`
on a probe frame, so the layout always matches what the tasks write.
"""

from __future__ import annotations

from dataclasses import replace

import dask
import numpy as np
import xarray as xr

from cccdask.ccc import variable_attrs
from cccdask.quality import QUALITY_VARIABLE_ATTRS
from cccdask.config import PipelineConfig
from cccdask.io.store import FRAME_INVALID, StoreLayout, VariableLayout
from cccdask.pipeline.blocks import block_frames, is_small
from cccdask.pipeline.errors import PipelineError
from cccdask.pipeline.inputs import RunInputs, SourceSpec
from cccdask.pipeline.plan import FramePlan, resolve_frames_per_task
from cccdask.pipeline.task import analyse_frame, stored_dtype


def _probe_frame(shape: tuple[int, ...], spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A small smooth two-channel frame (a blob plus texture) to learn the output layout.

    The mask is non-zero everywhere but not constant, so that a mask generated from it
    (``preprocess.mask.source: mask``) finds objects.
    """
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum(g**2 for g in grid)
    rng = np.random.default_rng(0)
    blob = np.exp(-r2 / 0.3).astype(np.float32)
    image1 = blob * (1 + 0.5 * rng.random(shape, dtype=np.float32))
    image2 = blob * (1 + 0.5 * rng.random(shape, dtype=np.float32))
    return image1, image2, (1 + blob).astype(np.float32)


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
    n_points = len(geometry.distances) if plan.profile_points is None else plan.profile_points
    sizes = {"distance": n_points, "axis": len(plan.spatial_dims)}
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
        dtype = stored_dtype(plan, tuple(dims), value.dtype if value.dtype.kind in "biuf" else np.dtype(object))
        small = is_small(tuple(dims), tuple(shape), dtype, plan.spatial_dims)
        t_chunk = block_frames(tuple(shape), dtype, n_frames) if small else frames_per_task
        layouts.append(VariableLayout(
            name=name, dims=("t",) + tuple(dims), shape=(n_frames,) + tuple(shape), dtype=dtype,
            chunks=(t_chunk,) + frame_chunks, image=image,
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
        coords["distance"] = xr.Variable("distance", np.asarray(geometry.distances[:plan.profile_points]),
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
        elif dim in ("component", "n_components"):  # several Gaussians: numbered from 1
            coords[dim] = xr.Variable(dim, np.arange(1, extra_dims[dim] + 1))
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


def profile_points(setting, geometry, frames, max_distance) -> int | None:
    """Profile points the store keeps for ``output.profile_range`` (None: all, ``"full"``).

    ``"auto"``: out to ``ccc.max_distance`` when set (the whole profile), otherwise out to
    a quarter of the frame's shorter side (y, x); a number: out to that distance.
    """
    if setting == "full":
        return None
    if setting == "auto":
        if max_distance is not None:
            return len(geometry.distances)
        reach = min(n * s for n, s in zip(frames.frame_shape[-2:], frames.spacing[-2:])) / 4
    else:
        reach = float(setting)
    return max(1, int(np.searchsorted(geometry.distances, reach * (1 + 1e-12), side="right")))


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
    plan = replace(plan, profile_points=profile_points(config.output.profile_range, plan.geometry(), frames,
                                                       config.ccc.max_distance))
    fpt = resolve_frames_per_task(config.execution.frames_per_task, tuple(frames.frame_shape), frames.n_frames)
    layouts, extra_dims = _output_layout(plan, frames.n_frames, inputs.chunks, fpt)
    several = "component" in extra_dims
    layouts = [replace(v, attrs=variable_attrs(v.name, frames.units, len(frames.spatial_dims), several)
                       or QUALITY_VARIABLE_ATTRS.get(v.name, {})) for v in layouts]
    coefficient_coords = _coefficient_coords(plan)
    coefficient_attrs = coefficient_coords.pop("_attrs", None)
    coords = _coordinates(inputs, plan, layouts, extra_dims, coefficient_coords)
    variables = tuple(
        (v.name, v.shape[1:], v.dtype, v.fill_value) for v in layouts
    )
    returned = tuple(v.name for v in layouts if is_small(v.dims[1:], v.shape[1:], v.dtype, plan.spatial_dims))
    plan = replace(plan, variables=variables, frames_per_task=fpt, returned=returned)
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
