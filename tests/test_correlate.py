"""Correlograms and radial profiles against direct computation on small arrays."""

import itertools
from collections import defaultdict

import numpy as np
import pytest

import cccdask
from cccdask.kernels.correlate import crop_shifts, padded_shape
from cccdask.kernels.profile import profile_geometry, radial_profile


def brute_correlation(a, b, shifts_per_axis):
    """CC_raw(A, B)(s) = sum_m A(m + s) B(m), by direct sums over every shift."""
    out = np.zeros(tuple(len(s) for s in shifts_per_axis))
    for idx in itertools.product(*[range(len(s)) for s in shifts_per_axis]):
        shift = [s[i] for s, i in zip(shifts_per_axis, idx)]
        src, dst = [], []
        for n, sh in zip(a.shape, shift):
            # m ranges where both m and m + s lie in the frame
            lo, hi = max(0, -sh), min(n, n - sh)
            src.append(slice(lo + sh, hi + sh))
            dst.append(slice(lo, hi))
        out[idx] = np.sum(a[tuple(src)] * b[tuple(dst)]) if all(s.stop > s.start for s in dst) else 0.0
    return out


def frame_shifts(shape):
    return [np.arange(-(n // 2), n - n // 2) for n in shape]


CASES = [
    ((9, 12), (0.7, 0.3)),
    ((10, 7), (1.0, 1.0)),
    ((5, 6, 7), (0.5, 0.2, 0.2)),
    ((6, 5, 8), (1.3, 0.4, 0.7)),
]


@pytest.mark.parametrize("shape,spacing", CASES)
def test_correlograms_equal_direct_sums(shape, spacing):
    rng = np.random.default_rng(len(shape) * 100 + shape[0])
    i1 = rng.random(shape) * 10
    i2 = rng.random(shape) * 10
    mask = rng.random(shape) > 0.3
    ds = cccdask.ccc(i1, i2, mask, spacing=spacing, intermediates=True, dtype="float64")

    i1m, i2m = np.where(mask, i1, 0), np.where(mask, i2, 0)
    mean = i1[mask].mean()
    centred = np.where(mask, i1 - mean, 0)
    volume = mask.sum() * np.prod(spacing)
    shifts = frame_shifts(shape)
    original = brute_correlation(i1m, i2m, shifts) / volume
    subtracted = brute_correlation(centred, i2m, shifts) / volume
    low_frequency = brute_correlation(mask.astype(float), i2m, shifts) / volume

    np.testing.assert_allclose(ds["ccf_original"].values, original, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ds["ccf_subtracted"].values, subtracted, rtol=1e-9, atol=1e-12)
    # the plugin's v2.0 form: S = O - mean * CC(B, I2m) / maskVolume
    np.testing.assert_allclose(ds["ccf_subtracted"].values, original - mean * low_frequency, rtol=1e-9, atol=1e-11)
    # shift coordinates are physical and the zero shift sits at floor(N/2)
    for dim, s, sp in zip(ds["ccf_original"].dims, shifts, spacing):
        np.testing.assert_allclose(ds.coords[dim].values, s * sp)


def test_float32_matches_float64():
    rng = np.random.default_rng(3)
    i1, i2 = rng.random((2, 33, 40)) * 100
    a = cccdask.ccc(i1, i2, intermediates=True, dtype="float32")
    b = cccdask.ccc(i1, i2, intermediates=True, dtype="float64")
    assert a["ccf_original"].dtype == np.float32
    scale = np.abs(b["ccf_original"].values).max()
    np.testing.assert_allclose(a["ccf_original"].values, b["ccf_original"].values, atol=1e-5 * scale)


@pytest.mark.parametrize("shape,spacing", CASES)
def test_max_distance_crops_exact_shifts(shape, spacing):
    rng = np.random.default_rng(7)
    i1, i2 = rng.random((2,) + shape)
    r = 2.1 * max(spacing)
    ds = cccdask.ccc(i1, i2, spacing=spacing, max_distance=r, intermediates=True, dtype="float64")
    full = cccdask.ccc(i1, i2, spacing=spacing, intermediates=True, dtype="float64")
    k = [min(int(np.floor(r / s)), n // 2) for s, n in zip(spacing, shape)]
    centre = [n // 2 for n in shape]
    crop = tuple(slice(c - kk, c + min(kk, n - 1 - c) + 1) for c, kk, n in zip(centre, k, shape))
    np.testing.assert_allclose(ds["ccf_original"].values, full["ccf_original"].values[crop], rtol=1e-10)
    assert ds.distance.values.max() <= r + 1e-12
    # the profile out to R is the full profile's first points
    n = ds.sizes["distance"]
    np.testing.assert_allclose(ds.distance.values, full.distance.values[:n])
    np.testing.assert_allclose(ds["profile_original"].values, full["profile_original"].values[:n], rtol=1e-10)


@pytest.mark.parametrize("shape,spacing,fiji", [((8, 11), (0.3, 0.2), False), ((6, 7, 8), (0.5, 0.1, 0.1), False),
                                                ((8, 11), (0.3, 0.2), True), ((6, 7, 8), (0.5, 0.1, 0.1), True)])
def test_profile_is_group_by_distance(shape, spacing, fiji):
    rng = np.random.default_rng(11)
    ccf = rng.normal(size=shape)
    geometry = profile_geometry(shape, spacing, None, fiji)
    groups = defaultdict(list)
    exact = {}
    for idx in np.ndindex(*shape):
        centre = [(n - 1) / 2 if fiji else n // 2 for n in shape]
        if fiji:  # the plugin: float64 running sum x first, every distinct value a key
            total = 0.0
            for i, c, s in reversed(list(zip(idx, centre, spacing))):
                total += ((i - c) * s) ** 2
            d = key = float(np.sqrt(total))
        else:  # equal distances merged
            d = np.sqrt(sum(((i - c) * s) ** 2 for i, c, s in zip(idx, centre, spacing)))
            key = round(d, 9)
        groups[key].append(ccf[idx])
        exact[key] = d
    keys = sorted(groups)
    np.testing.assert_allclose(geometry.distances, [exact[k] for k in keys], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(radial_profile(ccf, geometry), [np.mean(groups[k]) for k in keys], rtol=1e-12)


def test_fiji_compat_shifts_even_axes_by_half_a_voxel():
    even = profile_geometry((8, 8), (1.0, 1.0), None, True)
    odd = profile_geometry((9, 9), (1.0, 1.0), None, True)
    assert even.distances[0] == pytest.approx(np.sqrt(0.5))  # no point at d = 0
    assert odd.distances[0] == 0.0
    assert profile_geometry((8, 8), (1.0, 1.0)).distances[0] == 0.0


def test_padding_is_minimal_and_exact():
    # N + N/2 suffices for the frame-sized correlogram, N + R for shifts up to R
    lo, hi = (-512,), (511,)
    assert padded_shape((1024,), lo, hi)[0] < 2 * 1024 - 1
    assert padded_shape((1024,), lo, hi)[0] >= 1024 + 512
    assert padded_shape((1024,), (-10,), (10,))[0] < 1100
    circular = np.arange(20.0)
    np.testing.assert_array_equal(crop_shifts(circular, (-3,), (2,)), [17, 18, 19, 0, 1, 2])


def test_geometry_pickles_as_its_key():
    import pickle

    geometry = profile_geometry((30, 40), (0.2, 0.1), 1.0)
    payload = pickle.dumps(geometry)
    assert len(payload) < 500  # the index arrays are not shipped in a Dask graph
    assert pickle.loads(payload) is geometry  # rebuilt from the cache
