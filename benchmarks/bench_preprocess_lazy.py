"""Cost of :func:`cccdask.preprocess_lazy`'s whole-frame numbers by chunk count and scheduler.

One uint16 3D frame with objects (blurred noise over a threshold, Poisson counts), all
steps on (chromatic shift, blur, ``isodata`` mask, hole filling, small objects, two
median backgrounds), side by side in one run: the synchronous scheduler and an
in-process ``distributed`` cluster (1 worker, 2 threads), each on few large and many
small chunks. Prints the wall time of the call (the whole-frame numbers: about nine
passes over the chunks) and of computing its lazy outputs, and the tasks of one pass.

Usage::

    python benchmarks/bench_preprocess_lazy.py                  # 12x32x44, 4 and 60 chunks
    python benchmarks/bench_preprocess_lazy.py --shape 32 256 256 --chunks 16 128 128 8 32 32
"""

from __future__ import annotations

import argparse
import time

import dask
import dask.array as da
import numpy as np
from scipy import ndimage

import cccdask

SPACING = (0.2, 0.05, 0.05)
SETTINGS = {"chromatic_shift": {"shift": [0.1, 0.02, -0.03], "order": 1},
            "mask": {"source": "image1", "sigma": 0.05, "method": "isodata", "min_size": 0.0002},
            "background": {"image1": {"method": "median"}, "image2": {"method": "median"}}}


def frame(shape, seed):
    rng = np.random.default_rng(seed)
    objects = ndimage.gaussian_filter(rng.normal(size=shape), 2.0) > 0.05
    return (rng.poisson(200, size=shape) + objects * rng.poisson(2500, size=shape)).astype(np.uint16)


def run(image1, image2, chunks):
    start = time.perf_counter()
    out1, out2, mask, _ = cccdask.preprocess_lazy(da.from_array(image1, chunks=chunks),
                                                  da.from_array(image2, chunks=chunks),
                                                  settings=SETTINGS, spacing=SPACING)
    numbers = time.perf_counter() - start
    tasks = len(dict(mask.__dask_graph__()))
    start = time.perf_counter()
    dask.compute(out1, out2, mask)
    return numbers, time.perf_counter() - start, tasks


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[12, 32, 44])
    parser.add_argument("--chunks", type=int, nargs="+", default=[12, 16, 22, 5, 8, 9],
                        help="chunk shapes, 3 numbers each")
    args = parser.parse_args()
    shape = tuple(args.shape)
    image1, image2 = frame(shape, 1), frame(shape, 2)
    chunk_shapes = [tuple(args.chunks[i:i + 3]) for i in range(0, len(args.chunks), 3)]
    rows = []
    with dask.config.set(scheduler="synchronous"):
        for chunks in chunk_shapes:
            rows.append(("synchronous", chunks, *run(image1, image2, chunks)))
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp://", host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", memory_limit=0) as cluster, Client(cluster):
        for chunks in chunk_shapes:
            rows.append(("in-process cluster", chunks, *run(image1, image2, chunks)))
    print(f"frame {shape} uint16, {len(chunk_shapes)} chunkings")
    print(f"{'scheduler':20s} {'chunks':>14s} {'n chunks':>8s} {'numbers s':>10s} {'outputs s':>10s} {'tasks':>7s}")
    for scheduler, chunks, numbers, outputs, tasks in rows:
        n = int(np.prod([-(-s // c) for s, c in zip(shape, chunks)]))
        print(f"{scheduler:20s} {str(chunks):>14s} {n:8d} {numbers:10.2f} {outputs:10.2f} {tasks:7d}")


if __name__ == "__main__":
    main()
