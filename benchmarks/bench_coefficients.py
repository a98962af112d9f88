"""All coefficients in one pass over a two-channel Zarr array, vs merely reading it.

Writes a synthetic ``(channel=2, t, y, x)`` uint16 Zarr array of the requested size, and
the same series as float32 with (mostly) distinct values (a gamma-distributed signal and
Gaussian noise added, not rounded), to /tmp by default (reused when they already have
the right shape), then times in one run, for each of the two:

* read: every chunk read and decompressed, nothing computed;
* coefficients: every coefficient of every frame (Van Steensel with shifts -20..20);
* coefficients without Van Steensel (``van_steensel_shifts=None``).

Each timing is the median of ``--repeats`` rounds (the runs in turn) after a warm-up,
on Dask's threaded scheduler (all cores); wall and CPU seconds are printed.

A second table times one 2048 x 2048 frame in memory (one ``coefficients`` call,
medians of ``--frame-repeats``) as uint16, as float32 with repeated values (the uint16
values), float32 with distinct values, float64 that float32 holds exactly, and other
float64, with the ratio to uint16, and the peak memory of the float32 call above its
inputs (``tracemalloc``, bytes per voxel). Usage::

    python benchmarks/bench_coefficients.py --size-gib 0.1    # quick check
    python benchmarks/bench_coefficients.py --size-gib 2      # the issue's benchmark
"""

from __future__ import annotations

import argparse
import ctypes
import os

# Dask's threads use every core; a multi-threaded BLAS inside each task would oversubscribe
# them (Dask's distributed workers set the same by default).
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")
import shutil
import statistics
import time
import tracemalloc

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr

from cccdask import coefficients
from cccdask.synthetic import paired_spots


def write_dataset(path: str, size_gib: float, frame: int, seed: int = 0, dtype=np.uint16) -> zarr.Array:
    """A ``(2, t, frame, frame)`` array, one chunk per frame, of as many frames as make
    ``size_gib`` GiB of uint16: uint16 values, or float32 ones with distinct values."""
    n_frames = max(1, int(round(size_gib * 2**30 / (2 * 2 * frame * frame))))
    shape = (2, n_frames, frame, frame)
    if os.path.exists(path):
        existing = zarr.open_array(path, mode="r")
        if existing.shape == shape and existing.dtype == dtype:
            return existing
        shutil.rmtree(path)
    array = zarr.create_array(path, shape=shape, chunks=(1, 1, frame, frame), dtype=dtype)
    rng = np.random.default_rng(seed)
    templates = []
    for k in range(4):  # a few spot scenes (12-bit intensities), cycled with fresh noise
        scene = paired_spots(shape=(frame, frame), distance=0.05, n_pairs=frame * 2,
                             n_decoys=frame // 2, noise=0.0, amplitude=2500.0, seed=seed + k)
        templates.append((scene.image1 + 100.0, scene.image2 + 120.0))
    for t in range(n_frames):
        for c in range(2):
            noisy = templates[t % len(templates)][c] + rng.normal(0.0, 20.0, (frame, frame))
            if dtype == np.uint16:
                array[c, t] = np.clip(noisy, 0, 4095).astype(np.uint16)
            else:
                array[c, t] = (noisy + rng.gamma(2.0, 50.0, (frame, frame))).astype(dtype)
    return array


def frame_pair(frame: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """One frame of each channel: a gamma-distributed signal plus Gaussian noise (float64)."""
    rng = np.random.default_rng(seed)
    signal = rng.gamma(2.0, 300.0, (frame, frame))
    return (signal + rng.normal(0.0, 20.0, signal.shape),
            0.6 * signal + rng.gamma(2.0, 150.0, signal.shape) + rng.normal(0.0, 20.0, signal.shape))


def per_frame_table(frame: int, repeats: int) -> None:
    """Print the per-frame table (see the module docstring)."""
    image1, image2 = frame_pair(frame)
    as_uint16 = [np.clip(np.rint(v), 0, 65535).astype(np.uint16) for v in (image1, image2)]
    single = [v.astype(np.float32) for v in (image1, image2)]
    cases = {
        "uint16": as_uint16,
        "float32, repeated values (the uint16 values)": [v.astype(np.float32) for v in as_uint16],
        "float32, distinct values": single,
        "float64 that float32 holds": [v.astype(np.float64) for v in single],
        "float64, distinct values": [image1, image2],
    }
    for images in cases.values():  # warm-up: compiled kernels loaded
        coefficients(images[0][:64, :64], images[1][:64, :64])
    times = timed({name: (lambda images=images: coefficients(*images)) for name, images in cases.items()},
                  repeats)
    distinct = [len(np.unique(v)) / v.size for v in single]
    print()
    print(f"one {frame} x {frame} frame in memory, all coefficients (Van Steensel -20..20), medians of "
          f"{repeats}; float32 distinct values per channel {distinct[0]:.0%}, {distinct[1]:.0%}")
    print()
    print("| frame | wall (s) | ratio to uint16 | CPU (s) | CPU ratio |")
    print("| --- | --- | --- | --- | --- |")
    base_wall, base_cpu = times["uint16"]
    for name, (seconds, cpu) in times.items():
        print(f"| {name} | {seconds:.3f} | {seconds / base_wall:.1f}x | {cpu:.3f} | {cpu / base_cpu:.1f}x |")
    tracemalloc.start()
    coefficients(*single)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print()
    print(f"peak memory of the float32 call above its inputs: {peak / 2**20:.0f} MiB, "
          f"{peak / single[0].size:.1f} bytes per voxel")


def read_all(array: da.Array) -> None:
    """Read and decompress every chunk; keep one value per chunk."""
    tiny = array.map_blocks(lambda b: b.reshape(-1)[:1].reshape((1,) * b.ndim),
                            chunks=tuple((1,) * len(c) for c in array.chunks), dtype=array.dtype)
    tiny.compute()


def timed(functions: dict, repeats: int) -> dict:
    """Median wall and CPU seconds of each function, run in turns (load changes hit all alike).

    CPU seconds (this process, all threads) measure the work done, and are much less
    disturbed than wall time by other programs on a shared machine.
    """
    wall = {name: [] for name in functions}
    cpu = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            function()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in functions}


def keep_freed_memory() -> None:
    """Let glibc reuse freed memory instead of returning it to the OS (spec/performance.md:
    freshly mapped pages are touched at ~0.5 GB/s on these machines)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: heap, not mmap, below 1 GiB
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GiB of freed heap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=2.0, help="total size of both channels (GiB)")
    parser.add_argument("--frame", type=int, default=2048, help="frame side (voxels); one chunk per frame")
    parser.add_argument("--path", default="/tmp/cccdask_bench_coefficients.zarr")
    parser.add_argument("--float-path", default="/tmp/cccdask_bench_coefficients_float32.zarr")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frame-repeats", type=int, default=5)
    parser.add_argument("--no-series", action="store_true", help="only the per-frame table")
    parser.add_argument("--no-mallopt", action="store_true", help="leave glibc's malloc settings alone")
    args = parser.parse_args()
    if not args.no_mallopt:
        keep_freed_memory()

    if not args.no_series:
        series_table(args)
    per_frame_table(args.frame, args.frame_repeats)


def series_table(args: argparse.Namespace) -> None:
    """Print the series table (see the module docstring)."""
    arrays = {"uint16": write_dataset(args.path, args.size_gib, args.frame),
              "float32": write_dataset(args.float_path, args.size_gib, args.frame, dtype=np.float32)}
    paths = {"uint16": args.path, "float32": args.float_path}
    functions = {}
    for kind in arrays:
        source = da.from_zarr(paths[kind])
        dims = ("t", "y", "x")
        image1 = xr.DataArray(source[0], dims=dims)
        image2 = xr.DataArray(source[1], dims=dims)
        with dask.config.set(scheduler="threads"):
            read_all(source)  # warm-up: page cache and imports
            coefficients(image1[:1], image2[:1]).compute()
        functions[(kind, "read only")] = lambda source=source: read_all(source)
        functions[(kind, "all coefficients (Van Steensel -20..20)")] = \
            lambda image1=image1, image2=image2: coefficients(image1, image2).compute()
        functions[(kind, "all coefficients except Van Steensel")] = lambda image1=image1, image2=image2: \
            coefficients(image1, image2, van_steensel_shifts=None).compute()
    with dask.config.set(scheduler="threads"):
        times = timed(functions, args.repeats)

    for kind, array in arrays.items():
        print(f"{kind} data: {array.nbytes / 2**30:.2f} GiB, shape {array.shape} (channel, t, y, x), "
              f"chunks {array.chunks}, codec {array.compressors}")
    print(f"{os.cpu_count()} cores, mallopt {'off' if args.no_mallopt else 'on'}")
    print()
    print("| data | work | wall (s) | GB/s | wall ratio to its read | CPU (s) | CPU ratio to its read |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for (kind, name), (seconds, cpu) in times.items():
        read_wall, read_cpu = times[(kind, "read only")]
        n_bytes = arrays[kind].nbytes
        print(f"| {kind} | {name} | {seconds:.2f} | {n_bytes / seconds / 1e9:.2f} | {seconds / read_wall:.2f}x "
              f"| {cpu:.1f} | {cpu / read_cpu:.2f}x |")


if __name__ == "__main__":
    main()
