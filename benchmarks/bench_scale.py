"""Long series end to end: store size and file count, memory over the run, opening the store.

For each series (default: 20 000 frames of 128x128 and 2 000 frames of 512x512, uint16,
two channels, no mask, default config) the whole pipeline runs on a LocalCluster of W
single-threaded worker processes on 127.0.0.1, and the script prints:

* wall time of the run, and the per-frame overhead: wall x W / frames minus the kernel
  alone (``ccc_frame`` on frames in memory, one process, timed in the same run);
* peak resident memory of the driver (this process) and of the workers (summed), up to
  10 % of the frames recorded and over the whole run (out of core: flat);
* files in the store, store bytes / input bytes (the uint16 input, uncompressed);
* the time to open the store and load ``mean``, ``sigma``, ``confidence`` for all
  frames, and the time of ``cccdask inspect`` (a fresh interpreter);

and, last, the time to validate and plan a 100 000-frame config (inputs opened, config
validated, the plan and store layout built; no frame is read: the input is a Zarr array
with metadata only).

    python benchmarks/bench_scale.py                      # the sizes above
    python benchmarks/bench_scale.py --series 2000x128 --series 200x512   # smaller
    python benchmarks/bench_scale.py --series 3x2048 --max-distance none  # results / input of 2048^2
"""

from __future__ import annotations

import argparse
import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

SPACING = (0.1, 0.1)
MIB = 2**20


def write_series(path: Path, n_frames: int, size: int, chunk_frames: int, data: bool = True) -> int:
    """A uint16 ``tcyx`` OME-Zarr of paired spots (10 scenes repeated); returns its raw bytes."""
    import zarr

    from cccdask.io.store import fast_compressors, ngff_multiscales
    from cccdask.synthetic import paired_spots

    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs["ome"] = ngff_multiscales([("0", tuple("tcyx"))], SPACING, "um")
    shape = (n_frames, 2, size, size)
    array = group.create_array("0", shape=shape, dtype=np.uint16, chunks=(chunk_frames, 2, size, size),
                               dimension_names=list("tcyx"), compressors=fast_compressors())
    if data:
        scenes = []
        for i in range(10):
            scene = paired_spots(shape=(size, size), spacing=SPACING, distance=0.3 + 0.05 * i, seed=i,
                                 n_pairs=max(4, int(200 * (size / 256) ** 2)))
            scenes.append(np.stack([scene.image1, scene.image2]).clip(0) * 20000 + 100)
        scenes = np.stack(scenes).astype(np.uint16)
        for start in range(0, n_frames, chunk_frames):
            stop = min(start + chunk_frames, n_frames)
            array[start:stop] = scenes[np.arange(start, stop) % 10]
    return int(np.prod(shape)) * 2


def config_for(folder: Path, address: str, max_distance):
    from cccdask.config import config_from_dict

    return config_from_dict({
        "input": {"image1": {"path": "input.ome.zarr", "channel": 0},
                  "image2": {"path": "input.ome.zarr", "channel": 1}},
        "ccc": {"max_distance": max_distance},
        "output": {"store": "results.zarr", "reports": False},
        "cluster": {"kind": "address", "address": address},
    }, base_dir=folder)


def kernel_seconds(folder: Path, max_distance, repeats: int = 10) -> tuple[float, float]:
    """Median wall and CPU seconds of ``ccc_frame`` on frames in memory, this process."""
    import zarr

    from cccdask.kernels.ccc import ccc_frame
    from cccdask.kernels.profile import profile_geometry

    array = zarr.open_array(str(folder / "input.ome.zarr" / "0"), mode="r")
    frames = [np.asarray(array[i]) for i in range(min(repeats, array.shape[0]))]
    geometry = profile_geometry(frames[0].shape[1:], SPACING, max_distance, False)
    ccc_frame(frames[0][0], frames[0][1], None, geometry)
    times = []
    for frame in frames:
        wall, cpu = time.perf_counter(), time.process_time()
        ccc_frame(frame[0], frame[1], None, geometry)
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return tuple(np.median(np.array(times), axis=0))


class MemoryTrace:
    """Peak RSS of the driver (this process) and the workers (summed), sampled every 20 ms."""

    def __init__(self, worker_pids):
        self.driver = psutil.Process()
        self.workers = [psutil.Process(p) for p in worker_pids]
        self.peak = [0, 0]
        self.at_tenth = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def sample(self):
        rss = [self.driver.memory_info().rss, 0]
        for p in self.workers:
            try:
                rss[1] += p.memory_info().rss
            except psutil.Error:
                pass
        self.peak = [max(a, b) for a, b in zip(self.peak, rss)]
        return rss

    def _sample(self):
        while not self._stop.is_set():
            self.sample()
            time.sleep(0.02)

    def progress(self, done: int, total: int, failed: int = 0):
        if self.at_tenth is None and done >= total / 10:
            self.sample()
            self.at_tenth = list(self.peak)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()


def store_files(store: Path) -> tuple[int, int]:
    files = [p for p in store.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def run_series(root: Path, n_frames: int, size: int, cluster, args) -> dict:
    import xarray as xr

    from cccdask.pipeline import resolve_frames_per_task, run

    folder = root / f"{n_frames}x{size}"
    folder.mkdir()
    fpt = resolve_frames_per_task("auto", (size, size), n_frames)
    written = time.perf_counter()
    input_bytes = write_series(folder / "input.ome.zarr", n_frames, size, fpt)
    written = time.perf_counter() - written
    kernel_wall, kernel_cpu = kernel_seconds(folder, args.max_distance)
    config = config_for(folder, cluster.scheduler_address, args.max_distance)
    pids = [proc.pid for proc in psutil.Process().children(recursive=True)]  # nannies and workers
    with MemoryTrace(pids) as memory:
        start = time.perf_counter()
        run(config, progress=memory.progress)
        wall = time.perf_counter() - start
    store = folder / "results.zarr"
    files, store_bytes = store_files(store)
    began = time.perf_counter()
    with xr.open_zarr(str(store)) as ds:
        ds[["mean", "sigma", "confidence"]].load()
    load = time.perf_counter() - began
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cccdask", "inspect", str(store)], check=True, capture_output=True)
    inspect = time.perf_counter() - began
    shutil.rmtree(folder / "input.ome.zarr")
    return dict(
        series=f"{n_frames} x {size}²", fpt=fpt, wall=wall, write_input=written,
        overhead_ms=(wall * args.workers / n_frames - kernel_wall) * 1e3, kernel_ms=kernel_wall * 1e3,
        kernel_cpu_ms=kernel_cpu * 1e3, driver_tenth=memory.at_tenth[0], driver_end=memory.peak[0],
        workers_tenth=memory.at_tenth[1], workers_end=memory.peak[1], files=files,
        ratio=store_bytes / input_bytes, load=load, inspect=inspect,
    )


def planning_seconds(root: Path, n_frames: int, size: int) -> tuple[float, float]:
    """Seconds to validate (config + inputs, metadata only) and to plan a long series."""
    from cccdask.config import config_from_dict
    from cccdask.pipeline import estimate_task_memory, open_inputs, plan_run, resolve_frames_per_task, run_identity
    from cccdask.pipeline.plan import frame_batches

    folder = root / "plan"
    folder.mkdir()
    write_series(folder / "input.ome.zarr", n_frames, size, 64, data=False)
    began = time.perf_counter()
    config = config_from_dict({
        "input": {"image1": {"path": "input.ome.zarr", "channel": 0},
                  "image2": {"path": "input.ome.zarr", "channel": 1}},
        "output": {"store": "results.zarr"}, "cluster": {"kind": "synchronous"},
    }, base_dir=folder)
    inputs = open_inputs(config)
    identity = run_identity(config, inputs.frames)
    validate = time.perf_counter() - began
    fpt = resolve_frames_per_task("auto", (size, size), n_frames)
    estimate_task_memory(config, inputs.frames, fpt)
    plan_run(config, inputs, identity)
    frame_batches(n_frames, fpt)
    return validate, time.perf_counter() - began


def print_row(r: dict) -> None:
    """One table row, printed as soon as its series is done."""
    print(f"| {r['series']} | {r['fpt']} | {r['wall']:.1f} | {r['kernel_ms']:.1f} ({r['kernel_cpu_ms']:.1f}) | "
          f"{r['overhead_ms']:.1f} | {r['driver_tenth'] / MIB:.0f} / {r['driver_end'] / MIB:.0f} "
          f"({r['driver_end'] / r['driver_tenth']:.3f}x) | {r['workers_tenth'] / MIB:.0f} / "
          f"{r['workers_end'] / MIB:.0f} | {r['files']} | {r['ratio']:.4f} | {r['load']:.3f} | "
          f"{r['inspect']:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", action="append", help="FRAMESxSIZE, repeatable (default 20000x128, 2000x512)")
    parser.add_argument("--plan-frames", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-distance", default="none", help="ccc.max_distance (um) or none (the default config)")
    args = parser.parse_args()
    args.max_distance = None if args.max_distance.lower() == "none" else float(args.max_distance)
    series = [tuple(int(v) for v in s.split("x")) for s in (args.series or ["20000x128", "2000x512"])]

    import dask
    from distributed import LocalCluster

    from cccdask.cluster import cluster_process_settings

    root = Path(tempfile.mkdtemp(prefix="cccdask-scale-"))
    print(f"{args.workers} workers x 1 thread, default config (max_distance {args.max_distance}, profile_range "
          f"auto, no mask); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| series | frames/task | run (s) | kernel (ms/frame, CPU ms) | overhead (ms/frame) | driver peak MiB "
          "10% / 100% | workers peak MiB 10% / 100% | store files | store / input bytes | open + load "
          "mean, sigma, confidence (s) | cccdask inspect (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    try:
        with dask.config.set(cluster_process_settings()):
            cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None, host="127.0.0.1")
        try:
            for n_frames, size in series:
                print_row(run_series(root, n_frames, size, cluster, args))
        finally:
            cluster.close()
        validate, plan = planning_seconds(root, args.plan_frames, 128)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"validate {args.plan_frames} frames of 128²: {validate:.2f} s; validate + plan: {plan:.2f} s")


if __name__ == "__main__":
    main()
