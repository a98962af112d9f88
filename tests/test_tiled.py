"""Tiled correlation bounded by a maximum distance equals the whole-frame computation.

References are independent of the code under test: a direct sum over voxels, SciPy's
FFT correlation of the whole frame, numpy.pad(reflect) + scipy.signal.fftconvolve for
the contribution images; and the whole-frame engine (cccdask.kernels.ccc) itself.
"""

from __future__ import annotations

import itertools
import math
import tracemalloc

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.signal
import zarr

from cccdask.frames import InvalidFrameError
from cccdask.kernels.correlate import mask_images, masked_correlograms
from cccdask.kernels.tiled import contribution_tile, correlate_tile, mirror_indices, tile_memory_bytes
from cccdask.synthetic import paired_spots
from cccdask.tiled import (
    default_tile_shape,
    tiled_contributions,
    tiled_correlograms,
    whole_frame_fits,
    whole_frame_memory_bytes,
)


# --------------------------------------------------------------------------- references


def kept_shifts(shape, spacing, max_distance):
    """Shifts |s_d| <= floor(R / s_d), within the frame-sized correlogram's range."""
    lo, hi = [], []
    for n, s in zip(shape, spacing):
        k = int(np.floor(max_distance / s + 1e-9))
        lo.append(max(-k, -(n // 2)))
        hi.append(min(k, n - 1 - n // 2))
    return lo, hi


def direct_correlation(a, b, lo, hi):
    """CC_raw(a, b)(s) = sum_m a(m + s) b(m) by a direct sum, float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    out = np.zeros([h - l + 1 for l, h in zip(lo, hi)])
    for shift in itertools.product(*(range(l, h + 1) for l, h in zip(lo, hi))):
        sa = tuple(slice(max(0, s), n + min(0, s)) for s, n in zip(shift, a.shape))
        sb = tuple(slice(max(0, -s), n - max(0, s)) for s, n in zip(shift, a.shape))
        out[tuple(s - l for s, l in zip(shift, lo))] = np.sum(a[sa] * b[sb])
    return out


def fft_correlation(a, b, lo, hi):
    """CC_raw(a, b) of the whole frame by scipy.signal.correlate (float64), cropped."""
    full = scipy.signal.correlate(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                  mode="full", method="fft")
    # full[j] holds the shift j - (N - 1)
    return full[tuple(slice(n - 1 + l, n + h) for n, l, h in zip(a.shape, lo, hi))]


def reference_correlograms(image1, image2, mask, spacing, max_distance, correlate=fft_correlation):
    inside = np.ones(image1.shape, bool) if mask is None else mask != 0
    i1 = np.where(inside, image1.astype(np.float32), 0).astype(np.float64)
    i2 = np.where(inside, image2.astype(np.float32), 0).astype(np.float64)
    mean = i1[inside].mean()
    centred = np.where(inside, i1 - mean, 0)
    volume = inside.sum() * np.prod(spacing)
    lo, hi = kept_shifts(image1.shape, spacing, max_distance)
    return dict(original=correlate(i1, i2, lo, hi) / volume,
                subtracted=correlate(centred, i2, lo, hi) / volume, mean=mean, mask_volume=volume)


def assert_float32_close(actual, expected, scale=None):
    """Equal to float32 FFT rounding: errors relative to the largest value."""
    scale = np.abs(expected).max() if scale is None else scale
    np.testing.assert_allclose(actual, expected, rtol=0, atol=2e-5 * scale)


def scene(shape, seed, mask_kind="blob", offset=0.0):
    """Two correlated random images and a mask crossing tile borders."""
    rng = np.random.default_rng(seed)
    image1 = rng.random(shape).astype(np.float32) + offset
    image2 = (0.6 * image1 + 0.4 * rng.random(shape)).astype(np.float32)
    if mask_kind is None:
        return image1, image2, None
    grid = np.indices(shape).astype(float)
    centre = rng.uniform(0.3, 0.7, len(shape)) * np.array(shape)
    radius = 0.4 * min(shape)
    mask = sum((g - c) ** 2 for g, c in zip(grid, centre)) < radius**2
    return image1, image2, mask


def compute(result):
    return {k: np.asarray(v) for k, v in dask.compute(result)[0].items()}


# --------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("tile_shape,max_shift", [((5, 7), (2, 3)), ((3, 4), (5, 6)), ((4, 3, 5), (1, 2, 0))])
def test_correlate_tile_equals_direct_sum_over_the_tile(tile_shape, max_shift):
    rng = np.random.default_rng(1)
    a = rng.normal(size=tile_shape)
    b = rng.normal(size=tuple(n + 2 * k for n, k in zip(tile_shape, max_shift)))
    expected = np.zeros(tuple(2 * k + 1 for k in max_shift))
    # P(s) = sum_{m in tile} a(m) b_ext(m + K - s)
    for shift in itertools.product(*(range(-k, k + 1) for k in max_shift)):
        window = tuple(slice(k - s, k - s + n) for k, s, n in zip(max_shift, shift, tile_shape))
        expected[tuple(s + k for s, k in zip(shift, max_shift))] = np.sum(a * b[window])
    np.testing.assert_allclose(correlate_tile(a, b, max_shift), expected, atol=1e-10)
    both = correlate_tile([a, 2 * a], b, max_shift)
    np.testing.assert_allclose(both[1], 2 * expected, atol=1e-10)


def test_correlate_tile_rejects_a_wrong_halo():
    with pytest.raises(ValueError, match="halo"):
        correlate_tile(np.zeros((4, 4)), np.zeros((6, 6)), (2, 2))


def test_mirror_indices_match_numpy_reflect_pad():
    # the edge voxel is not repeated (imglib2 extendMirrorSingle, the plugin's rule)
    np.testing.assert_array_equal(mirror_indices(-3, 7, 4), [3, 2, 1, 0, 1, 2, 3, 2, 1, 0])
    for size, before, after in [(5, 2, 3), (3, 7, 8), (1, 2, 2), (6, 0, 13), (2, 5, 5)]:
        padded = np.pad(np.arange(size), (before, after), mode="reflect")
        np.testing.assert_array_equal(mirror_indices(-before, size + after, size), padded)


def test_contribution_tile_equals_fftconvolve_of_the_padded_tile():
    rng = np.random.default_rng(2)
    kernel = rng.normal(size=(5, 7, 3))
    ext1, ext2 = rng.normal(size=(2, 10, 13, 8))
    c1, c2 = contribution_tile(ext1, ext2, kernel)
    k = (2, 3, 1)
    centre = tuple(slice(kk, n - kk) for kk, n in zip(k, ext1.shape))
    expected1 = scipy.signal.fftconvolve(ext2, kernel, mode="valid") * ext1[centre]
    expected2 = scipy.signal.fftconvolve(ext1, kernel[::-1, ::-1, ::-1], mode="valid") * ext2[centre]
    np.testing.assert_allclose(c1, expected1, atol=1e-10)
    np.testing.assert_allclose(c2, expected2, atol=1e-10)


# --------------------------------------------------------------------------- correlograms


def test_tiled_equals_direct_sum_2d():
    image1, image2, mask = scene((13, 17), seed=3)
    spacing, max_distance = (0.2, 0.3), 0.95  # K = (4, 3)
    expected = reference_correlograms(image1, image2, mask, spacing, max_distance, direct_correlation)
    result = compute(tiled_correlograms(da.from_array(image1, chunks=(5, 6)), image2, mask, spacing,
                                        max_distance, tile_shape=(4, 5)))
    assert result["original"].shape == (9, 7)
    assert result["original"].dtype == np.float32
    assert_float32_close(result["original"], expected["original"])
    assert_float32_close(result["subtracted"], expected["subtracted"])
    assert result["mean"] == pytest.approx(expected["mean"], rel=1e-6)
    assert result["mask_volume"] == pytest.approx(expected["mask_volume"], rel=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_tiled_equals_whole_frame_for_random_tiles_3d(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(9, 21, size=3))
    spacing = (0.35, 0.1, 0.13)  # anisotropic
    max_distance = float(rng.uniform(0.3, 0.9))
    tile_shape = tuple(int(t) for t in rng.integers(2, 9, size=3))  # often smaller than the halo
    chunks = tuple(int(c) for c in rng.integers(3, 10, size=3))
    image1, image2, mask = scene(shape, seed, offset=float(rng.uniform(0, 5)))
    expected = reference_correlograms(image1, image2, mask, spacing, max_distance)
    result = compute(tiled_correlograms(
        da.from_array(image1, chunks=chunks), da.from_array(image2, chunks=chunks[::-1]),
        da.from_array(mask, chunks=4), spacing, max_distance, tile_shape=tile_shape))
    assert_float32_close(result["original"], expected["original"])
    assert_float32_close(result["subtracted"], expected["subtracted"])
    assert result["mean"] == pytest.approx(expected["mean"], rel=1e-6)


def test_halo_larger_than_the_frame_and_clipped_even_axis():
    # R beyond half the frame: shifts clipped to the frame-sized correlogram's range,
    # asymmetric on the even axis (-N/2 .. N/2 - 1), as the whole-frame engine does.
    image1, image2, _ = scene((8, 11), seed=5, mask_kind=None)
    expected = reference_correlograms(image1, image2, None, (1.0, 1.0), 40.0, direct_correlation)
    result = compute(tiled_correlograms(image1, image2, None, 1.0, 40.0, tile_shape=(3, 2)))
    assert result["original"].shape == (8, 11)
    assert_float32_close(result["original"], expected["original"])
    assert_float32_close(result["subtracted"], expected["subtracted"])


@pytest.mark.parametrize("mode,keys", [("no_confidence", {"subtracted"}), ("correlation", {"original"})])
def test_modes_return_only_their_correlograms(mode, keys):
    image1, image2, mask = scene((12, 14), seed=6)
    expected = reference_correlograms(image1, image2, mask, (1.0, 1.0), 3.5)
    result = compute(tiled_correlograms(image1, image2, mask, None, 3.5, tile_shape=(5, 5), mode=mode))
    assert set(result) == keys | {"mean", "mask_volume"}
    for key in keys:
        assert_float32_close(result[key], expected[key])


def test_tiled_equals_the_whole_frame_engine_profiles_and_fit():
    from cccdask.kernels.ccc import ccc_frame
    from cccdask.kernels.fit import fit_gaussian
    from cccdask.kernels.profile import profile_geometry, radial_profile

    spots = paired_spots(shape=(12, 48, 44), spacing=(0.15, 0.05, 0.05), distance=0.3,
                         psf_sigma=0.08, n_pairs=60, n_decoys=10, seed=4)
    max_distance = 0.62
    geometry = profile_geometry(spots.image1.shape, spots.spacing, max_distance)
    engine = ccc_frame(spots.image1, spots.image2, spots.mask, geometry, intermediates=True)
    result = compute(tiled_correlograms(
        da.from_array(spots.image1, chunks=(6, 16, 16)), da.from_array(spots.image2, chunks=(6, 16, 16)),
        spots.mask, spots.spacing, max_distance, tile_shape=(5, 13, 17)))
    assert result["original"].shape == engine["ccf_original"].shape
    assert_float32_close(result["original"], engine["ccf_original"])
    assert_float32_close(result["subtracted"], engine["ccf_subtracted"])
    profile_original = radial_profile(result["original"], geometry)
    profile = radial_profile(result["subtracted"], geometry)
    assert_float32_close(profile_original, engine["profile_original"])
    assert_float32_close(profile, engine["profile_subtracted"])
    fit = fit_gaussian(geometry.distances, profile, pixel_size=spots.spacing[-1])
    assert fit.ok and engine["fit_ok"]
    assert fit.mean == pytest.approx(float(engine["mean"]), rel=1e-4)
    assert fit.sigma == pytest.approx(float(engine["sigma"]), rel=1e-4)
    assert fit.height == pytest.approx(float(engine["height"]), rel=1e-4)


def test_invalid_frames_raise_when_computed():
    image1, image2, mask = scene((10, 10), seed=7)
    empty = tiled_correlograms(image1, image2, np.zeros_like(mask), None, 2.0, tile_shape=(4, 4))
    with pytest.raises(InvalidFrameError, match="no voxel inside"):
        empty["original"].compute()
    bad = image2.copy()
    bad[mask.nonzero()[0][0], mask.nonzero()[1][0]] = np.nan
    with pytest.raises(InvalidFrameError, match="image2 has NaN"):
        tiled_correlograms(image1, bad, mask, None, 2.0, tile_shape=(4, 4))["subtracted"].compute()
    outside = image2.copy()
    outside[~mask] = np.inf  # outside the mask: ignored, as by the whole-frame engine
    expected = reference_correlograms(image1, outside, mask, (1.0, 1.0), 2.0)
    result = compute(tiled_correlograms(image1, outside, mask, None, 2.0, tile_shape=(4, 4)))
    assert_float32_close(result["subtracted"], expected["subtracted"])


def test_bad_arguments_name_the_fix():
    image1, image2, mask = scene((10, 10), seed=8)
    with pytest.raises(ValueError, match="max_distance"):
        tiled_correlograms(image1, image2, mask, None, 0.0)
    with pytest.raises(ValueError, match="tile_shape"):
        tiled_correlograms(image1, image2, mask, None, 2.0, tile_shape=(4,))
    with pytest.raises(ValueError, match="mode"):
        tiled_correlograms(image1, image2, mask, None, 2.0, mode="fast")


# --------------------------------------------------------------------------- contributions


def direct_contributions(image1, image2, mask, gauss, shift_lo):
    """numpy.pad(reflect) of the whole frame + scipy.signal.fftconvolve, float64."""
    inside = np.ones(image1.shape, bool) if mask is None else mask != 0
    i1 = np.where(inside, image1, 0).astype(np.float64)
    i2 = np.where(inside, image2, 0).astype(np.float64)
    lo = np.array(shift_lo)
    hi = lo + np.array(gauss.shape) - 1
    # convolution sum_s G(s) I(m - s): the frame needs hi before and -lo after
    conv = scipy.signal.fftconvolve(np.pad(i2, list(zip(hi, -lo)), mode="reflect"), gauss, mode="valid")
    corr = scipy.signal.fftconvolve(np.pad(i1, list(zip(-lo, hi)), mode="reflect"),
                                    gauss[(slice(None, None, -1),) * gauss.ndim], mode="valid")
    return conv * i1, corr * i2


@pytest.mark.parametrize("shape,tile_shape,kernel_shape", [
    ((11, 14, 9), (4, 5, 3), (5, 7, 3)),
    ((9, 10), (2, 3), (9, 11)),  # halo larger than a tile, and reaching past the frame
])
def test_tiled_contributions_equal_direct_computation(shape, tile_shape, kernel_shape):
    image1, image2, mask = scene(shape, seed=9)
    gauss = np.random.default_rng(9).normal(size=kernel_shape).astype(np.float32)
    lo = tuple(-(k // 2) for k in kernel_shape)
    expected1, expected2 = direct_contributions(image1, image2, mask, gauss, lo)
    c1, c2 = tiled_contributions(da.from_array(image1, chunks=3), image2, gauss, mask=mask,
                                 tile_shape=tile_shape)
    assert c1.chunks == tuple(tuple(min(t, n - o) for o in range(0, n, t)) for n, t in zip(shape, tile_shape))
    c1, c2 = dask.compute(c1, c2)
    assert_float32_close(c1, expected1)
    assert_float32_close(c2, expected2)


def test_contributions_with_an_asymmetric_lazy_kernel_equal_the_engine():
    from cccdask.kernels.contributions import contribution_images

    image1, image2, mask = scene((10, 13), seed=10)
    lo = (-5, -3)  # the even axis of 10 voxels clipped to -5..4
    gauss = np.random.default_rng(10).normal(size=(10, 7)).astype(np.float32)
    masked = mask_images(image1, image2, mask, (1.0, 1.0))
    expected1, expected2 = contribution_images(masked.image1, masked.image2, gauss, lo)
    lazy_gauss = da.from_array(gauss, chunks=(5, 7)) * 1.0
    c1, c2 = tiled_contributions(image1, image2, lazy_gauss, mask=mask, shift_lo=lo, tile_shape=(4, 6))
    c1, c2 = dask.compute(c1, c2)
    assert_float32_close(c1, expected1)
    assert_float32_close(c2, expected2)


# --------------------------------------------------------------------------- memory


def test_a_pass_after_a_whole_frame_number_reads_the_tiles_again_instead_of_holding_them():
    # the tiles wait for the frame's mean (correlation) or the fitted kernel (contributions):
    # sharing the first pass's reads held all 64 chunks at once (dask's bind, 2026.8)
    from reads import counted_reads

    rng = np.random.default_rng(3)
    image1, image2 = rng.random((64, 64)), rng.random((64, 64))
    chunks = ((8,) * 8, (8,) * 8)
    counts = {"reads": 0, "alive": 0, "peak": 0}
    lazy1 = counted_reads(image1, chunks, counts)
    result = tiled_correlograms(lazy1, da.from_array(image2, chunks=8), None, (1.0, 1.0), 3.0, tile_shape=(8, 8))
    with dask.config.set(scheduler="synchronous"):
        subtracted = result["subtracted"].compute()
    assert counts["reads"] == 2 * 64 and counts["peak"] <= 4, counts
    expected = tiled_correlograms(image1, image2, None, (1.0, 1.0), 3.0, tile_shape=(8, 8))["subtracted"]
    assert_float32_close(subtracted, expected.compute())

    counts.update(reads=0, alive=0, peak=0)
    gauss = rng.normal(size=(7, 7))
    kernel = da.from_array(gauss, chunks=7) * (lazy1.mean() * 0 + 1)  # known only after a pass over the frame
    c1, _ = tiled_contributions(lazy1, image2, kernel, tile_shape=(8, 8))
    with dask.config.set(scheduler="synchronous"):
        c1 = c1.compute()
    assert counts["reads"] == 2 * 64 and counts["peak"] <= 24, counts  # a tile and its overlap-save halo
    assert_float32_close(c1, tiled_contributions(image1, image2, gauss, tile_shape=(8, 8))[0].compute())


def test_whole_frame_estimate_bounds_the_measured_peak():
    # The whole-frame engine's correlation of one frame, measured by tracemalloc.
    shape, spacing, max_distance = (24, 96, 80), (0.3, 0.1, 0.1), 1.0
    image1, image2, mask = scene(shape, seed=11)
    estimate = whole_frame_memory_bytes(shape, max_distance, spacing)
    from cccdask.kernels.profile import shift_range

    lo, hi = shift_range(shape, spacing, max_distance)
    tracemalloc.start()
    try:
        masked = mask_images(image1, image2, mask, spacing)
        masked_correlograms(masked, lo, hi, "full")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert 0.6 * estimate <= peak <= estimate
    assert whole_frame_fits(shape, max_distance, spacing, estimate)
    assert not whole_frame_fits(shape, max_distance, spacing, estimate - 1)


def test_tile_estimate_bounds_the_measured_peak_of_a_tile():
    tile_shape, max_shift = (24, 40, 40), (3, 9, 9)
    image1, image2, mask = scene(tuple(n + 2 * k for n, k in zip(tile_shape, max_shift)), seed=12)
    centre = tuple(slice(k, k + n) for k, n in zip(max_shift, tile_shape))
    estimate = tile_memory_bytes(tile_shape, max_shift)
    tracemalloc.start()
    try:
        inside = mask != 0
        image2m = np.where(inside, image2, 0).astype(np.float32)
        image1m = np.where(inside[centre], image1[centre], 0).astype(np.float32)
        centred = np.where(inside[centre], image1m - 0.5, 0).astype(np.float32)
        correlate_tile([image1m, centred], image2m, max_shift)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert 0.5 * estimate <= peak <= estimate


def test_default_tile_shape_fits_the_budget_and_the_chunks():
    frame, halo = (1000, 2048, 2048), (8, 20, 20)
    budget = 256 * 2**20
    tile = default_tile_shape(frame, halo, memory_budget_bytes=budget)
    assert tile_memory_bytes(tile, halo) <= budget
    bigger = tuple(min(2 * t, n) for t, n in zip(tile, frame))
    assert tile_memory_bytes(bigger, halo) > budget or math.prod(tile) >= 2**24
    aligned = default_tile_shape(frame, halo, memory_budget_bytes=budget, chunk_shape=(10, 100, 100))
    assert all(t % c == 0 for t, c in zip(aligned, (10, 100, 100)))
    assert default_tile_shape((50, 60), (3, 3), memory_budget_bytes=budget) == (50, 60)
    with pytest.raises(ValueError, match="lower max_distance"):
        default_tile_shape(frame, (400, 400, 400), memory_budget_bytes=2**20)


# --------------------------------------------------------------------------- cluster + Zarr


def test_zarr_frame_on_a_cluster_equals_whole_frame(tmp_path):
    from distributed import Client, LocalCluster

    shape, spacing, max_distance = (10, 36, 30), (0.4, 0.1, 0.1), 0.75
    image1, image2, mask = scene(shape, seed=13)
    for name, data in (("i1", image1), ("i2", image2), ("m", mask)):
        zarr.create_array(str(tmp_path / f"{name}.zarr"), data=data, chunks=(5, 12, 10))
    arrays = [da.from_zarr(str(tmp_path / f"{name}.zarr")) for name in ("i1", "i2", "m")]
    expected = reference_correlograms(image1, image2, mask, spacing, max_distance)
    # memory_limit=0: in-process workers would count the whole test process against a limit (a
    # long session past 80 % of it paused them and this compute waited forever)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None,
                      memory_limit=0) as cluster, Client(cluster):
        result = compute(tiled_correlograms(*arrays, spacing, max_distance, tile_shape=(5, 12, 10)))
        assert_float32_close(result["original"], expected["original"])
        assert_float32_close(result["subtracted"], expected["subtracted"])
        # contributions written chunk by chunk to Zarr
        gauss = da.from_array(result["subtracted"])
        c1, c2 = tiled_contributions(arrays[0], arrays[1], gauss, mask=arrays[2], tile_shape=(5, 12, 10))
        da.to_zarr(c1, str(tmp_path / "c1.zarr"))
        da.to_zarr(c2, str(tmp_path / "c2.zarr"))
    expected1, expected2 = direct_contributions(image1, image2, mask, result["subtracted"],
                                                [-(n // 2) for n in result["subtracted"].shape])
    written = zarr.open_array(str(tmp_path / "c1.zarr"))
    assert written.chunks == (5, 12, 10)
    assert_float32_close(written[:], expected1)
    assert_float32_close(zarr.open_array(str(tmp_path / "c2.zarr"))[:], expected2)


def test_second_pass_reads_the_frame_again_after_the_reductions(tmp_path):
    # The tile tasks must not share chunk reads with the reductions (which would keep
    # every chunk in memory until the mean is known): each Zarr chunk is read twice.
    image1, image2, mask = scene((8, 20, 20), seed=14)
    arrays = []
    for name, data in (("i1", image1), ("i2", image2), ("m", mask)):
        zarr.create_array(str(tmp_path / f"{name}.zarr"), data=data, chunks=(4, 10, 10))
        arrays.append(da.from_zarr(str(tmp_path / f"{name}.zarr")))
    import xarray as xr

    as_xarray = xr.DataArray(arrays[0], dims=("z", "y", "x"))
    result = tiled_correlograms(as_xarray, arrays[1], arrays[2], None, 3.0, tile_shape=(4, 10, 10))
    graph = dict(result["original"].__dask_graph__())
    reads = [k for k in graph if isinstance(k, tuple) and str(k[0]).startswith("from-zarr")]
    assert len(reads) == 2 * 3 * 8
    expected = reference_correlograms(image1, image2, mask, (1.0, 1.0, 1.0), 3.0)
    assert_float32_close(compute(result)["original"], expected["original"])


def test_tiled_equals_public_ccc_intermediates_and_contributions():
    import cccdask
    from cccdask.kernels.profile import profile_geometry

    spots = paired_spots(shape=(10, 40, 36), spacing=(0.15, 0.05, 0.05), distance=0.25,
                         psf_sigma=0.08, n_pairs=40, n_decoys=8, seed=5)
    max_distance = 0.55
    engine = cccdask.ccc(spots.image1, spots.image2, spots.mask, spacing=spots.spacing,
                         max_distance=max_distance, intermediates=True, contributions=True)
    tile_shape = (4, 11, 9)
    result = compute(tiled_correlograms(spots.image1, spots.image2, spots.mask, spots.spacing,
                                        max_distance, tile_shape=tile_shape))
    assert_float32_close(result["original"], engine["ccf_original"].values)
    assert_float32_close(result["subtracted"], engine["ccf_subtracted"].values)
    # the engine's Gaussian-modified correlogram over the same tiles gives its contributions
    geometry = profile_geometry(spots.image1.shape, spots.spacing, max_distance)
    c1, c2 = tiled_contributions(spots.image1, spots.image2, engine["ccf_gauss"].values, mask=spots.mask,
                                 shift_lo=geometry.shift_lo, tile_shape=tile_shape)
    c1, c2 = dask.compute(c1, c2)
    assert_float32_close(c1, engine["contribution1"].values)
    assert_float32_close(c2, engine["contribution2"].values)
