"""The preprocessing of frames cut into chunks equals the whole-frame kernels (issue 17).

Small frames cut into many chunks, computed with Dask's synchronous scheduler; the
pipeline tests (tests/test_pipeline_tiled.py) run the same on a real cluster.
"""

import dask
import dask.array as da
import numpy as np
import pytest
from scipy import ndimage

import cccdask.tiled_ranks as tiled_ranks
from cccdask.kernels.preprocess import apply_shift, background_value, generate_mask, valid_region
from cccdask.mask_tiled import tiled_generate_mask, tiled_label
from cccdask.preprocess_tiled import ranked_median, tiled_shift, tiled_valid_region
from cccdask.quality import intensity_floor
from cccdask.tiled_ranks import ranked_values, tiled_intensity_floors


@pytest.fixture(autouse=True)
def synchronous():
    with dask.config.set(scheduler="synchronous"):
        yield


def _textured(shape, seed):
    """Smooth blobs with holes and specks of every size, as uint16 counts."""
    rng = np.random.default_rng(seed)
    return (ndimage.gaussian_filter(rng.normal(size=shape), 1.5) * 3000 + 800).clip(0).astype(np.uint16)


@pytest.mark.parametrize("shape, chunks, spacing", [((90, 77), (16, 20), (0.05, 0.07)),
                                                    ((20, 33, 28), (7, 10, 9), (0.2, 0.05, 0.05))])
@pytest.mark.parametrize("method, sigma, fill_holes, min_voxels", [
    ("otsu", 0.0, True, 6), ("isodata", 0.1, True, 20), ("yen", 0.0, False, 3)])
def test_generated_masks_on_chunks_equal_the_whole_frame_ones(shape, chunks, spacing, method, sigma, fill_holes,
                                                              min_voxels):
    frame = _textured(shape, seed=len(shape))
    voxel = float(np.prod(spacing))
    options = dict(spacing=spacing, sigma=sigma, method=method, fill_holes=fill_holes, min_size=min_voxels * voxel)
    expected, threshold = generate_mask(frame, **options)
    got, got_threshold = tiled_generate_mask(da.from_array(frame, chunks=chunks), **options)
    assert got_threshold == threshold
    np.testing.assert_array_equal(got.compute(), expected)
    # the scene has what the steps act on: several objects, and objects crossing chunk borders
    labels, n = ndimage.label(expected)
    assert n >= 2
    crossing = [k for k in range(1, n + 1)
                if any(len(np.unique(c // size)) > 1 for c, size in zip(np.nonzero(labels == k), chunks))]
    assert crossing


def test_labels_join_objects_across_chunk_borders():
    inside = np.random.default_rng(4).random((61, 47)) > 0.45  # near percolation: objects span many chunks
    labels, components, n = tiled_label(da.from_array(inside, chunks=(8, 9)))
    objects = components[labels.compute()]
    expected, n_expected = ndimage.label(inside)
    assert n == n_expected
    # the same partition of the voxels: each object of one is exactly one object of the other
    pairs = np.unique(np.stack([objects[inside], expected[inside]], axis=1), axis=0)
    assert len(pairs) == n and len(np.unique(pairs[:, 0])) == n and len(np.unique(pairs[:, 1])) == n


@pytest.mark.parametrize("shift, order", [((0.083, -0.161), 1), ((0.3, 0.2), 3), ((-0.5, 0.04), 0),
                                          ((1.37, -0.9), 5)])
def test_shifts_on_chunks_equal_the_whole_frame_shift(shift, order):
    frame = _textured((90, 77), seed=2)
    spacing = (0.05, 0.07)
    got = tiled_shift(da.from_array(frame, chunks=(16, 24)), shift, spacing=spacing, order=order).compute()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, apply_shift(frame, shift, spacing=spacing, order=order))
    valid = tiled_valid_region(frame.shape, shift, spacing=spacing, chunks=((16,) * 5 + (10,), (24,) * 3 + (5,)))
    np.testing.assert_array_equal(valid.compute(), valid_region(frame.shape, shift, spacing=spacing))


@pytest.fixture
def few_bins(monkeypatch):
    """Tiny histograms and gathers, so that ranks need several narrowing passes."""
    monkeypatch.setattr(tiled_ranks, "BINS", 8)
    monkeypatch.setattr(tiled_ranks, "GATHER_LIMIT", 50)


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.float64])
def test_ranked_values_are_the_partition_of_the_selected_voxels(few_bins, dtype):
    rng = np.random.default_rng(7)
    values = (rng.normal(size=(120, 90)) * 1000).astype(dtype)
    values[values > 800] = 800  # a tie of many voxels: its interval cannot be narrowed
    selection = rng.random(values.shape) > 0.3
    n = int(selection.sum())
    ranks = [0, 3, n // 2 - 1, n // 2, n - 40, n - 1]
    got = ranked_values(da.from_array(values, chunks=(32, 25)), da.from_array(selection, chunks=(32, 25)), ranks)
    np.testing.assert_array_equal(got, np.partition(values[selection].astype(np.float64), ranks)[ranks])
    median = ranked_median(da.from_array(values, chunks=(32, 25)), da.from_array(selection, chunks=(32, 25)))
    assert median == background_value(values, "median", mask=selection)


def test_intensity_floors_on_chunks(few_bins):
    rng = np.random.default_rng(8)
    images = [rng.gamma(2.0, 50.0, size=(70, 66)).astype(np.float32) - shift for shift in (0.0, 20.0)]
    mask = rng.random((70, 66)) > 0.2
    got = tiled_intensity_floors([da.from_array(i, chunks=(16, 16)) for i in images], da.from_array(mask, chunks=16))
    for floor, image in zip(got, images):
        np.testing.assert_allclose(floor, intensity_floor(image, mask), rtol=1e-12)
