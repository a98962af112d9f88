"""Per-frame CCC cost against the bare FFT floor, and peak memory per input voxel.

For each frame shape and mode, side by side in one run:

* time per frame of ``ccc_frame`` (median of ``--repeats`` after a warm-up that also
  builds the cached profile geometry),
* the FFT floor: 3 forward + 2 inverse real FFTs at the same padded shape, same
  library (scipy.fft) and threads,
* their ratio,
* peak memory above the inputs per input voxel: in a fresh subprocess, the kernel's
  peak-RSS mark (VmHWM) is reset once the inputs and the profile geometry exist
  (built once per frame shape, shared by all frames), and the peak reached while the
  frame runs is read back, so allocations inside the FFT library count too; the
  geometry's own arrays are added to it.

Usage::

    python benchmarks/bench_ccc.py                       # 2048^2 and 64x512x512
    python benchmarks/bench_ccc.py --small               # quick check
    python benchmarks/bench_ccc.py --threads 2
    python benchmarks/bench_ccc.py --fiji-compat         # adds full mode with fiji_compat=True
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time

import numpy as np
import scipy.fft

CASES = {
    "2d": dict(shape=(2048, 2048), spacing=(0.05, 0.05)),
    "3d": dict(shape=(64, 512, 512), spacing=(0.2, 0.05, 0.05)),
}
SMALL = {
    "2d": dict(shape=(512, 512), spacing=(0.05, 0.05)),
    "3d": dict(shape=(32, 128, 128), spacing=(0.2, 0.05, 0.05)),
}
MODES = ("full", "no_confidence", "correlation")


def make_frame(shape, spacing, seed=0):
    """Spots paired 1 um apart (PSF sigma 0.1 um), about one pair per 4 um^3 (um^2 in 2D).

    A realistic frame: the fit converges as on real data. (Pure noise is the worst
    case: no fit is valid and all five moving-average retries run.)
    """
    from cccdask.synthetic import paired_spots

    extent = np.prod(np.asarray(shape) * np.asarray(spacing))
    n_pairs = int(extent / 4)
    s = paired_spots(shape, spacing=spacing, distance=1.0, psf_sigma=0.1, n_pairs=n_pairs,
                     n_decoys=n_pairs // 5, seed=seed)
    return s.image1, s.image2, s.mask


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS and return it."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_bytes("VmRSS")


def memory_probe(shape, spacing, mode, contributions, fiji_compat=False):
    """Run one frame in this (fresh) process; print peak bytes above the inputs."""
    from cccdask.kernels.ccc import ccc_frame
    from cccdask.kernels.profile import profile_geometry

    image1, image2, mask = make_frame(shape, spacing)
    # the geometry is built once per frame shape and shared by every frame of a
    # series: its (exact) size is reported on its own; then the scene's and the
    # geometry's temporaries are forgotten
    geometry = profile_geometry(shape, spacing, fiji_compat=fiji_compat)
    cached = sum(a.nbytes for a in (geometry.distances, geometry.index, geometry.counts))
    before = reset_peak_rss()
    ccc_frame(image1, image2, mask, geometry, mode=mode, contributions=contributions)
    print(json.dumps({"above_inputs": _status_bytes("VmHWM") - before, "geometry": cached}))


def fft_floor(image1, image2, padded, repeats):
    axes = tuple(range(image1.ndim))
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        f2 = scipy.fft.rfftn(image2, s=padded, axes=axes)
        f1 = scipy.fft.rfftn(image1, s=padded, axes=axes)
        f1 *= f2
        scipy.fft.irfftn(f1, s=padded, axes=axes, overwrite_x=True)
        del f1
        fl = scipy.fft.rfftn(image1, s=padded, axes=axes)
        fl *= f2
        scipy.fft.irfftn(fl, s=padded, axes=axes, overwrite_x=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def time_mode(image1, image2, mask, geometry, mode, repeats, contributions=False):
    from cccdask.kernels.ccc import ccc_frame

    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        ccc_frame(image1, image2, mask, geometry, mode=mode, contributions=contributions)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="small frames (a quick check)")
    parser.add_argument("--threads", type=int, default=1, help="scipy.fft workers (default 1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fiji-compat", action="store_true",
                        help="also time full mode with fiji_compat=True (the plugin's keys and fit)")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        shape, spacing, mode, contributions, fiji_compat = json.loads(args.probe)
        with scipy.fft.set_workers(args.threads):
            memory_probe(tuple(shape), tuple(spacing), mode, contributions, fiji_compat)
        return

    from cccdask.kernels.correlate import padded_shape
    from cccdask.kernels.profile import profile_geometry

    cases = SMALL if args.small else CASES
    rows = []
    for name, case in cases.items():
        shape, spacing = case["shape"], case["spacing"]
        image1, image2, mask = make_frame(shape, spacing)
        geometry = profile_geometry(shape, spacing)
        padded = padded_shape(shape, geometry.shift_lo, geometry.shift_hi)
        plugin_padded = tuple(scipy.fft.next_fast_len(2 * n - 1, real=True) for n in shape)
        with scipy.fft.set_workers(args.threads):
            floor = fft_floor(image1, image2, padded, args.repeats)
            floor_plugin = fft_floor(image1, image2, plugin_padded, 1)
            variants = [(m, False, False) for m in MODES] + [("full", True, False)]
            if args.fiji_compat:
                variants.append(("full", False, True))
            for mode, contributions, fiji_compat in variants:
                variant_geometry = profile_geometry(shape, spacing, fiji_compat=fiji_compat)
                t = time_mode(image1, image2, mask, variant_geometry, mode, args.repeats, contributions)
                probe = json.dumps([shape, spacing, mode, contributions, fiji_compat])
                out = subprocess.run(
                    [sys.executable, __file__, "--probe", probe, "--threads", str(args.threads)],
                    capture_output=True, text=True, check=True,
                )
                probed = json.loads(out.stdout.strip().splitlines()[-1])
                above = probed["above_inputs"] + probed["geometry"]
                label = mode + (" +contributions" if contributions else "") + (" fiji_compat" if fiji_compat else "")
                rows.append((name, "x".join(map(str, shape)), "x".join(map(str, padded)), label,
                             t * 1e3, floor * 1e3, t / floor, above / np.prod(shape), floor_plugin * 1e3))

    header = ("frame", "shape", "padded", "mode", "ms/frame", "FFT floor ms", "ratio", "bytes/voxel above inputs",
              "floor at 2N-1 ms")
    print(f"scipy.fft workers: {args.threads}; inputs float32 images + bool mask")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.0f} | {r[5]:.0f} | {r[6]:.2f} | {r[7]:.0f} | {r[8]:.0f} |")


if __name__ == "__main__":
    main()
