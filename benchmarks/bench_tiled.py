"""Tiled CCC correlation of a 3D frame larger than a worker's memory, from Zarr.

Part 1 writes two float32 channels of shape ``--shape`` to Zarr (under ``--data-dir``,
not the repository), then computes the correlograms restricted to ``--max-distance``
with :func:`cccdask.tiled.tiled_correlograms` on a LocalCluster whose workers are
limited to ``--worker-memory`` each, and prints the time and each worker's peak
resident memory (``ru_maxrss`` of the worker process).

Part 2 times the tiled path against the whole-frame engine
(:func:`cccdask.kernels.correlate.masked_correlograms`) on a frame that fits both
ways (``--compare-shape``), one thread each, in this process.

Part 3 runs the YAML pipeline (:func:`cccdask.pipeline.run`) on the same Zarr frame
(``--run-shape``, default ``--shape``) forced onto tiles, on ``--workers`` workers
limited to ``--worker-memory``: correlation only, then with median backgrounds, a
generated mask (Otsu after a blur, holes filled, small objects removed),
contribution images and coefficients (``--each-part``: also the correlation plus each
of these alone, for the cost of each). It prints wall time, each worker's peak memory
and whether any worker spilled to disk, side by side. The frame's values lie on
``--levels`` levels (integer data stored as float32; 0: all distinct, whose
coefficients need the frame's 8 bytes per voxel in one task).

The issue's example is a 6 GiB frame on 2 GiB workers; on a 2-core 24 GiB machine
shared with others run the scaled version (the defaults): a 2 GiB frame on 1 GiB
workers. Run ``python benchmarks/bench_tiled.py --help`` for the sizes.
"""

from __future__ import annotations

import argparse
import math
import resource
import shutil
import statistics
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np


def write_frame(directory: Path, shape, chunks, shift, levels: int | None = None, blur: float = 0.0) -> list[str]:
    """image1: random speckle; image2: image1 shifted by ``shift`` voxels plus noise.

    With ``blur`` (voxels) the speckle is white noise blurred by a Gaussian of that sigma
    and rescaled to mean 0.5, SD 0.15 (clipped to [0, 1)): spots of a known size, so the
    correlation is a Gaussian the fit finds and the channels are correlated voxel by
    voxel (Costes defined). With ``levels``, both are rounded down to multiples of
    1 / ``levels`` (integer data stored as float32: values repeat, as in camera data,
    instead of being all distinct).
    """
    paths = [str(directory / "image1.zarr"), str(directory / "image2.zarr")]
    if all(Path(p).exists() for p in paths):
        import zarr

        if all(zarr.open_array(p).shape == tuple(shape) for p in paths):
            return paths
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    rng = da.random.default_rng(0)
    image1 = rng.random(shape, chunks=chunks, dtype=np.float32)
    if blur:
        from dask_image.ndfilters import gaussian_filter

        # uniform noise has variance 1/12; a Gaussian blur multiplies it by the sum of the squared weights
        sd = math.sqrt(1 / 12) * (2 * math.sqrt(math.pi) * blur) ** (-len(shape) / 2)
        blurred = gaussian_filter(image1, sigma=blur, mode="wrap")
        image1 = da.clip(0.5 + 0.15 * (blurred - 0.5) / sd, 0, 0.999).astype(np.float32)
    noise = rng.random(shape, chunks=chunks, dtype=np.float32)
    shifted = image1
    for axis, s in enumerate(shift):
        shifted = da.roll(shifted, s, axis=axis)
    image2 = (0.7 * shifted + 0.3 * noise).astype(np.float32).rechunk(chunks)
    if levels:
        image1, image2 = (da.floor(image * levels) / np.float32(levels) for image in (image1, image2))
    with dask.config.set(scheduler="threads"):
        da.to_zarr(image1, paths[0])
        da.to_zarr(image2, paths[1])
    return paths


def worker_usage() -> tuple[int, float]:
    """This process's peak resident memory (bytes; Linux VmHWM, which unlike ru_maxrss
    does not inherit the parent's peak) and its CPU time so far (s)."""
    with open("/proc/self/status") as status:
        hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    times = resource.getrusage(resource.RUSAGE_SELF)
    return hwm * 1024, times.ru_utime + times.ru_stime


def large_frame(args) -> None:
    from distributed import Client, LocalCluster

    from cccdask.tiled import default_tile_shape, whole_frame_memory_bytes
    from cccdask.kernels.profile import shift_range

    shape, spacing = tuple(args.shape), tuple(args.spacing)
    frame_bytes = math.prod(shape) * 4
    t0 = time.perf_counter()
    paths = write_frame(Path(args.data_dir), shape, tuple(args.chunks), shift=(1, 2, 3))
    print(f"data: 2 x {frame_bytes / 2**30:.2f} GiB float32 {shape} in Zarr at {args.data_dir} "
          f"(chunks {tuple(args.chunks)}; ready in {time.perf_counter() - t0:.0f} s)")
    lo, hi = shift_range(shape, spacing, args.max_distance)
    halo = tuple(max(-a, b) for a, b in zip(lo, hi))
    whole = whole_frame_memory_bytes(shape, args.max_distance, spacing)
    print(f"max_distance {args.max_distance} at spacing {spacing}: halo {halo} voxels; whole-frame "
          f"FFTs would need ~{whole / 2**30:.1f} GiB, workers have {args.worker_memory}")

    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      memory_limit=args.worker_memory, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        image1, image2 = (da.from_zarr(p) for p in paths)
        from cccdask.tiled import tiled_correlograms, worker_memory_budget

        tile = default_tile_shape(shape, halo, memory_budget_bytes=worker_memory_budget(),
                                  chunk_shape=image1.chunksize)
        baseline = client.run(worker_usage)
        t0 = time.perf_counter()
        result = tiled_correlograms(image1, image2, None, spacing, args.max_distance)
        original, subtracted, mean = dask.compute(result["original"], result["subtracted"], result["mean"])
        elapsed = time.perf_counter() - t0
        usage = client.run(worker_usage)
    zero = tuple(-a for a in lo)
    peak_at = np.unravel_index(np.argmax(subtracted), subtracted.shape)
    print(f"tiles {tile} ({math.prod(math.ceil(n / t) for n, t in zip(shape, tile))} tasks); "
          f"correlograms {subtracted.shape}; mean {mean:.4f}; subtracted peak at shift "
          f"{tuple(int(p) - z for p, z in zip(peak_at, zero))} (expected (-1, -2, -3): image 2 is image 1 "
          f"moved by +(1, 2, 3))")
    print(f"time {elapsed:.1f} s ({frame_bytes / 2**20 / elapsed:.0f} MiB/s of frame)")
    for address in sorted(usage):
        (peak, cpu), (start, cpu0) = usage[address], baseline[address]
        print(f"  worker {address}: peak RSS {peak / 2**20:.0f} MiB (after start-up "
              f"{start / 2**20:.0f} MiB), limit {args.worker_memory}; CPU {cpu - cpu0:.0f} s")


def _spilled(dask_worker) -> int:
    """Bytes this worker has spilled to disk so far (0 when it has no spill buffer)."""
    total = getattr(dask_worker.data, "spilled_total", None)
    return int(getattr(total, "disk", 0) or 0) if total is not None else 0


def pipeline_runs(args) -> None:
    from distributed import Client, LocalCluster

    from cccdask.config import config_from_dict
    from cccdask.pipeline import run

    shape, spacing = tuple(args.run_shape or args.shape), tuple(args.spacing)
    chunks = tuple(min(c, n) for c, n in zip(args.chunks, shape))
    name = ("run-" + "x".join(map(str, shape)) + (f"-{args.levels}levels" if args.levels else "")
            + (f"-blur{args.blur:g}" if args.blur else ""))
    directory = Path(args.data_dir) / name
    paths = write_frame(directory, shape, chunks, shift=(1, 2, 3), levels=args.levels, blur=args.blur)
    tile = list(args.run_tile or chunks)
    base = {
        "input": {"image1": {"path": paths[0], "dims": "zyx"}, "image2": {"path": paths[1], "dims": "zyx"},
                  "spacing": list(spacing)},
        "ccc": {"max_distance": args.max_distance},
        "execution": {"tile_shape": tile},
        "output": {"store": str(directory / "correlation.zarr"), "reports": False, "overwrite": True},
    }
    parts = {
        "median backgrounds": {"preprocess": {"background": {"image1": {"method": "median"},
                                                             "image2": {"method": "median"}}}},
        "generated mask": {"preprocess": {"mask": {"source": "image1", "sigma": args.mask_sigma, "method": "otsu",
                                                   "min_size": args.mask_min_size}}},
        "contributions": {"ccc": {"max_distance": args.max_distance, "contributions": True}},
        "coefficients": {"coefficients": {"threshold": "costes"}},
    }

    def with_parts(names, store):
        data = dict(base, output=dict(base["output"], store=str(directory / store)))
        for part in names:
            for section, value in parts[part].items():
                data[section] = {**data.get(section, {}), **value}
        return data

    runs = [("correlation only", base)]
    if args.each_part:  # the cost of each part: correlation plus that part alone
        runs += [(f"+ {part}", with_parts([part], f"{part.replace(' ', '-')}.zarr")) for part in parts]
    runs.append((" + ".join(parts), with_parts(list(parts), "full.zarr")))
    if args.full_only:
        runs = runs[-1:]
    print(f"\npipeline runs: 2 x {math.prod(shape) * 4 / 2**30:.2f} GiB float32 {shape}"
          f"{f' on {args.levels} levels' if args.levels else ', values all distinct'}, speckle blurred by "
          f"{args.blur:g} voxels, tiles {tile}, "
          f"{args.workers} workers limited to {args.worker_memory}")
    print("| run | wall (s) | peak RSS per worker (MiB) | spilled to disk (MiB) | found |")
    print("| --- | --- | --- | --- | --- |")
    for name, data in runs:
        # a fresh cluster per run: each run's own peaks
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                          memory_limit=args.worker_memory, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            data = dict(data, cluster={"kind": "address", "address": cluster.scheduler_address})
            t0 = time.perf_counter()
            run(config_from_dict(data, base_dir=directory))
            elapsed = time.perf_counter() - t0
            peaks = [peak / 2**20 for peak, _ in client.run(worker_usage).values()]
            spilled = sum(client.run(_spilled).values()) / 2**20
        print(f"| {name} | {elapsed:.1f} | {', '.join(f'{p:.0f}' for p in peaks)} | {spilled:.0f} | "
              f"{_found(data['output']['store'])} |")


def _found(store: str) -> str:
    """What the run stored: the fit (expected mean: the shift's length), and Pearson when computed."""
    import xarray as xr

    ds = xr.open_zarr(store).isel(t=0)
    found = (f"mean {float(ds['mean']):.3f}, sigma {float(ds['sigma']):.3f}" if bool(ds["fit_ok"])
             else f"no fit: {str(ds['frame_error'].values)[:60]}")
    if "pearson" in ds:
        found += f"; Pearson {float(ds['pearson']):.3f}, Costes thresholds {ds['threshold'].values.round(3).tolist()}"
    if "contribution1" in ds:
        found += f"; contribution1 mean {float(ds['contribution1'][::16, ::16, ::16].mean()):.3g}"
    return found


def compare(args) -> None:
    from cccdask.kernels.correlate import mask_images, masked_correlograms
    from cccdask.kernels.profile import shift_range
    from cccdask.tiled import default_tile_shape, tiled_correlograms

    shape = tuple(args.compare_shape)
    spacing = tuple(args.compare_spacing or args.spacing)[-len(shape):]
    rng = np.random.default_rng(1)
    image1 = rng.random(shape, dtype=np.float32)
    image2 = (0.7 * np.roll(image1, 3, axis=-1) + 0.3 * rng.random(shape)).astype(np.float32)
    mask = np.ones(shape, bool)
    mask[:, : shape[1] // 8] = False
    print(f"\ncomparison frame {shape} ({math.prod(shape) * 4 / 2**20:.0f} MiB float32), one thread each, "
          f"median of {args.repeats}")
    print("| max distance | halo K (voxels) | tile | whole frame (s) | tiled (s) | tiled / whole |")
    print("| --- | --- | --- | --- | --- | --- |")
    for max_distance in args.compare_distances:
        lo, hi = shift_range(shape, spacing, max_distance)
        halo = tuple(max(-a, b) for a, b in zip(lo, hi))
        tile = tuple(args.compare_tile) if args.compare_tile else default_tile_shape(
            shape, halo, memory_budget_bytes=args.tile_budget_mib * 2**20)

        def whole():
            masked = mask_images(image1, image2, mask, spacing)
            return masked_correlograms(masked, lo, hi, "full")

        def tiled():
            result = tiled_correlograms(image1, image2, mask, spacing, max_distance, tile_shape=tile)
            return dask.compute(result["original"], result["subtracted"], scheduler="synchronous")

        times = {}
        for name, run in (("whole", whole), ("tiled", tiled)):
            run()
            samples = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                out = run()
                samples.append(time.perf_counter() - t0)
            times[name] = (statistics.median(samples), out)
        (tw, (o_w, s_w)), (tt, (o_t, s_t)) = times["whole"], times["tiled"]
        error = max(np.abs(o_t - o_w).max() / np.abs(o_w).max(), np.abs(s_t - s_w).max() / np.abs(s_w).max())
        print(f"| {max_distance} | {halo} | {tile} | {tw:.2f} | {tt:.2f} | {tt / tw:.2f} |"
              f"  (max relative difference {error:.1e})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 1024, 1024],
                        help="large frame (z y x); default 2 GiB float32 per channel")
    parser.add_argument("--chunks", type=int, nargs=3, default=[64, 256, 256], help="Zarr chunks")
    parser.add_argument("--spacing", type=float, nargs=3, default=[0.2, 0.1, 0.1])
    parser.add_argument("--max-distance", type=float, default=0.5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-memory", default="1GiB")
    parser.add_argument("--data-dir", default="/tmp/cccdask-bench-tiled")
    parser.add_argument("--compare-shape", type=int, nargs="+", default=[64, 512, 512],
                        help="frame for the tiled / whole-frame comparison, 2D or 3D")
    parser.add_argument("--compare-spacing", type=float, nargs="+", default=None,
                        help="its spacing (default: the last axes of --spacing)")
    parser.add_argument("--compare-distances", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--compare-tile", type=int, nargs="+", default=None,
                        help="tile for the comparison; default from --tile-budget-mib")
    parser.add_argument("--tile-budget-mib", type=float, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--run-shape", type=int, nargs=3, default=None,
                        help="frame of the pipeline runs (part 3); default --shape")
    parser.add_argument("--run-tile", type=int, nargs=3, default=None, help="their tiles; default --chunks")
    parser.add_argument("--levels", type=int, default=256,
                        help="values of the pipeline runs' frame on this many levels (0: all distinct; the "
                             "coefficients of a frame of distinct values need 8 B per voxel in one task)")
    parser.add_argument("--blur", type=float, default=1.5,
                        help="speckle of the pipeline runs' frame: white noise blurred by this sigma (voxels; 0: "
                             "white noise, whose correlation is a single voxel: no Gaussian fit, Costes undefined)")
    parser.add_argument("--mask-sigma", type=float, default=0.3, help="blur of the generated mask (physical)")
    parser.add_argument("--mask-min-size", type=float, default=0.05, help="its smallest object (physical volume)")
    parser.add_argument("--each-part", action="store_true",
                        help="part 3 also runs the correlation plus each part alone (its cost)")
    parser.add_argument("--full-only", action="store_true", help="part 3 runs only the run with every part")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--skip-compare", action="store_true")
    args = parser.parse_args()
    if not args.skip_large:
        large_frame(args)
    if not args.skip_pipeline:
        pipeline_runs(args)
    if not args.skip_compare:
        compare(args)


if __name__ == "__main__":
    main()
