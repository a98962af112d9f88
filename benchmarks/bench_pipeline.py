"""Pipeline overhead and out-of-core memory.

1. Throughput: frames/s of a whole run (read from OME-Zarr, CCC, write the store) on a
   LocalCluster of W single-threaded worker processes, against the kernel alone
   (``ccc_frame`` on frames already in memory, one process) times frames / W. The
   ratio is the Dask + I/O overhead (issue 19: <= 1.15 at 1024², <= 1.3 at 256²);
   "steady state" leaves out the run's set-up and finalisation (from the first
   recorded batch to the last). Cluster
   start-up and the reports are left out; the workers are warmed up by a first run.
   On a 2-core machine the driver and scheduler share the cores with the W workers.
   The CPU time the workers spent per frame (reading, kernel, writing) is printed
   beside it: compared with the kernel's own time it separates the pipeline's cost from
   CPU contention on a busy machine. The task alone (``compute_frames``: read, kernel,
   frame quality, results packed for the driver) is also timed in this process, without
   Dask, step by step inside its own calls (:func:`task_breakdown`): its CPU against its
   own kernel calls is the pipeline's own cost per frame, free of the workers' background
   (heartbeats, profiler) and of the machine's drift in core speed.
2. Overhead against the kernel on the same workers, interleaved (``--rounds``): the
   speed of this machine's cores drifts by up to +-30 % over minutes (other VMs on the
   host), so a kernel timed once before the runs is not the kernel the runs met. Each
   round times the kernel in the cluster's own workers, all of them at once (frames in
   memory, as many processes as the run uses), then a pipeline run, then the kernel
   again; the run's steady state is compared with the mean of the two kernels around it.
3. Memory: peak resident memory of the driver and all worker processes together,
   above their level before the run, for a run over N frames and over 10 N frames
   (out-of-core: the peaks should be within 15%).

    python benchmarks/bench_pipeline.py --size 1024 --frames 10 --long 300 --rounds 3
    python benchmarks/bench_pipeline.py --size 256 --frames 40 --long 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import os

# The kernel alone is timed with one thread, as the workers run it (distributed sets these
# in worker processes); set before NumPy is imported.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil


def write_input(folder: Path, n_frames: int, size: int) -> None:
    from cccdask.io.store import write_ome_zarr
    from cccdask.synthetic import paired_spots

    spacing = (0.05, 0.05)
    scenes = [paired_spots(shape=(size, size), spacing=spacing, distance=0.3 + 0.05 * (i % 10), seed=i,
                           n_pairs=int(200 * (size / 256) ** 2)) for i in range(min(n_frames, 10))]
    images = np.stack([np.stack([scenes[i % len(scenes)].image1, scenes[i % len(scenes)].image2])
                       for i in range(n_frames)])
    masks = np.stack([scenes[i % len(scenes)].mask for i in range(n_frames)]).astype(np.uint8)
    write_ome_zarr(folder / "input.ome.zarr", images, "tcyx", spacing)
    write_ome_zarr(folder / "mask.ome.zarr", masks, "tyx", spacing)


def link_input(root: Path, folder: Path) -> None:
    """A new ``folder`` whose inputs are links to ``root``'s (a fresh store, the same files)."""
    folder.mkdir()
    for name in ("input.ome.zarr", "mask.ome.zarr"):
        (folder / name).symlink_to(root / name)


def timed_run(folder: Path, address: str, args) -> tuple[float, float, int]:
    """Run the pipeline on ``folder``'s inputs into a new store.

    Returns the whole run's seconds, and its steady state: seconds and frames from the
    first recorded batch to the last (no set-up, no finalising).
    """
    from cccdask.pipeline import run

    stamps = []
    start = time.perf_counter()
    run(config_for(folder, "results.zarr", address, args),
        progress=lambda done, total, *_: stamps.append((time.perf_counter(), done)))
    elapsed = time.perf_counter() - start
    (t0, d0), (t1, d1) = next(s for s in stamps if s[1] > 0), stamps[-1]
    return elapsed, t1 - t0, (d1 - d0) or float("nan")


def config_for(folder: Path, store: str, address: str, args):
    from cccdask.config import config_from_dict

    return config_from_dict({
        "input": {"image1": {"path": "input.ome.zarr", "channel": 0},
                  "image2": {"path": "input.ome.zarr", "channel": 1}, "mask": "mask.ome.zarr"},
        "ccc": {"mode": args.mode, "max_distance": args.max_distance, "contributions": args.contributions},
        "output": {"store": store, "reports": False},
        "cluster": {"kind": "address", "address": address},
        "execution": {"frames_per_task": args.frames_per_task if args.frames_per_task == "auto"
                      else int(args.frames_per_task)},
    }, base_dir=folder)


def _frames_in_memory(folder: Path, count: int):
    from cccdask.io.readers import open_image

    image = open_image(folder / "input.ome.zarr")
    mask = open_image(folder / "mask.ome.zarr")
    return [(np.asarray(image.isel(t=i, c=0)), np.asarray(image.isel(t=i, c=1)), np.asarray(mask.isel(t=i)))
            for i in range(min(count, image.sizes["t"]))]


def _kernel(frame, args):
    from cccdask.kernels.ccc import ccc_frame
    from cccdask.kernels.profile import profile_geometry

    geometry = profile_geometry(frame[0].shape, (0.05, 0.05), args.max_distance, False)
    start, cpu = time.perf_counter(), time.process_time()
    ccc_frame(*frame, geometry, mode=args.mode, contributions=args.contributions)
    return time.perf_counter() - start, time.process_time() - cpu


def kernel_seconds_per_frame(folder: Path, args, repeats: int) -> tuple[float, float]:
    """Median wall and CPU time of the kernel on frames in memory, in this process."""
    frames = _frames_in_memory(folder, repeats)
    _kernel(frames[0], args)  # warm-up
    times = np.array([_kernel(frame, args) for frame in frames])
    return float(np.median(times[:, 0])), float(np.median(times[:, 1]))


_FRAMES_HELD: dict = {}


def _kernel_in_worker(folder: str, args, n_frames: int, start_at: float) -> float:
    """Wall seconds per frame of the kernel in this (worker) process, from ``start_at`` (time.time())."""
    frames = _FRAMES_HELD.get(folder)
    if frames is None:
        frames = _FRAMES_HELD[folder] = _frames_in_memory(Path(folder), 10)
        _kernel(frames[0], args)  # warm-up
    time.sleep(max(0.0, start_at - time.time()))  # every worker starts together
    start = time.perf_counter()
    for i in range(n_frames):
        _kernel(frames[i % len(frames)], args)
    return (time.perf_counter() - start) / n_frames


def kernel_on_workers(client, folder: Path, args, n_frames: int) -> float:
    """Wall seconds per frame of the kernel run in every worker at once (the mean over workers)."""
    workers = list(client.scheduler_info()["workers"])
    start_at = time.time() + 2.0
    futures = [client.submit(_kernel_in_worker, str(folder), args, n_frames, start_at, workers=[w], pure=False)
               for w in workers]
    return float(np.mean(client.gather(futures)))


TASK_STEPS = (  # (label, module, function): the steps of the task timed by task_breakdown
    ("reading", "cccdask.pipeline.task", "_read_batch"),
    ("kernel", "cccdask.kernels.ccc", "ccc_frame"),
    ("quality floors", "cccdask.quality", "intensity_floor"),
    ("far-field ratio", "cccdask.pipeline.task", "stored_far_field"),
)


def task_breakdown(config, n_frames: int) -> dict[str, float]:
    """CPU seconds per frame of the pipeline's task (``compute_frames``) and its steps, no Dask.

    The steps (:data:`TASK_STEPS`) are timed inside the task's own calls, so the ratio of
    the task to its kernel is free of this machine's drift in core speed. The batches of
    ``config``'s plan covering at least ``n_frames`` frames, run once to warm up and once
    timed; ``config`` is a run already made (its store exists). Keys: the step labels,
    ``"task"`` and ``"rest"`` (the task less its steps: settings, packing the results).
    """
    import importlib

    from cccdask.pipeline import run_identity
    from cccdask.pipeline.inputs import open_inputs
    from cccdask.pipeline.layout import plan_run
    from cccdask.pipeline.plan import frame_batches
    from cccdask.pipeline.task import compute_frames

    inputs = open_inputs(config)
    plan, _ = plan_run(config, inputs, run_identity(config, inputs.frames))
    batches = frame_batches(inputs.frames.n_frames, plan.frames_per_task)
    batches = batches[:next(i + 1 for i, (_, stop) in enumerate(batches) if stop >= min(n_frames, batches[-1][1]))]
    spent = dict.fromkeys([label for label, _, _ in TASK_STEPS], 0.0)

    def timed(label, function):
        def step(*args, **kwargs):
            start = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent[label] += time.thread_time() - start
        return step

    originals = [(importlib.import_module(module), name) for _, module, name in TASK_STEPS]
    originals = [(module, name, getattr(module, name)) for module, name in originals]
    for (label, _, _), (module, name, function) in zip(TASK_STEPS, originals):
        setattr(module, name, timed(label, function))
    try:
        for start, stop in batches:
            compute_frames(plan, start, stop)
        spent.update(dict.fromkeys(spent, 0.0))
        cpu = time.thread_time()
        for start, stop in batches:
            compute_frames(plan, start, stop)
        spent["task"] = time.thread_time() - cpu
    finally:
        for module, name, function in originals:
            setattr(module, name, function)
    spent["rest"] = spent["task"] - sum(spent[label] for label, _, _ in TASK_STEPS)
    return {key: value / batches[-1][1] for key, value in spent.items()}


class PeakMemory:
    """Peak summed RSS of this process and its children (sampled every 20 ms).

    The children (nannies, workers) are listed once a second, not at every sample:
    listing them scans every process of the machine (``/proc``), which at 100 samples a
    second took a sizeable part of a core from the run it measures.
    """

    def __init__(self):
        self.process = psutil.Process()
        self._children: list[psutil.Process] = []
        self._listed = -1.0
        self.baseline = self.current()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def current(self) -> int:
        if time.monotonic() - self._listed > 1.0:
            self._children = self.process.children(recursive=True)
            self._listed = time.monotonic()
        total = 0
        for p in [self.process] + self._children:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(0.02)

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time (user + system) so far of this process and of its children."""
        own = sum(self.process.cpu_times()[:2])
        children = 0.0
        for p in self.process.children(recursive=True):
            try:
                children += sum(p.cpu_times()[:2])
            except psutil.Error:
                pass
        return own, children

    def __enter__(self):
        self.cpu_start = self.cpu_seconds()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())
        end = self.cpu_seconds()
        self.driver_cpu, self.workers_cpu = (end[0] - self.cpu_start[0], end[1] - self.cpu_start[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="frame size (pixels per side)")
    parser.add_argument("--frames", type=int, default=20, help="frames of the short run")
    parser.add_argument("--long", type=int, default=200, help="frames of the long run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--frames-per-task", default="auto", help="an integer, or auto")
    parser.add_argument("--mode", default="full")
    parser.add_argument("--max-distance", type=float, default=None)
    parser.add_argument("--contributions", action="store_true")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of part 2 (0: skip)")
    parser.add_argument("--no-profiler", action="store_true", help="turn off the workers' statistical profiler")
    parser.add_argument("--default-malloc", action="store_true",
                        help="keep distributed's MALLOC_TRIM_THRESHOLD_=64KiB in the workers")
    args = parser.parse_args()

    from distributed import LocalCluster

    from cccdask.pipeline import run

    root = Path(tempfile.mkdtemp(prefix="cccdask-bench-"))
    try:
        write_input(root, args.long, args.size)
        per_frame, per_frame_cpu = kernel_seconds_per_frame(root, args, repeats=10)
        import dask

        from cccdask.cluster import cluster_process_settings

        settings = cluster_process_settings() if not args.default_malloc else {}
        if args.no_profiler:
            settings["distributed.worker.profile.enabled"] = False
        with dask.config.set(settings):
            cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                                   dashboard_address=":0", host="127.0.0.1")
        try:
            address = cluster.scheduler_address
            run(config_for(root, "warmup.zarr", address, args))  # imports and caches on the workers
            steps = task_breakdown(config_for(root, "warmup.zarr", address, args), max(args.frames, 64))
            rows = []
            for n in (args.frames, args.long):
                sub = root / f"n{n}"
                if n == args.long:
                    link_input(root, sub)
                else:
                    sub.mkdir()
                    write_input(sub, n, args.size)
                with PeakMemory() as memory:
                    elapsed, steady_seconds, steady_frames = timed_run(sub, address, args)
                ideal = per_frame * n / args.workers
                steady = steady_seconds / (per_frame * steady_frames / args.workers)
                rows.append((n, elapsed, n / elapsed, ideal, elapsed / ideal, steady, memory.peak,
                             memory.peak - memory.baseline, memory.workers_cpu / n, memory.driver_cpu))
            interleaved = []
            if args.rounds:
                from distributed import Client

                with Client(address) as client:
                    kernel_frames = max(10, min(args.long // args.workers, 200))
                    before = kernel_on_workers(client, root, args, kernel_frames)
                    for k in range(args.rounds):
                        sub = root / f"round{k}"
                        link_input(root, sub)
                        _, steady_seconds, steady_frames = timed_run(sub, address, args)
                        after = kernel_on_workers(client, root, args, kernel_frames)
                        kernel = (before + after) / 2
                        run_per_frame, ideal_per_frame = steady_seconds / steady_frames, kernel / args.workers
                        interleaved.append((before, after, run_per_frame, ideal_per_frame,
                                            run_per_frame / ideal_per_frame))
                        before = after
        finally:
            cluster.close()
        print(f"frame {args.size}x{args.size}, mode {args.mode}, max_distance {args.max_distance}, contributions "
              f"{args.contributions}, {args.workers} workers x 1 thread, frames_per_task {args.frames_per_task}, "
              f"worker malloc {'distributed default' if args.default_malloc else 'cccdask (no trimming)'}")
        print(f"kernel alone (ccc_frame on frames in memory, one process): {per_frame * 1e3:.1f} ms per frame "
              f"({per_frame_cpu * 1e3:.1f} ms CPU); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"task alone (compute_frames in this process, no Dask), CPU per frame: {steps['task'] * 1e3:.1f} ms, "
              f"{steps['task'] / steps['kernel']:.3f}x its kernel (timed in the same calls); "
              + ", ".join(f"{label} {value * 1e3:.2f} ms ({value / steps['kernel']:.1%})"
                          for label, value in steps.items() if label != "task"))
        print("| frames | run time (s) | frames/s | kernel x frames / workers (s) | overhead ratio, whole run "
              "| overhead ratio, steady state | worker CPU per frame (ms) | CPU ratio to the kernel "
              "| driver + scheduler CPU (s) | peak memory, driver + workers (MiB) | above idle (MiB) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for n, elapsed, rate, ideal, ratio, steady, peak, above, worker_cpu, driver_cpu in rows:
            print(f"| {n} | {elapsed:.2f} | {rate:.1f} | {ideal:.2f} | {ratio:.2f} | {steady:.2f} | "
                  f"{worker_cpu * 1e3:.1f} | {worker_cpu / per_frame_cpu:.2f} | {driver_cpu:.2f} | "
                  f"{peak / 2**20:.0f} | {above / 2**20:.0f} |")
        if interleaved:
            print(f"Overhead against the kernel in the same {args.workers} workers at once, interleaved "
                  f"({args.long} frames per run, steady state):")
            print("| round | kernel before (ms/frame) | kernel after (ms/frame) | run, steady (ms/frame) "
                  "| mean kernel / workers (ms/frame) | overhead ratio |")
            print("| --- | --- | --- | --- | --- | --- |")
            for k, (before, after, steady, ideal, ratio) in enumerate(interleaved, start=1):
                print(f"| {k} | {before * 1e3:.1f} | {after * 1e3:.1f} | {steady * 1e3:.2f} | {ideal * 1e3:.2f} "
                      f"| {ratio:.2f} |")
            print(f"median overhead ratio: {np.median([r[-1] for r in interleaved]):.2f}")
        print(f"peak memory, {args.long} vs {args.frames} frames: {rows[1][6] / rows[0][6]:.3f}x "
              f"(above idle: {rows[1][7] / 2**20:.0f} vs {rows[0][7] / 2**20:.0f} MiB)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
