"""The sum-of-Gaussians fit: its cost against one Gaussian, and how often it recovers the truth.

Two tables, each from one run:

* ``--cost``: one 2048x2048 frame (two populations of pairs, 0.4 and 1.1 um, PSF sigma
  0.1 um, 0.05 um pixels, the profile out to the corner), ``ccc_frame`` with
  ``n_gaussians`` = 1, 2, 3 and "auto" (up to 3) side by side (median CPU time of
  ``--repeats`` after a warm-up that builds the profile geometry; the FFTs run on
  one thread, so CPU time is the cost even on a loaded machine), and the fit alone
  on that frame's profile: :func:`cccdask.kernels.fit.fit_gaussian` (n = 1) against
  :func:`cccdask.kernels.components.component_outputs`.
* ``--scenes``: the issue's synthetic scenes over ``--seeds`` seeds: how often n = 2
  gives both means within 5 % of the method-biased expectation (d - s^2/(2d) in 2D,
  d - s^2/d in 3D, s^2 = 2 psf^2), sorted, with positive confidences; for the
  one-population scene, how often the second component is rejected; and what
  "auto" (up to 3) picks.

Usage::

    python benchmarks/bench_multifit.py --cost --repeats 3
    python benchmarks/bench_multifit.py --cost --one-population
    python benchmarks/bench_multifit.py --scenes --seeds 10
    python benchmarks/bench_multifit.py --scenes --large --seeds 10
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

import numpy as np
from scipy.special import i0e

from cccdask.kernels.ccc import ccc_frame
from cccdask.kernels.components import component_outputs
from cccdask.kernels.fit import fit_gaussian
from cccdask.kernels.multifit import STATUS_MEANINGS
from cccdask.kernels.profile import profile_geometry
from cccdask.synthetic import paired_spots

SCENES = {  # the frame sizes (the plugin 2.3.0 comparison)
    "2D 0.4 + 1.1 um, 512²": dict(shape=(512, 512), spacing=(0.05, 0.05), distance=(0.4, 1.1), n_pairs=400,
                                  n_decoys=100),
    "2D 0.5 + 0.9 um, 512²": dict(shape=(512, 512), spacing=(0.05, 0.05), distance=(0.5, 0.9), n_pairs=400,
                                  n_decoys=100),
    "3D 0.5 + 1.2 um, 48×192×192 (0.15/0.05/0.05)": dict(shape=(48, 192, 192), spacing=(0.15, 0.05, 0.05),
                                                       distance=(0.5, 1.2), n_pairs=300, n_decoys=40),
    "2D one population 1.0 um, 512²": dict(shape=(512, 512), spacing=(0.05, 0.05), distance=1.0, n_pairs=200,
                                          n_decoys=50),
}


def _enlarged(scene: dict, yx: int, z: int = 1) -> dict:
    """The same scene at the same densities on a frame ``yx`` times longer along y and x (``z`` along z)."""
    factors = (z, yx, yx)[-len(scene["shape"]):]
    shape = tuple(n * f for n, f in zip(scene["shape"], factors))
    more = int(np.prod(factors))
    return dict(scene, shape=shape, n_pairs=scene["n_pairs"] * more, n_decoys=scene["n_decoys"] * more)


LARGE = {  # the same densities on 16x (2D) and 8x (3D) the area (the two-population scenes of the tests)
    "2D 0.4 + 1.1 um, 2048²": _enlarged(SCENES["2D 0.4 + 1.1 um, 512²"], 4),
    "2D 0.5 + 0.9 um, 2048²": _enlarged(SCENES["2D 0.5 + 0.9 um, 512²"], 4),
    "3D 0.5 + 1.2 um, 96×384×384 (0.15/0.05/0.05)": _enlarged(
        SCENES["3D 0.5 + 1.2 um, 48×192×192 (0.15/0.05/0.05)"], 2, 2),
    "2D one population 1.0 um, 2048²": _enlarged(SCENES["2D one population 1.0 um, 512²"], 4),
}

VARIANTS = {"n=1": (1, False), "n=2": (2, False), "n=3": (3, False), "auto (≤3)": (3, True)}


def _median_time(function, repeats):
    """Median CPU seconds of this process (single-threaded work: robust to a shared, loaded machine)."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        function()
        times.append(time.process_time() - start)
    return statistics.median(times)


def cost(repeats: int, distance=(0.4, 1.1)) -> None:
    shape, spacing = (2048, 2048), (0.05, 0.05)
    n_pairs = int(np.prod(np.asarray(shape) * spacing) / 4)
    s = paired_spots(shape, spacing=spacing, distance=distance, psf_sigma=0.1, n_pairs=n_pairs,
                     n_decoys=n_pairs // 5, seed=0)
    geometry = profile_geometry(shape, spacing)
    base = ccc_frame(s.image1, s.image2, s.mask, geometry)  # warm-up: geometry, FFT plans
    keys, subtracted, original = geometry.distances, base["profile_subtracted"], base["profile_original"]
    print(f"2048² frame, pairs at {distance} um, {len(keys)} profile points; {repeats} repeats, "
          f"median CPU seconds\n")
    print("| n_gaussians | ccc_frame s | × n=1 | fit alone s | fit × n=1 | components (status) |")
    print("|---|---|---|---|---|---|")
    single_frame = single_fit = None
    for label, (n, auto) in VARIANTS.items():
        frame_s = _median_time(lambda: ccc_frame(s.image1, s.image2, s.mask, geometry, n_gaussians=(n, auto)),
                               repeats)
        first = fit_gaussian(keys, subtracted, spacing[-1])
        if n == 1 and not auto:
            fit_s = _median_time(lambda: fit_gaussian(keys, subtracted, spacing[-1]), repeats)
            found = f"{first.mean:.3f}"
        else:
            fit_s = _median_time(lambda: component_outputs(keys, subtracted, original, fit_gaussian(
                keys, subtracted, spacing[-1]), n, auto, spacing[-1]), repeats)
            out = component_outputs(keys, subtracted, original, first, n, auto, spacing[-1])
            found = ", ".join(f"{m:.3f}" if ok else STATUS_MEANINGS[c].split(":")[0]
                              for m, ok, c in zip(out["mean"], out["fit_ok"], out["component_status"]))
        single_frame = single_frame or frame_s
        single_fit = single_fit or fit_s
        print(f"| {label} | {frame_s:.2f} | {frame_s / single_frame:.2f} | {fit_s:.3f} | {fit_s / single_fit:.1f} "
              f"| {found} |")


def noise_free_profile(keys: np.ndarray, distances, ndim: int, correlation_variance: float) -> np.ndarray:
    """The radial profile of pairs without noise or chance coincidences: a Gaussian of variance s^2
    about a point at distance d, averaged over the ring (2D: ``exp(-(r^2 + d^2)/2s^2) I0(rd/s^2)``) or
    the shell (3D: ``... sinh(rd/s^2)/(rd/s^2)``) of radius r; one population per distance, equal weights."""
    out = np.zeros(len(keys))
    for d in distances:
        x = keys * d / correlation_variance
        gauss = np.exp(-((keys - d) ** 2) / (2 * correlation_variance))
        if ndim == 2:
            out += gauss * i0e(x)
        else:
            out += gauss * np.where(x > 0, -np.expm1(-2 * x) / (2 * np.maximum(x, 1e-300)), 1.0)
    return out


def scenes(seeds: int, large: bool = False) -> None:
    print(f"seeds 0..{seeds - 1}; n=2 unless stated; errors are fitted mean / expectation - 1\n")
    print("| scene | n=2 within 5 %, sorted, conf > 0 | error, population 1: mean ± SD, max \\|·\\|; "
          "population 2 ... | noise-free profile, n = 2: error | second component | auto (≤3) picked |")
    print("|---|---|---|---|---|---|")
    for name, scene in (LARGE if large else SCENES).items():
        hits, errors, seconds, picks = 0, [], Counter(), Counter()
        for seed in range(seeds):
            s = paired_spots(psf_sigma=0.1, seed=seed, **scene)
            geometry = profile_geometry(s.image1.shape, s.spacing, 3.0 if len(s.spacing) == 3 else None)
            base = ccc_frame(s.image1, s.image2, s.mask, geometry)
            keys, profile, original = geometry.distances, base["profile_subtracted"], base["profile_original"]
            first = fit_gaussian(keys, profile, s.spacing[-1])
            two = component_outputs(keys, profile, original, first, 2, False, s.spacing[-1])
            auto = component_outputs(keys, profile, original, first, 3, True, s.spacing[-1])
            picks[int(auto["n_selected"])] += 1
            expected = np.asarray(s.expected_peaks)
            if len(expected) == 2:
                error = two["mean"] / expected - 1
                hits += bool(two["fit_ok"].all() and np.all(np.abs(error) < 0.05) and np.all(two["confidence"] > 0))
                seconds["ok" if two["fit_ok"][1] else STATUS_MEANINGS[two["component_status"][1]].split(":")[0]] += 1
            else:
                error = np.array([two["mean"][0] / expected[0] - 1])
                second = "kept" if two["fit_ok"][1] else STATUS_MEANINGS[two["component_status"][1]].split(":")[0]
                seconds[second] += 1
                hits += bool(two["fit_ok"][0] and abs(error[0]) < 0.05 and not two["fit_ok"][1])
            errors.append(error)
        errors = np.array(errors) * 100
        spread = "; ".join(f"{np.nanmean(e):+.1f} ± {np.nanstd(e):.1f} %, {np.nanmax(np.abs(e)):.1f} %"
                           for e in errors.T)
        # the same fit on the profile without noise or coincidences, at the same keys: the method's own bias
        ideal = noise_free_profile(keys, s.distances, len(s.spacing), s.correlation_sigma**2)
        clean = component_outputs(keys, ideal, ideal, fit_gaussian(keys, ideal, s.spacing[-1]),
                                  len(expected), False, s.spacing[-1])
        bias = ", ".join(f"{e:+.1f} %" for e in (clean["mean"] / expected - 1) * 100)
        print(f"| {name} | {hits}/{seeds} | {spread} | {bias} | {dict(seconds)} | {dict(sorted(picks.items()))} |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cost", action="store_true")
    parser.add_argument("--scenes", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--large", action="store_true",
                        help="the scenes on 16x (2D) / 8x (3D) the area")
    parser.add_argument("--one-population", action="store_true", help="--cost on pairs at 1 um only")
    args = parser.parse_args()
    if args.cost or not args.scenes:
        cost(args.repeats, 1.0 if args.one_population else (0.4, 1.1))
    if args.scenes:
        scenes(args.seeds, args.large)


if __name__ == "__main__":
    main()
