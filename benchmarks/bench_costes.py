"""Costes' automatic threshold vs one Pearson pass over the same uint16 Zarr data.

Uses the two-channel ``(2, t, y, x)`` uint16 array of ``bench_coefficients.py`` (written
to /tmp when missing). Times, in one run, per frame of the series:

* read: every chunk read and decompressed, nothing computed;
* Pearson: one pass of per-chunk sums (float64 dot products) and the finalisation;
* Costes: per-chunk joint histograms, merged per frame, then the threshold search over
  every integer candidate (one pass over the merged histogram); the default (Huygens)
  search, and the presets' searches of JACoP and of Coloc 2 (stepper and bisection),
  each also one pass over the merged histogram;
* Coloc 2's ways, extrapolated from a few full passes over one frame (one pass per
  candidate threshold): its simple stepper (one intensity unit per pass, from the
  maximum down to the threshold) and its bisection stepper (about log2(span) passes).

Usage::

    python benchmarks/bench_costes.py --size-gib 0.1
    python benchmarks/bench_costes.py --size-gib 2
"""

from __future__ import annotations

import os

for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse
import sys
import time

import dask
import dask.array as da
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_coefficients import keep_freed_memory, read_all, timed, write_dataset  # noqa: E402

from cccdask.kernels.coefficients import joint_table  # noqa: E402
from cccdask.kernels.costes_tools import costes_threshold  # noqa: E402


def _merge(tables):
    merged = tables[0]
    for table in tables[1:]:
        merged = merged.merge(table)
    return merged


def _chunk_sums(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x = a.astype(np.float64).ravel()
    y = b.astype(np.float64).ravel()
    return np.array([x.size, x.sum(), y.sum(), np.dot(x, x), np.dot(y, y), np.dot(x, y)])


def _pearson(sums: list[np.ndarray]) -> float:
    n, sx, sy, sxx, syy, sxy = np.sum(sums, axis=0)
    return (sxy - sx * sy / n) / np.sqrt((sxx - sx * sx / n) * (syy - sy * sy / n))


def per_frame_graph(source: da.Array, per_chunk, per_frame) -> list:
    """One delayed ``per_frame([per_chunk(chunk1, chunk2), ...])`` per frame of ``source``."""
    frames = []
    for t in range(source.shape[1]):
        blocks1 = source[0, t].to_delayed().ravel()
        blocks2 = source[1, t].to_delayed().ravel()
        parts = [dask.delayed(per_chunk)(b1, b2) for b1, b2 in zip(blocks1, blocks2)]
        frames.append(dask.delayed(per_frame)(parts))
    return frames


def pearson_graph(source: da.Array) -> list:
    return per_frame_graph(source, _chunk_sums, _pearson)


def costes_graph(source: da.Array, tool: str = "huygens", search: str = "stepper") -> list:
    value_range = (0.0, float(np.iinfo(source.dtype).max))
    return per_frame_graph(source, joint_table,
                           lambda tables: costes_threshold(_merge(tables), tool, search, value_range))


def coloc2_seconds_per_candidate(frame1: np.ndarray, frame2: np.ndarray, slope: float, intercept: float,
                                 n_probe: int = 5) -> float:
    """One full pass over a frame per candidate: Pearson of the voxels below it."""
    x = frame1.astype(np.float64).ravel()
    y = frame2.astype(np.float64).ravel()
    start = time.perf_counter()
    with np.errstate(invalid="ignore", divide="ignore"):
        _coloc2_passes(x, y, slope, intercept, n_probe)
    return (time.perf_counter() - start) / n_probe


def _coloc2_passes(x: np.ndarray, y: np.ndarray, slope: float, intercept: float, n_probe: int) -> None:
    for t in np.linspace(x.max(), x.min(), n_probe + 2)[1:-1]:
        below = (x < t) | (y < slope * t + intercept)
        np.corrcoef(x[below], y[below])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--frame", type=int, default=2048)
    parser.add_argument("--path", default="/tmp/cccdask_bench_coefficients.zarr")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-mallopt", action="store_true")
    args = parser.parse_args()
    if not args.no_mallopt:
        keep_freed_memory()

    array = write_dataset(args.path, args.size_gib, args.frame)
    source = da.from_zarr(args.path)
    with dask.config.set(scheduler="threads"):
        read_all(source)
        times = timed({
            "read": lambda: read_all(source),
            "pearson": lambda: dask.compute(*pearson_graph(source)),
            "costes": lambda: dask.compute(*costes_graph(source)),
            "jacop": lambda: dask.compute(*costes_graph(source, "jacop")),
            "coloc2 stepper": lambda: dask.compute(*costes_graph(source, "coloc2")),
            "coloc2 bisection": lambda: dask.compute(*costes_graph(source, "coloc2", "bisection")),
        }, args.repeats)
        results = dask.compute(*costes_graph(source))
    (read, read_cpu), (pearson, pearson_cpu), (costes, costes_cpu) = times["read"], times["pearson"], times["costes"]
    first = results[0]
    defined = [r for r in results if not r.reason]
    candidates = float(np.sum([r.curve_threshold1[0] - r.threshold1 + 1 for r in defined]))
    bisection = float(np.sum([np.ceil(np.log2(r.curve_threshold1[0] - np.nanmin(r.curve_threshold1) + 1)) + 1
                              for r in defined]))
    per_candidate = coloc2_seconds_per_candidate(np.asarray(array[0, 0]), np.asarray(array[1, 0]),
                                                 first.slope, first.intercept)

    n_bytes = array.nbytes
    print(f"data: {n_bytes / 2**30:.2f} GiB uint16, shape {array.shape} (channel, t, y, x), "
          f"chunks {array.chunks}, {os.cpu_count()} cores; frame 0 thresholds "
          f"({first.threshold1:g}, {first.threshold2:.4g}), line G = {first.slope:.4f} R + {first.intercept:.2f}")
    print()
    print("| work | wall (s) | wall ratio to one Pearson pass | CPU (s) | CPU ratio |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| read only | {read:.2f} | {read / pearson:.2f}x | {read_cpu:.1f} | {read_cpu / pearson_cpu:.2f}x |")
    print(f"| one Pearson pass | {pearson:.2f} | 1.00x | {pearson_cpu:.1f} | 1.00x |")
    print(f"| Costes threshold, every frame (exact, one pass) | {costes:.2f} | {costes / pearson:.2f}x "
          f"| {costes_cpu:.1f} | {costes_cpu / pearson_cpu:.2f}x |")
    for name in ("jacop", "coloc2 stepper", "coloc2 bisection"):
        wall, cpu = times[name]
        print(f"| Costes threshold, preset {name} (one pass) | {wall:.2f} | {wall / pearson:.2f}x "
              f"| {cpu:.1f} | {cpu / pearson_cpu:.2f}x |")
    for name, passes in (("simple stepper", candidates), ("bisection stepper", bisection)):
        seconds = per_candidate * passes
        print(f"| Coloc 2-style {name}: {passes:.0f} full passes (extrapolated, 1 core) "
              f"| {seconds:.1f} | {seconds / pearson:.0f}x | | |")


if __name__ == "__main__":
    main()
