"""The sorted-keys path of the rank coefficients against scipy.stats and brute force.

Float frames with all values distinct and with a few exact ties, 2D and 3D, with and
without thresholds; the keys of a frame merged from any chunking equal the whole
frame's; the compiled pieces (inversion count, exact sums) against direct computations.
"""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import pytest
import scipy.stats as ss
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cccdask import coefficients
from cccdask.kernels.coefficients.part_statistics import statistics_from_pairs
from cccdask.kernels.coefficients import (
    ChannelThreshold,
    JointTable,
    Thresholds,
    finalize,
    joint_table,
    part_statistics,
    statistics_from_table,
)
from cccdask.kernels.coefficients.sorted_pairs import (
    SortedPairs,
    merge_tables,
    pair_keys,
    prefers_sorted,
    ranks_source,
)
from cccdask.kernels.coefficients.sorted_ranks import (
    _exact_mean,
    _float32_term,
    _float64_term,
    _flush,
    rank_coefficients,
)
from cccdask.kernels.coefficients.inversions import inversions
from numba import njit

RANK_NAMES = ("spearman", "object_spearman", "kendall_tau", "icq")


def frame(shape, seed, ties=0, dtype=np.float32):
    """Gamma signal plus Gaussian noise, channel 2 correlated with channel 1; ``ties``
    voxels of each channel copied from others (exact ties)."""
    rng = np.random.default_rng(seed)
    signal = rng.gamma(2.0, 300.0, shape)
    r = (signal + rng.normal(0, 20, shape)).astype(dtype)
    g = (0.6 * signal + rng.gamma(2.0, 150.0, shape) + rng.normal(0, 20, shape)).astype(dtype)
    for image in (r, g):
        flat = image.reshape(-1)
        flat[rng.integers(0, flat.size, ties)] = flat[rng.integers(0, flat.size, ties)]
    return r, g


def brute_force_ranks(R, G, thresholds):
    """From the spec's formulas with scipy.stats (no code shared with the package)."""
    th1, th2 = thresholds.channel1, thresholds.channel2

    def corrected(v, th):
        v = v.astype(np.float64).ravel()
        return v if th.level is None or not th.subtract else np.maximum(v - th.level, 0.0)

    def above(v, th):
        v = v.astype(np.float64).ravel()
        cut = 0.0 if th.level is None else th.level
        return (v >= cut) & (v > 0) if th.inclusive else v > cut

    r, g = corrected(R, th1), corrected(G, th2)
    objects = above(R, th1) | above(G, th2)
    product = (r - math.fsum(r) / r.size) * (g - math.fsum(g) / g.size)
    positive = product >= 0 if thresholds.icq_zero_positive else product > 0
    return {"spearman": ss.spearmanr(r, g)[0], "object_spearman": ss.spearmanr(r[objects], g[objects])[0],
            "kendall_tau": ss.kendalltau(r, g)[0], "icq": positive.mean() - 0.5}


THRESHOLDS = [
    Thresholds(),
    Thresholds(ChannelThreshold(400.0), ChannelThreshold(300.0)),  # Huygens: background ties
    Thresholds(ChannelThreshold(400.0, subtract=False, inclusive=True),
               ChannelThreshold(300.0, subtract=False, inclusive=True), icq_zero_positive=True),  # Coloc 2
]


@pytest.mark.parametrize("shape", [(61, 67), (9, 23, 31)])
@pytest.mark.parametrize("ties", [0, 40])
@pytest.mark.parametrize("thresholds", THRESHOLDS)
def test_rank_coefficients_match_scipy(shape, ties, thresholds):
    R, G = frame(shape, seed=len(shape) + ties, ties=ties)
    if ties == 0:
        assert np.unique(R).size == R.size and np.unique(G).size == G.size
    got = rank_coefficients(SortedPairs(pair_keys(R.ravel(), G.ravel())), thresholds)
    expected = brute_force_ranks(R, G, thresholds)
    for name in RANK_NAMES:
        assert got[name][1] == ""
        assert got[name][0] == pytest.approx(expected[name], rel=1e-12, abs=1e-14), name


@pytest.mark.parametrize("thresholds", THRESHOLDS)
def test_rank_coefficients_equal_the_joint_histogram_path(thresholds):
    R, G = frame((40, 50), seed=3, ties=300)
    stats = part_statistics(R, G, None, thresholds)
    expected = finalize(stats, thresholds)
    got = rank_coefficients(SortedPairs(pair_keys(R.ravel(), G.ravel())), thresholds)
    for name in RANK_NAMES:
        assert got[name][1] == expected[name][1] == ""
        assert got[name][0] == pytest.approx(expected[name][0], rel=1e-12), name


def test_undefined_values_and_reasons():
    R, G = frame((20, 30), seed=4)
    constant = np.full_like(R, 7.5)
    got = rank_coefficients(SortedPairs(pair_keys(R.ravel(), constant.ravel())), Thresholds())
    assert np.isnan(got["spearman"][0]) and got["spearman"][1] == "zero variance in a channel"
    assert np.isnan(got["kendall_tau"][0]) and got["kendall_tau"][1] == "all values of a channel are tied"
    nothing_above = Thresholds(ChannelThreshold(1e9), ChannelThreshold(1e9))
    got = rank_coefficients(SortedPairs(pair_keys(R.ravel(), G.ravel())), nothing_above)
    assert np.isnan(got["object_spearman"][0]) and got["object_spearman"][1] == "no object voxels"
    one = rank_coefficients(SortedPairs(pair_keys(R.ravel()[:1], G.ravel()[:1])), Thresholds())
    assert one["kendall_tau"][1] == "fewer than 2 voxels"


def test_correction_that_rounds_values_together_falls_back_exactly():
    # v - T with T = -1e8 rounds neighbouring small values to one corrected value
    rng = np.random.default_rng(5)
    R = rng.uniform(0, 1, 500).astype(np.float32)
    G = (R + rng.uniform(0, 0.5, 500)).astype(np.float32)
    thresholds = Thresholds(ChannelThreshold(-1e8), ChannelThreshold(-1e8))
    got = rank_coefficients(SortedPairs(pair_keys(R, G)), thresholds)
    expected = brute_force_ranks(R, G, thresholds)
    for name in RANK_NAMES:
        assert got[name][0] == pytest.approx(expected[name], rel=1e-12, abs=1e-14), name


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(1, 599), max_size=6, unique=True), as_table=st.lists(st.booleans(), min_size=7,
                                                                                        max_size=7))
def test_keys_merged_from_any_chunking_equal_the_whole_frame(cuts, as_table):
    R, G = frame((600,), seed=6, ties=60)
    whole = SortedPairs(pair_keys(R, G))
    bounds = [0, *sorted(cuts), R.size]
    parts = [JointTable if table else SortedPairs for table in as_table]
    merged = None
    for (start, stop), kind in zip(zip(bounds[:-1], bounds[1:]), parts):
        part = joint_table(R[start:stop], G[start:stop]) if kind is JointTable else \
            SortedPairs(pair_keys(R[start:stop], G[start:stop]))
        merged = part if merged is None else merge_tables(merged, part)
    merged = ranks_source(merged)
    assert isinstance(merged, SortedPairs)
    np.testing.assert_array_equal(merged.keys, whole.keys)


def test_statistics_from_pairs_equal_those_from_the_table():
    R, G = frame((70, 90), seed=7, ties=200)
    for thresholds in THRESHOLDS + [Thresholds(ChannelThreshold(400.0, 100.0), ChannelThreshold(300.0, 50.0))]:
        pairs = SortedPairs(pair_keys(R.ravel(), G.ravel()))
        got = statistics_from_pairs(pairs, thresholds)
        expected = statistics_from_table(joint_table(R.ravel(), G.ravel()), thresholds)
        np.testing.assert_allclose(got.sums, expected.sums, rtol=1e-12)
        for moments in ("mask_moments", "object_moments"):
            for name in ("n", "mean_x", "mean_y", "m2_x", "m2_y", "c_xy"):
                assert float(getattr(getattr(got, moments), name)) == pytest.approx(
                    float(getattr(getattr(expected, moments), name)), rel=1e-11), (moments, name)


def test_joint_table_of_pairs_equals_the_direct_one():
    R, G = frame((30, 40), seed=8, ties=300)
    direct = joint_table(R.ravel(), G.ravel())
    via_keys = SortedPairs(pair_keys(R.ravel(), G.ravel())).joint_table
    for name in ("values1", "values2", "counts"):
        np.testing.assert_array_equal(getattr(via_keys, name), getattr(direct, name))


def brute_force_inversions(ranks, limit):
    """Pairs i < j with ranks[i] > ranks[j]: per block of 1000, against a histogram of the
    earlier values, and pair by pair within the block."""
    seen = np.zeros(limit + 1, np.int64)
    total = 0
    for block in np.array_split(ranks.astype(np.int64), max(1, ranks.size // 1000)):
        at_least = np.cumsum(seen[::-1])[::-1]  # at_least[v]: earlier values >= v
        total += int(at_least[block + 1].sum())
        total += int(np.count_nonzero(np.triu(block[:, None] > block[None, :], 1)))
        np.add.at(seen, block, 1)
    return total


@pytest.mark.parametrize("size, limit", [(1, 2), (300, 50), (2000, 4000), (999, 999), (300_000, 9000),
                                         (200_000, 1 << 27)])
@pytest.mark.parametrize("threads", [1, 2])
def test_inversion_count_matches_brute_force(size, limit, threads):
    """Small and large limits: up to 2^22 the count trees have 2^11 leaves, above that
    2^16 (the last case)."""
    ranks = np.random.default_rng(size).integers(0, limit, size).astype(np.uint32)
    if size == 2000:
        assert brute_force_inversions(ranks, limit) == sum(int(np.count_nonzero(ranks[:j] > ranks[j]))
                                                           for j in range(size))
    # inversions depend on the order of the values alone: the brute force on their ranks
    distinct, dense = np.unique(ranks, return_inverse=True)
    expected = brute_force_inversions(dense.reshape(-1), distinct.size)
    assert inversions(ranks, limit, np.empty(size, np.uint32), threads) == expected


@njit
def _sum_into_bins(values, counts, float32_codes):
    bins = np.zeros((2, 2048), np.int64)
    scratch = np.empty(1, np.float64)
    for i in range(values.size):
        column, significand = _float64_term(counts[i] * values[i], scratch, scratch.view(np.uint64))
        _flush(bins, column, significand >> 26, significand & ((1 << 26) - 1))
    for i in range(float32_codes.size):
        column, significand = _float32_term(float32_codes[i], counts[i])
        _flush(bins, column, significand >> 26, significand & ((1 << 26) - 1))
    return bins


def test_exact_sums_equal_fsum():
    rng = np.random.default_rng(9)
    values = np.concatenate([rng.normal(0, 1e6, 1000), rng.normal(0, 1e-30, 10), [1e300, -1e300, 5e-324]])
    counts = rng.integers(1, 1000, values.size)
    single = rng.normal(0, 1e4, values.size).astype(np.float32)
    single[:3] = [1e-45, -3e38, 0.0]
    codes_in_order = pair_keys(single, single).astype(np.uint32)  # order codes, ascending
    values32 = np.sort(single.astype(np.float64))
    bins = _sum_into_bins(values, counts, codes_in_order)
    expected = math.fsum(list(counts * values) + list(counts * values32))
    assert _exact_mean(bins, 7) == expected / 7


def test_path_rule():
    R, G = frame((100, 100), seed=10)
    assert prefers_sorted(R.ravel(), G.ravel())
    assert prefers_sorted(R.ravel().astype(np.float64), G.ravel().astype(np.float64))  # float32 holds them
    assert not prefers_sorted(R.ravel() + np.float64(1e-9), G.ravel().astype(np.float64))
    assert not prefers_sorted(np.round(R.ravel() / 100), np.round(G.ravel() / 100))  # mostly repeats
    assert not prefers_sorted(R.ravel().astype(np.int32), G.ravel().astype(np.int32))
    # 1 M voxels on 256 x 256 possible pairs (65 536 distinct): a 4 096-voxel sample of them is
    # 97 % distinct, the part 6 %: the joint histogram; 1 M distinct values: the sorted keys
    rng = np.random.default_rng(3)
    levels = rng.integers(0, 256, (2, 1 << 20)).astype(np.float32) / np.float32(256)
    assert not prefers_sorted(levels[0], levels[1])
    distinct = rng.random((2, 1 << 20), dtype=np.float32)
    assert prefers_sorted(distinct[0], distinct[1])
    repeats = joint_table(np.round(R.ravel() / 100), np.round(G.ravel() / 100))
    assert ranks_source(repeats) is repeats
    assert isinstance(ranks_source(joint_table(R.ravel(), G.ravel())), SortedPairs)


# ---------------------------------------------------------------------------------------
# End to end: cccdask.coefficients on float frames, chunked and not
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, chunks", [
    ((96, 96), None), ((96, 96), (48, 96)), ((96, 96), (30, 41)), ((96, 96), (80, 96)),
    ((8, 40, 40), None), ((8, 40, 40), (3, 17, 40)), ((8, 40, 40), (5, 40, 40)),
])
@pytest.mark.parametrize("ties", [0, 50])
def test_coefficients_of_float_frames_match_scipy(shape, chunks, ties):
    R, G = frame(shape, seed=11 + ties, ties=ties)
    mask = np.ones(shape, bool)
    mask.reshape(-1)[::7] = False  # cuts every chunk
    image1, image2, inside = (R, G, mask) if chunks is None else (
        da.from_array(R, chunks=chunks), da.from_array(G, chunks=chunks), da.from_array(mask, chunks=chunks))
    for preset, threshold in (("huygens", None), ("huygens", (400.0, 300.0)), ("coloc2", (400.0, 300.0))):
        ds = coefficients(image1, image2, mask=inside, threshold=threshold, preset=preset,
                          van_steensel_shifts=None).compute()
        thresholds = Thresholds() if threshold is None else Thresholds(
            ChannelThreshold(threshold[0], subtract=preset == "huygens", inclusive=preset == "coloc2"),
            ChannelThreshold(threshold[1], subtract=preset == "huygens", inclusive=preset == "coloc2"),
            icq_zero_positive=preset == "coloc2")
        expected = brute_force_ranks(R[mask], G[mask], thresholds)
        for name in RANK_NAMES:
            assert float(ds[name]) == pytest.approx(expected[name], rel=1e-12, abs=1e-14), (preset, name)
        r = thresholds.channel1.corrected(R[mask].astype(np.float64))
        g = thresholds.channel2.corrected(G[mask].astype(np.float64))
        assert float(ds.pearson) == pytest.approx(ss.pearsonr(r, g)[0], rel=1e-10)


def test_float_frames_take_the_sorted_path_and_float64_beyond_float32_does_not():
    R, G = frame((96, 96), seed=12)
    assert isinstance(part_statistics(R, G, None, Thresholds()).table, SortedPairs)
    assert isinstance(part_statistics(R.astype(np.float64), G, None, Thresholds()).table, SortedPairs)
    beyond = R.astype(np.float64) + 1e-6
    assert isinstance(part_statistics(beyond, G, None, Thresholds()).table, JointTable)
    # the same numbers either way
    got = coefficients(beyond, G, van_steensel_shifts=None)
    expected = brute_force_ranks(beyond, G, Thresholds())
    for name in RANK_NAMES:
        assert float(got[name]) == pytest.approx(expected[name], rel=1e-12, abs=1e-14), name


def test_nonfinite_voxels_in_a_sorted_part_make_the_frame_nan():
    R, G = frame((96, 96), seed=13)
    R[5, 5] = np.nan
    ds = coefficients(R, G, van_steensel_shifts=None)
    assert np.isnan(float(ds.spearman))
    assert "1 NaN/Inf voxels inside the mask" in str(ds.nan_reason.sel(coefficient="spearman").values)
