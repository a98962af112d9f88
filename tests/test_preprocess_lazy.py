"""``cccdask.preprocess_lazy`` on Dask frames equals ``preprocess_frame`` on the loaded frames (issue 17).

Small 2D and 3D frames cut into many chunks, with a hollow object (its hole) centred
on a chunk corner, a small object and a larger one over chunk corners: every step
(backgrounds, chromatic shift, mask generation) must give the whole-frame images,
mask, levels and threshold exactly. Dask's synchronous scheduler, and once a real
``distributed`` cluster that the default ``compute`` finds by itself.
"""

import dask
import dask.array as da
import numpy as np
import pytest
from scipy import ndimage

import cccdask
from cccdask.kernels.preprocess import generate_mask
from cccdask.preprocess import Preprocessing, preprocess_frame

SCENES = {  # ndim: shape, chunks, spacing; centre of the shell, corners of the speck and the block: chunk corners
    2: ((60, 70), (13, 16), (0.05, 0.07), (26, 32), (52, 16), (39, 48)),
    3: ((12, 32, 44), (5, 8, 9), (0.2, 0.05, 0.05), (5, 16, 18), (5, 8, 36), (5, 24, 36)),
}


def _scene(ndim, dtype=np.uint16, seed=0):
    """Background ~200 counts; a shell (hollow), a speck (2 voxels per axis), a block (4) over chunk corners."""
    shape, _, _, centre, speck, block = SCENES[ndim]
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=float)
    scale = [2.5, 1.0, 1.0][-ndim:]  # z voxels are deeper: the shell closes within the frame
    distance = np.sqrt(sum(((g - c + 0.5) * s) ** 2 for g, c, s in zip(grid, centre, scale)))
    inside = (distance >= 5) & (distance <= 9)
    inside[tuple(slice(c - 1, c + 1) for c in speck)] = True
    inside[tuple(slice(c - 2, c + 2) for c in block)] = True
    frame = rng.poisson(200, size=shape) + inside * rng.poisson(2500, size=shape)
    return frame.astype(dtype)


def _run_both(ndim, settings, *, dtype=np.uint16, mask=None, regions=(None, None), compute=None, chunks=None):
    shape, scene_chunks, spacing = SCENES[ndim][:3]
    chunks = chunks or scene_chunks
    image1, image2 = _scene(ndim, dtype, seed=1), _scene(ndim, dtype, seed=2)
    settings = Preprocessing.model_validate(settings)
    expected = preprocess_frame(image1, image2, mask, settings, spacing, background_regions=regions)

    def lazy(array):
        return None if array is None else da.from_array(array, chunks=chunks)

    got = cccdask.preprocess_lazy(lazy(image1), lazy(image2), lazy(mask), settings=settings, spacing=spacing,
                                  background_regions=tuple(lazy(r) for r in regions), compute=compute)
    return expected, got


def _assert_equal(expected, got):
    for name, want, have in zip(("image1", "image2", "mask"), expected[:3], got[:3]):
        if want is None:
            assert have is None, name
            continue
        assert isinstance(have, da.Array), name
        have = have.compute()
        assert have.dtype == want.dtype, name
        np.testing.assert_array_equal(have, want, err_msg=name)
    assert got[3].keys() == expected[3].keys()
    for key in expected[3]:  # levels and thresholds bit for bit (NaN: no mask generated)
        np.testing.assert_array_equal(np.asarray(got[3][key], dtype=float), np.asarray(expected[3][key], dtype=float),
                                      err_msg=key)


@pytest.fixture
def synchronous():
    with dask.config.set(scheduler="synchronous"):
        yield


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_backgrounds_equal_the_whole_frame_ones(synchronous, ndim, dtype):
    shape, _, spacing = SCENES[ndim][:3]
    region = np.zeros(shape, dtype=np.uint8)
    region[(slice(None),) * (ndim - 1) + (slice(-6, None),)] = 1  # the last 6 columns
    box = [[n // 2 * s, n * s] for n, s in zip(shape, spacing)]  # the second half of each axis
    settings = {"background": {"image1": {"method": "median"},
                               "image2": {"method": "region_mean", "box": box, "region_mask": "region.tif"}}}
    expected, got = _run_both(ndim, settings, dtype=dtype, regions=(None, region))
    _assert_equal(expected, got)
    assert expected[3]["background1"] > 150 and expected[3]["background2"] > 150  # levels were subtracted
    constant = {"background": {"image1": {"method": "constant", "value": 12.5}, "image2": {"method": "median"}}}
    _assert_equal(*_run_both(ndim, constant, dtype=dtype))


@pytest.mark.parametrize("ndim, order", [(2, 1), (2, 3), (3, 1)])
def test_chromatic_shift_equals_the_whole_frame_one(synchronous, ndim, order):
    spacing = SCENES[ndim][2]
    shift = [0.083, -0.161, 0.12][-ndim:]  # sub-pixel and over a pixel
    shape = SCENES[ndim][0]
    mask = np.indices(shape).sum(axis=0) % 7 != 0  # a mask input, restricted to the voxels with data
    settings = {"chromatic_shift": {"shift": shift, "order": order},
                "background": {"image2": {"method": "median"}}}  # over the voxels with data only
    expected, got = _run_both(ndim, settings, mask=mask)
    _assert_equal(expected, got)
    assert not expected[2][mask].all()  # the voxels shifted in from outside left the mask


@pytest.mark.parametrize("ndim, sigma", [(2, 0.05), (3, 0.0)])
def test_generated_masks_equal_the_whole_frame_ones(synchronous, ndim, sigma):
    shape, chunks, spacing, centre = SCENES[ndim][:4]
    voxel = float(np.prod(spacing))
    mask = np.ones(shape, dtype=bool)  # a mask input: the generated mask is restricted to it
    cut = tuple(centre[:-1]) + (centre[-1] + 7,)  # a voxel of the shell
    mask[cut] = False
    generation = {"source": "image2", "sigma": sigma, "method": "otsu", "fill_holes": True,
                  "min_size": 10 * voxel}
    settings = {"chromatic_shift": {"shift": [0.02] * ndim}, "mask": generation,
                "background": {"image1": {"method": "median"}}}
    expected, got = _run_both(ndim, settings, mask=mask)
    _assert_equal(expected, got)
    assert not expected[2][cut] and expected[2][tuple(c - 1 for c in cut)]
    # the scene has what each step acts on, across chunk borders
    source = expected[1] + np.float32(0)
    options = dict(spacing=spacing, sigma=sigma, method="otsu")
    unfilled = generate_mask(source, fill_holes=False, **options)[0]
    all_sizes = generate_mask(source, fill_holes=True, **options)[0]
    hole = all_sizes & ~unfilled
    removed = all_sizes & ~generate_mask(source, fill_holes=True, min_size=10 * voxel, **options)[0]

    def crosses_borders(region):
        return all(len(np.unique(np.nonzero(region)[axis] // chunks[axis])) > 1 for axis in range(ndim))

    assert hole.any() and crosses_borders(hole)
    assert removed.any() and crosses_borders(removed)
    labels, n = ndimage.label(expected[2])
    assert n >= 2 and all(crosses_borders(labels == k) for k in range(1, n + 1))


def test_mask_of_the_mask_input_and_a_shared_mask(synchronous):
    """``source: mask`` segments the mask input; ``from_frame`` uses the mask given as the shared one."""
    stain = _scene(2, seed=4)
    settings = {"mask": {"source": "mask", "method": "yen", "min_size": 0.0}}
    expected, got = _run_both(2, settings, mask=stain)
    _assert_equal(expected, got)
    shared = {"mask": {"from_frame": 0}, "background": {"image2": {"method": "median"}}}
    _assert_equal(*_run_both(2, shared, mask=expected[2]))


@pytest.fixture
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp://", host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", memory_limit=0) as cluster, Client(cluster) as client:
        yield client


def test_whole_frame_numbers_are_computed_on_the_active_cluster(client):
    ndim = 2
    settings = {"chromatic_shift": {"shift": [0.02, -0.03], "order": 1},
                "mask": {"source": "image1", "sigma": 0.05, "method": "isodata", "min_size": 0.035},
                "background": {"image1": {"method": "median"}, "image2": {"method": "median"}}}
    scheduler = client.cluster.scheduler
    assert scheduler.transition_counter == 0
    # compute: the default, Dask's current scheduler; 3 x 3 chunks (each task costs ms on a cluster)
    expected, got = _run_both(ndim, settings, chunks=(26, 32))
    assert scheduler.transition_counter > 0  # the threshold, labels and levels ran on the cluster
    _assert_equal(expected, got)


def test_a_threshold_not_computed_from_a_histogram_is_refused_with_the_fix():
    frame = da.from_array(_scene(2), chunks=(13, 16))
    with pytest.raises(ValueError) as refused:
        cccdask.preprocess_lazy(frame, frame, settings={"mask": {"method": "li"}}, spacing=(0.05, 0.07))
    message = str(refused.value)
    for part in ("preprocess.mask.method 'li'", "['otsu', 'isodata', 'yen']", "preprocess_frame"):
        assert part in message
