"""The tiled path of a run: frames too large for one task, analysed tile by tile.

Used by the driver when :func:`~cccdask.pipeline.plan.plan_tiles` finds that a frame
does not fit a worker thread, or ``execution.tile_shape`` asks for tiles. Per frame,
one graph runs on the cluster (inputs read tile by tile): the tiled CCC
(:func:`cccdask.ccc`: correlograms within R, then the contribution images by
overlap-save) and the coefficients
(:func:`cccdask.coefficients.coefficients`, exact from per-chunk statistics) over the
same tiles, after the ``preprocess:`` steps on tiles (chromatic shift, mask
generation, backgrounds: :func:`cccdask.preprocess_tiled.preprocess_lazy`, the
function notebook users call too),
whose whole-frame numbers are computed first on the cluster. Image outputs
(contribution images, coefficient maps) are written by the workers straight into the
frame's store chunks, one task per chunk; the small results
(profiles, fit, correlograms, coefficients) come back to the driver, which writes them
into the frame's chunks and then records the frame
(:class:`~cccdask.pipeline.record.Completion`). The frame is never loaded whole.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from cccdask.config import PipelineConfig
from cccdask.frames import InvalidFrameError
from cccdask.io.store import FRAME_FIT_FAILED, FRAME_INVALID, FRAME_OK
from cccdask.pipeline.inputs import RunInputs
from cccdask.pipeline.plan import FramePlan
from cccdask.pipeline.record import Completion, failure_message
from cccdask.pipeline.task import FIT_FAILED_REASON, split_returned, stored_far_field, stored_value
from cccdask.tiled_ranks import default_compute


def frame_graph(plan: FramePlan, inputs: RunInputs, index: int, tile_shape, compute=None) -> xr.Dataset:
    """All outputs of frame ``index`` as one lazy Dataset over tiles of ``tile_shape``.

    The inputs are read tile by tile (``inputs`` opened with the tiles as their Dask
    chunks); the CCC (forced onto its tiled path) and the coefficients' first pass read
    the same tile arrays, so computed together a tile is read once per pass. The passes
    that wait for a number of the whole frame (the correlation after the frame's mean,
    the contributions after the fit, Van Steensel and the maps after the coefficients'
    thresholds) read the tiles again (:func:`cccdask.graph.read_again_after`) instead of
    keeping the first pass's. The preprocessing numbers that need the whole frame
    (background levels, the mask's threshold, border labels and object sizes, the
    intensity floors) are computed first (``compute``, e.g. on the cluster; default
    Dask's current scheduler), each a reduction over the tiles.
    """
    import cccdask
    from cccdask.coefficients import coefficients
    from cccdask.tiled_ranks import tiled_intensity_floors

    compute = compute or default_compute
    frames = inputs.frames
    tiles = dict(zip(plan.spatial_dims, tile_shape))
    image1 = frames.image1.isel(t=index).data.rechunk(tile_shape)
    image2 = frames.image2.isel(t=index).data.rechunk(tile_shape)
    if plan.shared_generated_mask:
        from cccdask.pipeline.task import GENERATED_MASK

        group = zarr.open_group(plan.store, mode="r", use_consolidated=False)
        mask = da.from_zarr(group[GENERATED_MASK]).rechunk(tile_shape) != 0
    else:
        mask = frames.mask_frame(index)
        mask = None if mask is None else mask.transpose(*tiles).data.rechunk(tile_shape)
    preprocessed = {}
    if plan.preprocess is not None:
        image1, image2, mask, preprocessed = _preprocess(plan, index, image1, image2, mask, tile_shape, compute)
    options = {k: plan.ccc[k] for k in ("mode", "contributions", "intermediates", "dtype", "max_distance",
                                        "fiji_compat", "n_gaussians", "max_gaussians")}
    # memory_budget=0: the tiled path whatever the frame's size (the driver chose it)
    result = cccdask.ccc(image1, image2, mask, spacing=plan.spacing, memory_budget=0, tile_shape=tile_shape,
                         **options)
    result = result.isel(t=0, drop=True) if "t" in result.dims else result
    if plan.coefficients is not None:
        table = coefficients(image1, image2, mask, spacing=plan.spacing, **plan.coefficients)
        table = table.isel(t=0, drop=True) if "t" in table.dims else table
        result = result.merge(table.drop_vars([c for c in table.coords if c in result.coords]), compat="override")
    floors = {f"intensity_floor{channel}": ((), np.float64(floor))  # for frame_quality
              for channel, floor in enumerate(tiled_intensity_floors([image1, image2], mask, compute), start=1)}
    return result.assign({**preprocessed, **floors})


def _preprocess(plan: FramePlan, index: int, image1, image2, mask, tile_shape, compute):
    """The ``preprocess:`` section on tiles: :func:`cccdask.preprocess_tiled.preprocess_lazy`.

    Opens the frame's background regions, then maps the record to the stored variables
    (and ``mask_used``). Returns the prepared images and mask and those variables.
    """
    from cccdask.pipeline.task import _settings_of, preprocess_outputs
    from cccdask.preprocess_tiled import preprocess_lazy

    regions = []
    for spec in plan.background_regions:
        region = None
        if spec is not None:
            opened = spec.open()
            region = (opened.isel(t=index) if "t" in opened.dims else opened).transpose(*plan.spatial_dims)
            region = region.data.rechunk(tile_shape)
        regions.append(region)
    image1, image2, mask, record = preprocess_lazy(image1, image2, mask, settings=_settings_of(plan),
                                                   spacing=plan.spacing, background_regions=tuple(regions),
                                                   compute=compute)
    return image1, image2, mask, preprocess_outputs(plan, record, mask)


def shared_mask_graph(plan: FramePlan, inputs: RunInputs, settings, tile_shape, compute) -> da.Array:
    """The mask of ``mask.from_frame``, generated on tiles (as :func:`cccdask.preprocess.generate_shared_mask`)."""
    index = settings.mask.from_frame
    if index >= inputs.frames.n_frames:
        raise ValueError(f"preprocess.mask.from_frame is {index} but the input has {inputs.frames.n_frames} frames.")
    frames = inputs.frames
    image1 = frames.image1.isel(t=index).data.rechunk(tile_shape)
    image2 = frames.image2.isel(t=index).data.rechunk(tile_shape)
    mask = frames.mask_frame(index)
    mask = None if mask is None else mask.transpose(*plan.spatial_dims).data.rechunk(tile_shape)
    per_frame = settings.model_copy(update={"mask": settings.mask.model_copy(update={"from_frame": None}),
                                            "background": type(settings.background)()})
    from cccdask.preprocess_tiled import preprocess_lazy

    return preprocess_lazy(image1, image2, mask, settings=per_frame, spacing=plan.spacing, compute=compute)[2]


def _store_images(plan: FramePlan, index: int, images: dict[str, da.Array]):
    """Delayed writes of a frame's image outputs into their store chunks (one task per chunk)."""
    if not images:
        return None
    group = zarr.open_group(plan.store, mode="r+", use_consolidated=False)
    sources, targets, regions = [], [], []
    for name, array in images.items():
        target = group[name]
        chunks = target.shards or target.chunks
        sources.append(array[None].astype(target.dtype).rechunk((1,) + tuple(chunks[1:])))
        targets.append(target)
        regions.append((slice(index, index + 1),) + tuple(slice(0, n) for n in array.shape))
    return da.store(sources, targets, regions=regions, lock=False, compute=False)


def cluster_compute(cluster):
    """A ``compute(list of Dask objects) -> list of values`` that runs on the cluster."""

    def compute(arrays):
        futures = cluster.client.compute(list(arrays))
        return [f.result() for f in futures] if isinstance(futures, list) else futures.result()

    return compute


def store_shared_mask(cluster, store, mask: da.Array) -> None:
    """Write the shared generated mask into the store, one task per tile (the variable's chunks)."""
    from cccdask.pipeline.task import GENERATED_MASK

    target = zarr.open_group(store, mode="r+", use_consolidated=False)[GENERATED_MASK]
    write = da.store(mask.astype(np.uint8).rechunk(target.chunks), target, lock=False, compute=False)
    cluster.client.compute(write).result()


def run_tiled(cluster, plan: FramePlan, inputs: RunInputs, config: PipelineConfig, tile_shape, todo,
              completion: Completion, progress, n_frames):
    """Frames analysed tile by tile on the cluster, one frame at a time; returns the failures."""
    dtypes = {name: dtype for name, _, dtype, _ in plan.variables}
    spatial = set(plan.spatial_dims)
    failures = []
    compute = cluster_compute(cluster)

    for start, stop in todo:
        arrays = {}
        outcomes = []
        try:
            for k, index in enumerate(range(start, stop)):
                try:
                    # the preprocessing's whole-frame numbers are computed here (may find the frame invalid)
                    frame = frame_graph(plan, inputs, index, tile_shape, compute=compute)
                    images = {name: frame[name].data for name in frame.data_vars
                              if name in dtypes and set(frame[name].dims) == spatial}
                    small = frame[[name for name in frame.data_vars if name in dtypes and name not in images]]
                    # one submission: the tasks both hold (tiles, levels, correlograms) run once
                    writes = _store_images(plan, index, images)
                    writes = [] if writes is None else (writes if isinstance(writes, list) else [writes])
                    # no future outlives the call: the next frame's graph may hold the same keys (the valid
                    # region, fused otherwise), and a key the scheduler still knows with another task fails
                    # (KeyError; dask/dask#9888)
                    values = compute([small] + writes)[0]
                except InvalidFrameError as error:
                    outcomes.append((index, FRAME_INVALID, str(error)))
                    continue
                if "far_field_ratio" in dtypes:
                    values = values.assign(far_field_ratio=((), stored_far_field(
                        plan, values["distance"].values, {k: values[k].values for k in
                                                          ("profile_subtracted", "mean", "sigma")})))
                for name in values.data_vars:
                    if name not in arrays:
                        _, shape, dtype, fill = next(v for v in plan.variables if v[0] == name)
                        arrays[name] = np.full((stop - start,) + tuple(shape), fill, dtype=dtype)
                    value = stored_value(plan, tuple(values[name].dims), values[name].values)
                    arrays[name][k] = value.astype(dtypes[name], copy=False)
                ok = bool(values["fit_ok"].any()) if "fit_ok" in values else True
                outcomes.append((index, FRAME_OK if ok else FRAME_FIT_FAILED, "" if ok else FIT_FAILED_REASON))
            for name, shape, dtype, fill in plan.variables:  # frames without a result: fill values
                if name in plan.returned and name not in arrays:
                    arrays[name] = np.full((stop - start,) + tuple(shape), fill, dtype=dtype)
            small = split_returned(plan, start, arrays)
        except Exception as error:  # report, keep going with the other frames
            failures.append(((start, stop), failure_message(error)))
            continue
        completion.add(outcomes, (start, small))
        completion.report(progress, n_frames)
    return failures
