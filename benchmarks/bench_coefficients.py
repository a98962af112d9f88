"""All coefficients in one pass over a two-channel uint16 Zarr array, vs merely reading it.

Writes a synthetic ``(channel=2, t, y, x)`` uint16 Zarr array of the requested size (to
/tmp by default; reused when it already has the right shape), then times in one run:

* read: every chunk read and decompressed, nothing computed;
* coefficients: every coefficient of every frame (Van Steensel with shifts -20..20);
* coefficients without Van Steensel (``van_steensel_shifts=None``).

Each timing is the median of ``--repeats`` rounds (the three runs in turn) after a
warm-up, on Dask's threaded scheduler (all cores); wall and CPU seconds are printed. Usage::

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

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr

from cccdask import coefficients
from cccdask.synthetic import paired_spots


def write_dataset(path: str, size_gib: float, frame: int, seed: int = 0) -> zarr.Array:
    """A ``(2, t, frame, frame)`` uint16 array of about ``size_gib`` GiB, one chunk per frame."""
    n_frames = max(1, int(round(size_gib * 2**30 / (2 * 2 * frame * frame))))
    shape = (2, n_frames, frame, frame)
    if os.path.exists(path):
        existing = zarr.open_array(path, mode="r")
        if existing.shape == shape and existing.dtype == np.uint16:
            return existing
        shutil.rmtree(path)
    array = zarr.create_array(path, shape=shape, chunks=(1, 1, frame, frame), dtype=np.uint16)
    rng = np.random.default_rng(seed)
    templates = []
    for k in range(4):  # a few spot scenes (12-bit intensities), cycled with fresh noise
        scene = paired_spots(shape=(frame, frame), distance=0.05, n_pairs=frame * 2,
                             n_decoys=frame // 2, noise=0.0, amplitude=2500.0, seed=seed + k)
        templates.append((scene.image1 + 100.0, scene.image2 + 120.0))
    for t in range(n_frames):
        for c in range(2):
            noisy = templates[t % len(templates)][c] + rng.normal(0.0, 20.0, (frame, frame))
            array[c, t] = np.clip(noisy, 0, 4095).astype(np.uint16)
    return array


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
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-mallopt", action="store_true", help="leave glibc's malloc settings alone")
    args = parser.parse_args()
    if not args.no_mallopt:
        keep_freed_memory()

    array = write_dataset(args.path, args.size_gib, args.frame)
    source = da.from_zarr(args.path)
    dims = ("t", "y", "x")
    image1 = xr.DataArray(source[0], dims=dims)
    image2 = xr.DataArray(source[1], dims=dims)
    n_bytes = array.nbytes

    with dask.config.set(scheduler="threads"):
        read_all(source)  # warm-up: page cache and imports
        coefficients(image1[:1], image2[:1]).compute()
        times = timed({
            "read only": lambda: read_all(source),
            "all coefficients (Van Steensel -20..20)": lambda: coefficients(image1, image2).compute(),
            "all coefficients except Van Steensel": lambda: coefficients(
                image1, image2, van_steensel_shifts=None).compute(),
        }, args.repeats)

    print(f"data: {n_bytes / 2**30:.2f} GiB uint16, shape {array.shape} (channel, t, y, x), "
          f"chunks {array.chunks}, codec {array.compressors}, {os.cpu_count()} cores, "
          f"mallopt {'off' if args.no_mallopt else 'on'}")
    print()
    read_wall, read_cpu = times["read only"]
    print("| work | wall (s) | GB/s | wall ratio to read | CPU (s) | CPU ratio to read |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (seconds, cpu) in times.items():
        print(f"| {name} | {seconds:.2f} | {n_bytes / seconds / 1e9:.2f} | {seconds / read_wall:.2f}x "
              f"| {cpu:.1f} | {cpu / read_cpu:.2f}x |")


if __name__ == "__main__":
    main()
