"""Chunking invariance: any chunking of a frame gives the in-memory coefficients (1e-10)."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import scipy.stats as ss
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cccdask import coefficients
from reads import counted_reads


@st.composite
def chunking(draw, length):
    """Chunk sizes along one axis: from single voxels to the whole axis."""
    sizes = []
    left = length
    while left:
        size = draw(st.integers(1, left))
        sizes.append(size)
        left -= size
    return tuple(sizes)


@st.composite
def scenes(draw):
    ndim = draw(st.sampled_from([2, 3]))
    shape = tuple(draw(st.integers(2, 9)) for _ in range(ndim - 2)) + (
        draw(st.integers(3, 14)),
        draw(st.integers(3, 14)),
    )
    dtype = draw(st.sampled_from(["uint8", "uint16", "int16", "float32", "float64"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if dtype.startswith(("u", "i")):
        a = rng.integers(0, draw(st.sampled_from([3, 20, 300])), shape)
        b = (a * rng.integers(0, 2, shape) + rng.integers(0, 10, shape)).astype(dtype)
        a = a.astype(dtype)
        level = draw(st.one_of(st.none(), st.integers(0, 6)))
    else:
        a = rng.gamma(2.0, 1e3, shape) + 1e4  # an offset that naive sums would lose
        b = (0.2 * a + rng.gamma(2.0, 1e3, shape)).astype(dtype)
        a = a.astype(dtype)
        level = draw(st.one_of(st.none(), st.floats(1e4, 1.5e4)))
    mask = None
    if draw(st.booleans()):
        mask = rng.random(shape) > draw(st.floats(0.0, 0.7))
    soft_range = draw(st.sampled_from([0.0, 3.0]))
    chunks = tuple(draw(chunking(n)) for n in shape)
    image2_chunks = tuple(draw(chunking(n)) for n in shape)
    mask_chunks = tuple(draw(chunking(n)) for n in shape)
    axis = draw(st.sampled_from(["x", "y"] + (["z"] if ndim == 3 else [])))
    shifts = draw(st.integers(0, 4))
    return a, b, mask, level, soft_range, chunks, image2_chunks, mask_chunks, axis, shifts


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenes())
def test_any_chunking_equals_in_memory(scene):
    a, b, mask, level, soft_range, chunks, image2_chunks, mask_chunks, axis, shifts = scene
    kwargs = dict(threshold=level, threshold_range=soft_range, maps=True, van_steensel_shifts=shifts,
                  van_steensel_axis=axis)
    in_memory = coefficients(a, b, mask, **kwargs)
    chunked = coefficients(
        da.from_array(a, chunks=chunks),
        da.from_array(b, chunks=image2_chunks),
        None if mask is None else da.from_array(mask, chunks=mask_chunks),
        **kwargs,
    )
    with dask.config.set(scheduler="synchronous"):
        chunked = chunked.compute()
    for name in in_memory.data_vars:
        expected, got = in_memory[name].values, chunked[name].values
        if expected.dtype.kind == "f":
            np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12, err_msg=name)
        else:
            np.testing.assert_array_equal(got, expected, err_msg=name)
    # and the in-memory numbers are the definitions (the textbook ones without a threshold)
    if level is None and mask is None and np.ptp(a) > 0 and np.ptp(b) > 0:
        x, y = a.ravel().astype(float), b.ravel().astype(float)
        np.testing.assert_allclose(in_memory.pearson.values, ss.pearsonr(x, y)[0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(in_memory.spearman.values, ss.spearmanr(x, y)[0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(in_memory.kendall_tau.values, ss.kendalltau(x, y)[0], rtol=1e-10, atol=1e-12)


def test_chunks_of_one_voxel_cutting_the_mask_equal_in_memory():
    rng = np.random.default_rng(21)
    shape = (2, 4, 5)
    a = rng.integers(0, 12, shape).astype(np.uint16)
    b = (a + rng.integers(0, 5, shape)).astype(np.uint16)
    mask = np.zeros(shape, bool)
    mask[:, 1:3, 2:5] = True  # a box that one-voxel chunks cut everywhere
    kwargs = dict(threshold=(2, 3), threshold_range=(0.0, 2.0), maps=True, van_steensel_shifts=2)
    in_memory = coefficients(a, b, mask, **kwargs)
    chunked = coefficients(da.from_array(a, chunks=1), da.from_array(b, chunks=1),
                           da.from_array(mask, chunks=1), **kwargs)
    with dask.config.set(scheduler="synchronous"):
        chunked = chunked.compute()
    for name in in_memory.data_vars:
        if in_memory[name].dtype.kind == "f":
            np.testing.assert_allclose(chunked[name].values, in_memory[name].values, rtol=1e-10,
                                       atol=1e-12, err_msg=name)
    inside = mask != 0
    r, g = np.maximum(a[inside] - 2.0, 0), np.maximum(b[inside] - 3.0, 0)
    np.testing.assert_allclose(in_memory.pearson.values, ss.pearsonr(r, g)[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(in_memory.kendall_tau.values, ss.kendalltau(r, g)[0], rtol=1e-10, atol=1e-12)


def test_a_second_pass_over_a_frame_of_many_chunks_reads_them_again():
    # Van Steensel at Costes' thresholds and the maps need numbers of the whole frame:
    # sharing the first pass's chunks would hold the whole frame in memory until then
    rng = np.random.default_rng(31)
    a = rng.integers(0, 200, (64, 64)).astype(np.uint16)
    b = (a // 2 + rng.integers(0, 100, a.shape)).astype(np.uint16)
    chunks = ((8,) * 8, (8,) * 8)
    kwargs = dict(threshold="costes", maps=True, van_steensel_shifts=2)
    in_memory = coefficients(a, b, **kwargs)
    counts = {"reads": 0, "alive": 0, "peak": 0}
    lazy = coefficients(counted_reads(a, chunks, counts), da.from_array(b, chunks=chunks), **kwargs)
    with dask.config.set(scheduler="synchronous"):
        computed = lazy.compute()
    assert counts["reads"] == 2 * 64  # once per pass (dask's own bind shared them: 64)
    for name in in_memory.data_vars:
        if in_memory[name].dtype.kind == "f":
            np.testing.assert_allclose(computed[name].values, in_memory[name].values, rtol=1e-10,
                                       atol=1e-12, err_msg=name)
