"""One frame in memory: ``cccdask.ccc`` with one FFT thread against the default (every core).

Side by side in one run, medians of ``--repeats`` calls, wall and CPU time:

    python benchmarks/bench_fft_threads.py --size 1024 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import cccdask
    from cccdask.ccc import fft_threads
    from cccdask.synthetic import paired_spots

    spacing = (0.05, 0.05)
    scene = paired_spots(shape=(args.size, args.size), spacing=spacing, distance=1.0, seed=0,
                         n_pairs=int(200 * (args.size / 256) ** 2))
    frame = (scene.image1, scene.image2, scene.mask)
    rows = []
    for label, workers in (("1 FFT thread (before)", 1), (f"default: {fft_threads()} threads (after)", None)):
        cccdask.ccc(*frame, spacing=spacing, fft_workers=workers)  # warm-up (geometry cache)
        times = []
        for _ in range(args.repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            cccdask.ccc(*frame, spacing=spacing, fft_workers=workers)
            times.append((time.perf_counter() - wall, time.process_time() - cpu))
        rows.append((label, *np.median(np.array(times), axis=0)))
    print(f"cccdask.ccc on one {args.size}x{args.size} frame in memory (full mode, out to the corner); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| FFT threads | wall ms | CPU ms | speed-up |")
    print("| --- | --- | --- | --- |")
    for label, wall, cpu in rows:
        print(f"| {label} | {wall * 1e3:.0f} | {cpu * 1e3:.0f} | {rows[0][1] / wall:.2f} |")


if __name__ == "__main__":
    main()
