"""The tiled path of a run equals the whole-frame run, on a real cluster (issue 17).

A frame that fits is run twice: whole, and tile by tile (forced by
``execution.tile_shape`` or by a memory budget under the frame's estimate). Every
output must agree: correlations to float32 rounding, coefficients exactly (to float64
summation order), written into the same store layout.
"""

import re

import numpy as np
import pytest
import tifffile
import xarray as xr
import yaml
from dask.utils import format_bytes
from typer.testing import CliRunner

from cccdask.cli import app
from cccdask.config import config_from_dict
from cccdask.io.store import FRAME_OK, write_ome_zarr
from cccdask.kernels.tiled import tile_memory_bytes
from cccdask.pipeline import FrameTooLargeError, run
from cccdask.synthetic import paired_spots_series

SPACING = 0.05
MAX_DISTANCE = 0.3  # K = 6 voxels of halo per axis
CORRELATIONS = ("profile_original", "profile_subtracted", "profile_fit", "mean", "sigma", "height", "confidence",
                "r_squared", "contribution1", "contribution2", "ccf_original", "ccf_subtracted", "ccf_gauss", "far_field_ratio")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiled_run")
    image1, image2, mask, _ = paired_spots_series(2, distances=[0.15, 0.25], shape=(72, 60), spacing=(SPACING,) * 2,
                                                  psf_sigma=0.08, n_pairs=40)
    write_ome_zarr(folder / "cells.ome.zarr", np.stack([image1, image2], axis=1), "tcyx", (SPACING, SPACING))
    write_ome_zarr(folder / "mask.ome.zarr", mask.astype(np.uint8), "tyx", (SPACING, SPACING))
    return folder


def _config(folder, address, store, execution=None, ccc=None, coefficients=None):
    data = {
        "input": {"image1": {"path": "cells.ome.zarr", "channel": 0}, "image2": {"path": "cells.ome.zarr",
                                                                                 "channel": 1},
                  "mask": "mask.ome.zarr"},
        "ccc": {"max_distance": MAX_DISTANCE, "contributions": True, "intermediates": True, **(ccc or {})},
        "coefficients": {"threshold": "costes", "maps": True, "van_steensel_shifts": 4, **(coefficients or {})},
        "execution": execution or {},
        "output": {"store": str(folder / store), "reports": False},
        "cluster": {"kind": "address", "address": address},
    }
    return data


@pytest.fixture(scope="module")
def whole_run(scene, cluster_address):
    return xr.open_zarr(run(config_from_dict(_config(scene, cluster_address, "whole.zarr"), base_dir=scene)))


def _assert_tiled_equals_whole(tiled: xr.Dataset, whole: xr.Dataset, fitted=True):
    assert set(tiled.data_vars) == set(whole.data_vars)
    np.testing.assert_array_equal(tiled["frame_status"].values, whole["frame_status"].values)
    assert not fitted or FRAME_OK in list(whole["frame_status"].values)
    for name in whole.data_vars:
        expected, got = whole[name].values, tiled[name].values
        assert got.shape == expected.shape and got.dtype == expected.dtype, name
        if name in CORRELATIONS:  # float32 FFTs over different extents: float32 rounding
            # a fitted mean of ~0 is float32 noise: its scale is the voxel size, not its value
            scale = max(np.nanmax(np.abs(expected)), SPACING if name == "mean" else 0.0)
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale, err_msg=name)
        elif expected.dtype.kind == "f":  # coefficients: float64 sums of the same voxels, another order
            np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12, err_msg=name)
        else:
            np.testing.assert_array_equal(got, expected, err_msg=name)


def test_tiles_asked_for_by_tile_shape_give_the_whole_frame_results(scene, cluster_address, whole_run):
    config = config_from_dict(_config(scene, cluster_address, "tiled.zarr", execution={"tile_shape": [24, 20]}),
                              base_dir=scene)
    logged = []
    tiled = xr.open_zarr(run(config, log=logged.append))
    assert any("tile by tile (tiles of [24, 20] voxels)" in line for line in logged)
    # the contribution images were written chunk by chunk into the store's per-frame chunks
    assert tiled["contribution1"].encoding["chunks"][0] == 1
    _assert_tiled_equals_whole(tiled, whole_run)
    # the whole run is not trivially equal to itself: its contributions are not empty
    assert np.abs(whole_run["contribution1"].values).max() > 0


def test_a_small_memory_budget_tiles_every_frame(scene, cluster_address, whole_run):
    config = config_from_dict(_config(scene, cluster_address, "budget.zarr", execution={"memory_budget": "300kiB"}),
                              base_dir=scene)
    logged = []
    tiled = xr.open_zarr(run(config, log=logged.append))
    # whole: about 0.96 MiB per task; tiles: the largest power-of-two tiles within half the budget
    assert any("(tiles of [32, 32] voxels): frames do not fit one task" in line for line in logged), logged
    _assert_tiled_equals_whole(tiled, whole_run)


runner = CliRunner()


def _validate(folder, name, data):
    path = folder / f"{name}.yaml"
    data = dict(data, cluster={"kind": "local", "local": {"n_workers": 2, "memory_limit": "512MiB"}})
    path.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["validate", str(path)])
    return result.exit_code, re.sub(r"\s+", " ", result.output)


def test_validate_says_whether_frames_are_tiled_and_the_memory_of_a_task(scene):
    code, text = _validate(scene, "forced", _config(scene, None, "v1.zarr", execution={"tile_shape": [24, 20]}))
    assert code == 0, text
    # one tile task: the tile grown by the halo K = 6 on each side
    expected = format_bytes(tile_memory_bytes((24, 20), (6, 6), "float32"))
    assert f"Every frame is tiled (execution.tile_shape): tiles of [24, 20] voxels, about {expected} per tile" \
        in text
    assert "budget 512.00 MiB per worker thread" in text
    # float32 frames of 72 x 60 voxels: their merged value pairs, 8 bytes per voxel, in one task
    assert (f"keep the frame's distinct (image1, image2) value pairs in one task: up to {format_bytes(8 * 72 * 60)} "
            f"(8 bytes per distinct pair") in text
    code, text = _validate(scene, "whole", _config(scene, None, "v2.zarr"))
    assert code == 0 and "Every frame is analysed whole" in text and "per task (budget 512.00 MiB" in text
    code, text = _validate(scene, "budget", _config(scene, None, "v3.zarr", execution={"memory_budget": "300kiB"}))
    assert code == 0 and "Every frame is tiled (over the budget)" in text, text


def test_tile_shapes_that_cannot_work_are_refused_before_any_work(scene, cluster_address):
    axes = _config(scene, cluster_address, "axes.zarr", execution={"tile_shape": [8, 8, 8]})
    with pytest.raises(ValueError, match=r"tile_shape \[8, 8, 8\] has 3 edges but the frames have 2 spatial axes"):
        run(config_from_dict(axes, base_dir=scene))
    unbounded = _config(scene, cluster_address, "unbounded.zarr", execution={"tile_shape": [8, 8]},
                        ccc={"max_distance": None})
    with pytest.raises(FrameTooLargeError, match="execution.tile_shape asks for tiles, but the tiled path needs "
                                                 "ccc.max_distance"):
        run(config_from_dict(unbounded, base_dir=scene))
    with pytest.raises(ValueError, match="tile_shape must give a positive tile edge"):
        config_from_dict(_config(scene, cluster_address, "zero.zarr", execution={"tile_shape": [0, 8]}),
                         base_dir=scene)
    assert not any((scene / name).exists() for name in ("axes.zarr", "unbounded.zarr"))


@pytest.fixture(scope="module")
def integer_scene(scene):
    image1, image2, mask, _ = paired_spots_series(2, distances=[0.15, 0.25], shape=(72, 60), spacing=(SPACING,) * 2,
                                                  psf_sigma=0.08, n_pairs=40, seed=5)
    rng = np.random.default_rng(3)
    counts = [(rng.poisson(100 + 2000 * image / image.max())).astype(np.uint16) for image in (image1, image2)]
    write_ome_zarr(scene / "counts.ome.zarr", np.stack(counts, axis=1), "tcyx", (SPACING, SPACING))
    return counts


@pytest.mark.parametrize("background1, background2", [
    ({"method": "median"}, {"method": "region_mean", "box": [[0.0, 1.3], [0.5, 2.9]]}),
    ({"method": "constant", "value": 97.5}, {"method": "median"}),
])
def test_backgrounds_on_tiles_equal_the_whole_frame_ones(scene, integer_scene, cluster_address, background1,
                                                         background2):
    tag = f"{background1['method']}_{background2['method']}"
    runs = {}
    for kind, execution in (("whole", {}), ("tiled", {"tile_shape": [16, 24]})):
        data = _config(scene, cluster_address, f"bg_{tag}_{kind}.zarr", execution=execution)
        data["input"]["image1"]["path"] = data["input"]["image2"]["path"] = "counts.ome.zarr"
        data["preprocess"] = {"background": {"image1": background1, "image2": background2}}
        runs[kind] = xr.open_zarr(run(config_from_dict(data, base_dir=scene)))
    whole, tiled = runs["whole"], runs["tiled"]
    # the levels are exact: the median of the integer counts, the float64 mean of the box
    for t in range(2):
        for channel, background in ((1, background1), (2, background2)):
            frame = integer_scene[channel - 1][t]
            if background["method"] == "median":
                expected = np.median(frame)
            elif background["method"] == "constant":
                expected = background["value"]
            else:  # voxel centres in [0, 1.3) x [0.5, 2.9) um: rows 0..25, columns 10..57
                expected = frame[0:26, 10:58].mean(dtype=np.float64)
            assert tiled[f"background{channel}"].values[t] == expected
    _assert_tiled_equals_whole(tiled, whole)


def _scene_run(scene, address, store, execution, preprocess, image="cells.ome.zarr", mask="mask.ome.zarr"):
    data = _config(scene, address, store, execution=execution)
    data["input"]["image1"]["path"] = data["input"]["image2"]["path"] = image
    data["input"]["mask"] = mask
    data["preprocess"] = preprocess
    return xr.open_zarr(run(config_from_dict(data, base_dir=scene)))


STAIN_SHAPE = (72, 60)  # tiles of [24, 30]: borders at y = 24, 48 and x = 30
STAIN_TILES = [24, 30]
SHIFT = (0.083, -0.161)


def _disk(centre, radius):
    y, x = np.ogrid[:STAIN_SHAPE[0], :STAIN_SHAPE[1]]
    return (y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius ** 2


@pytest.fixture(scope="module")
def stain(scene):
    """One frame of two channels to segment: objects, holes and small objects crossing the tile borders.

    Written as a two-channel image (channel 2 displaced by -SHIFT, as a chromatic shift
    would) and as a mask input (channel 1).
    """
    from cccdask.kernels.preprocess import apply_shift

    cells = np.zeros(STAIN_SHAPE, dtype=bool)
    cells |= _disk((32, 24), 12) & ~_disk((32, 24), 6)  # a ring over 4 tiles: a hole
    cells |= _disk((68, 50), 10) & ~_disk((68, 50), 5)  # cut by the frame: no hole
    cells[46:50, 5:9] = True  # 16 voxels over y = 48: kept
    cells[47:50, 29:32] = True  # 9 voxels over a tile corner: too small
    cells[4:6, 2:58] = True  # a bar through three tiles
    rng = np.random.default_rng(11)
    channel1 = (100 + 900 * cells + rng.poisson(20, STAIN_SHAPE)).astype(np.uint16)
    displaced = apply_shift(channel1, [-s for s in SHIFT], spacing=(SPACING, SPACING), order=1)
    channel2 = (displaced + rng.poisson(20, STAIN_SHAPE)).astype(np.uint16)
    write_ome_zarr(scene / "stain_pair.ome.zarr", np.stack([channel1, channel2])[None], "tcyx", (SPACING, SPACING))
    write_ome_zarr(scene / "stain.ome.zarr", channel1, "yx", (SPACING, SPACING))
    return channel1, channel2


def _stain_run(scene, address, store, execution, preprocess, mask=None):
    data = _config(scene, address, store, execution=execution)
    data["input"]["image1"]["path"] = data["input"]["image2"]["path"] = "stain_pair.ome.zarr"
    data["input"]["mask"] = mask
    data["preprocess"] = preprocess
    return xr.open_zarr(run(config_from_dict(data, base_dir=scene)))


def test_chromatic_shift_mask_generation_and_float_median_on_tiles(scene, stain, cluster_address):
    """Channel 2 shifted (linear; all orders: tests/test_preprocess_tiled.py), the mask generated from it,
    a median of the float32 shifted channel."""
    from cccdask.kernels.preprocess import apply_shift, generate_mask, valid_region

    preprocess = {"chromatic_shift": {"shift": list(SHIFT), "order": 1},
                  "mask": {"source": "image2", "sigma": SPACING, "method": "otsu", "min_size": 12 * SPACING**2},
                  "background": {"image1": {"method": "region_mean", "box": [[0.0, 1.3], [0.5, 2.9]]},
                                 "image2": {"method": "median"}}}
    whole = _stain_run(scene, cluster_address, "shift_whole.zarr", {}, preprocess)
    tiled = _stain_run(scene, cluster_address, "shift_tiled.zarr", {"tile_shape": STAIN_TILES}, preprocess)
    # independently: the whole-frame kernels on the recorded channel 2
    shifted = apply_shift(stain[1], SHIFT, spacing=(SPACING, SPACING), order=1)
    valid = valid_region(STAIN_SHAPE, SHIFT, spacing=(SPACING, SPACING))
    expected, threshold = generate_mask(shifted, spacing=(SPACING, SPACING), sigma=SPACING, method="otsu",
                                        min_size=12 * SPACING**2)
    np.testing.assert_array_equal(tiled["mask_used"].values[0] != 0, expected & valid)
    assert tiled["mask_threshold"].values[0] == threshold
    assert tiled["background2"].values[0] == np.median(shifted[valid])  # exact, of float32 values
    np.testing.assert_array_equal(tiled["chromatic_shift"].values[0], SHIFT)
    # the scene tests what it should: the hole over 4 tiles filled, the cut ring's not, the small object gone
    assert expected[32, 24] and not expected[68, 50]
    assert not expected[48, 30] and expected[47, 6] and expected[5, 30]
    _assert_tiled_equals_whole(tiled, whole)


def test_one_mask_generated_for_all_frames_on_tiles(scene, stain, cluster_address):
    """The mask input segmented unblurred by Yen: many noise specks, removed across the tile borders."""
    from scipy import ndimage

    from cccdask.kernels.preprocess import generate_mask

    generation = {"source": "mask", "sigma": 0.0, "method": "yen", "min_size": 30 * SPACING**2, "from_frame": 0}
    whole = _stain_run(scene, cluster_address, "shared_whole.zarr", {}, {"mask": generation}, mask="stain.ome.zarr")
    tiled = _stain_run(scene, cluster_address, "shared_tiled.zarr", {"tile_shape": STAIN_TILES}, {"mask": generation},
                       mask="stain.ome.zarr")
    expected, _ = generate_mask(stain[0], spacing=(SPACING, SPACING), sigma=0.0, method="yen",
                                min_size=30 * SPACING**2)
    np.testing.assert_array_equal(tiled["generated_mask"].values != 0, expected)
    unfiltered, _ = generate_mask(stain[0], spacing=(SPACING, SPACING), sigma=0.0, method="yen", fill_holes=False)
    # specks gone, and the squares under 30 voxels: the two rings and the bar are left
    assert ndimage.label(unfiltered)[1] > 100 and ndimage.label(expected)[1] == 3
    # under the rings and the bar alone the fit fails, alike on tiles (the status is compared)
    _assert_tiled_equals_whole(tiled, whole, fitted=False)


def test_thresholds_without_a_histogram_are_refused_on_tiles(scene, stain, cluster_address):
    data = _config(scene, cluster_address, "li.zarr", execution={"tile_shape": [16, 16]})
    data["input"]["mask"] = "stain.ome.zarr"
    data["preprocess"] = {"mask": {"source": "mask", "method": "li"}}
    with pytest.raises(FrameTooLargeError, match=r"preprocess.mask.method 'li' \(on tiles: one of \['otsu', "
                                                 r"'isodata', 'yen'\]"):
        run(config_from_dict(data, base_dir=scene))
    assert not (scene / "li.zarr").exists()
