"""Preparation steps: chromatic shift, mask generation, background; their config model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml
from pydantic import ValidationError
from scipy import ndimage
from skimage import filters

import cccdask
from cccdask.frames import InvalidFrameError
from cccdask.kernels.preprocess import (
    apply_shift,
    background_value,
    box_to_slices,
    estimate_shift,
    generate_mask,
    subtract_background,
    valid_region,
)
from cccdask.preprocess import Preprocessing, generate_shared_mask, preprocess_frame
from cccdask.synthetic import paired_spots

SPACING_2D = (0.05, 0.05)
SPACING_3D = (0.15, 0.05, 0.05)


def beads(shape, spacing, seed):
    """The same beads in both channels (independent noise): distance 0 pairs, no decoys."""
    return paired_spots(shape, spacing=spacing, distance=0.0, n_pairs=40, n_decoys=0, noise=0.02, seed=seed)


# --------------------------------------------------------------------------- chromatic shift


@pytest.mark.parametrize(
    "shape, spacing, displacement",
    [
        ((96, 96), SPACING_2D, (0.0173, -0.0331)),  # (0.35, -0.66) pixel
        ((96, 96), SPACING_2D, (0.1137, 0.0712)),  # (2.27, 1.42) pixel
        ((16, 64, 64), SPACING_3D, (0.071, 0.0132, -0.0217)),  # (0.47, 0.26, -0.43) pixel
    ],
)
def test_estimated_shift_recovers_a_known_subpixel_shift(shape, spacing, displacement):
    scene = beads(shape, spacing, seed=3)
    displaced = apply_shift(scene.image2, displacement, spacing=spacing, order=3)
    shift = estimate_shift(scene.image1, displaced, spacing=spacing, upsample_factor=100)
    # the correction is the opposite of the displacement; compare in pixels per axis
    error_pixels = np.abs(shift + np.asarray(displacement)) / np.asarray(spacing)
    assert np.all(error_pixels < 0.1), error_pixels


@pytest.mark.parametrize("shift_pixels", [(3, -2), (-1, 4), (0, 2)])
def test_apply_shift_by_whole_pixels_moves_and_zero_fills(shift_pixels):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 1000, size=(9, 11)).astype(np.uint16)
    spacing = (0.5, 0.25)
    shift = np.asarray(shift_pixels) * spacing
    expected = np.zeros(frame.shape, np.float32)
    (dy, dx), (ny, nx) = shift_pixels, frame.shape
    expected[max(dy, 0):ny + min(dy, 0), max(dx, 0):nx + min(dx, 0)] = \
        frame[max(-dy, 0):ny - max(dy, 0), max(-dx, 0):nx - max(dx, 0)]
    for order in (1, 3):
        shifted = apply_shift(frame, shift, spacing=spacing, order=order)
        assert shifted.dtype == np.float32
        np.testing.assert_allclose(shifted, expected, atol=1e-3)
    np.testing.assert_array_equal(valid_region(frame.shape, shift, spacing=spacing), expected > 0)


@pytest.mark.parametrize("shift", [(0.3, -1.7), (-0.5, 0.25), (2.6, 0.0)])
def test_valid_region_is_where_a_shifted_frame_of_ones_has_data(shift):
    ones = np.ones((12, 10))
    for order in (1, 3):
        shifted = ndimage.shift(ones, shift, order=order, mode="constant", cval=0.0)
        np.testing.assert_array_equal(valid_region(ones.shape, shift, spacing=(1.0, 1.0)), shifted > 0.5)


def test_shift_correction_brings_the_ccc_mean_distance_back_to_the_truth():
    shape, spacing = (128, 128), SPACING_2D
    scene = paired_spots(shape, spacing=spacing, distance=0.3, n_pairs=150, n_decoys=20, seed=1)
    displacement = np.array([0.3137, -0.2921])  # (6.27, -5.84) pixel
    recorded2 = apply_shift(scene.image2, displacement, spacing=spacing, order=3)
    bead_scene = beads(shape, spacing, seed=101)
    bead2 = apply_shift(bead_scene.image2, displacement, spacing=spacing, order=3)

    settings = Preprocessing.model_validate({"chromatic_shift": {"reference": {"frame": 0}}})
    settings = settings.with_estimated_shift(bead_scene.image1, bead2, spacing)
    estimated = np.asarray(settings.chromatic_shift.shift)
    assert np.all(np.abs(estimated + displacement) / spacing < 0.1)

    mask_recorded = scene.mask & valid_region(shape, displacement, spacing=spacing)
    image1, corrected2, mask, record = preprocess_frame(
        scene.image1, recorded2, mask_recorded, settings, spacing
    )
    np.testing.assert_allclose(record["shift"], estimated)

    def mean_distance(image2, mask):
        return float(cccdask.ccc(image1, image2, mask, spacing=spacing)["mean"])

    truth = mean_distance(scene.image2, mask)  # same mask, no shift ever applied
    uncorrected = mean_distance(recorded2, mask)
    corrected = mean_distance(corrected2, mask)
    assert abs(truth - scene.expected_peak) < 0.05  # the scene is measurable at all
    assert not abs(uncorrected - truth) < 0.05  # the shift spoils it (NaN counts as spoilt)
    assert abs(corrected - truth) < 0.1 * spacing[0]  # within 0.1 pixel of the unshifted answer
    assert abs(corrected - scene.expected_peak) < 0.05


def test_preprocess_frame_excludes_the_shifted_border_from_the_mask():
    scene = paired_spots((40, 48), spacing=SPACING_2D, distance=0.3, n_pairs=10, seed=2)
    shift = (0.083, -0.161)
    settings = Preprocessing.model_validate({"chromatic_shift": {"shift": list(shift), "order": 3}})
    image1, image2, mask, _ = preprocess_frame(scene.image1, scene.image2, None, settings, SPACING_2D)
    valid = valid_region(scene.image1.shape, shift, spacing=SPACING_2D)
    np.testing.assert_array_equal(mask, valid)
    assert 0 < valid.sum() < valid.size
    np.testing.assert_array_equal(image1, scene.image1)
    np.testing.assert_allclose(
        image2, ndimage.shift(scene.image2, np.divide(shift, SPACING_2D), order=3, mode="constant"), atol=1e-6
    )
    _, _, mask, _ = preprocess_frame(scene.image1, scene.image2, scene.mask, settings, SPACING_2D)
    np.testing.assert_array_equal(mask, valid & scene.mask)


def test_shift_of_the_wrong_length_or_not_yet_estimated_is_refused():
    frame = np.ones((8, 8), np.float32)
    three = Preprocessing.model_validate({"chromatic_shift": {"shift": [0.1, 0.2, 0.3]}})
    with pytest.raises(ValueError, match="3 values but the frames are 2D"):
        preprocess_frame(frame, frame, None, three, (1.0, 1.0))
    pending = Preprocessing.model_validate(
        {"chromatic_shift": {"reference": {"image1": "a.tif", "image2": "b.tif"}}}
    )
    with pytest.raises(ValueError, match="with_estimated_shift"):
        preprocess_frame(frame, frame, None, pending, (1.0, 1.0))


# --------------------------------------------------------------------------- background


def test_background_values_match_hand_computation():
    rng = np.random.default_rng(7)
    frame = rng.normal(100.0, 10.0, size=(6, 20, 24)).astype(np.float32)
    spacing = (0.3, 0.1, 0.1)
    assert background_value(frame, "none") == 0.0
    assert background_value(frame, "constant", value=12.5) == 12.5
    assert background_value(frame, "median") == pytest.approx(float(np.median(frame)), rel=1e-7)

    bounds = [(0.3, 1.2), (0.42, 1.0), (1.5, 2.31)]
    # brute force: the voxels whose centres (i + 0.5) * s lie in [start, stop)
    centres = [(np.arange(n) + 0.5) * s for n, s in zip(frame.shape, spacing)]
    inside = [(c >= a) & (c < b) for c, (a, b) in zip(centres, bounds)]
    selected = frame[np.ix_(*inside)]
    assert selected.size == 3 * 6 * 8
    box = box_to_slices(bounds, spacing, frame.shape)
    assert background_value(frame, "region_mean", region=box) == pytest.approx(
        float(selected.mean()), rel=1e-6
    )

    region = rng.random(frame.shape) < 0.1
    assert background_value(frame, "region_mean", mask=region) == pytest.approx(
        float(frame[region].astype(np.float64).mean()), rel=1e-9
    )
    both = np.zeros(frame.shape, bool)
    both[box] = True
    both &= region
    assert background_value(frame, "region_mean", region=box, mask=region) == pytest.approx(
        float(frame[both].astype(np.float64).mean()), rel=1e-9
    )


def test_background_region_outside_the_frame_is_refused():
    frame = np.zeros((10, 10))
    box = box_to_slices([(20.0, 30.0), (0.0, 1.0)], (1.0, 1.0), frame.shape)
    with pytest.raises(ValueError, match="selects no voxel"):
        background_value(frame, "region_mean", region=box)


def test_subtract_background_is_float32_and_keeps_negatives():
    frame = np.array([[3, 10], [250, 0]], dtype=np.uint8)
    out = subtract_background(frame, 10.5)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, frame.astype(np.float32) - np.float32(10.5))
    assert frame[0, 0] == 3  # input untouched


def test_preprocess_frame_records_and_subtracts_the_backgrounds():
    rng = np.random.default_rng(11)
    image1 = rng.poisson(50, size=(30, 40)).astype(np.uint16)
    image2 = rng.poisson(80, size=(30, 40)).astype(np.uint16)
    spacing = (0.2, 0.2)
    region2 = np.zeros(image2.shape, bool)
    region2[:5, :7] = True
    shift = (0.1, -0.3)  # (0.5, -1.5) pixel
    settings = Preprocessing.model_validate({
        "chromatic_shift": {"shift": list(shift)},
        "background": {
            "image1": {"method": "region_mean", "box": [[0.0, 1.0], [2.0, 4.0]]},
            "image2": {"method": "median"},
        },
    })
    out1, out2, mask, record = preprocess_frame(image1, image2, None, settings, spacing)
    background1 = float(image1[0:5, 10:20].mean())  # centres (i + 0.5) 0.2 in [0, 1) x [2, 4)
    shifted2 = ndimage.shift(image2.astype(np.float32), np.divide(shift, spacing), order=1, mode="constant")
    valid = valid_region(image2.shape, shift, spacing=spacing)
    background2 = float(np.median(shifted2[valid]))  # the zero-filled border is not background
    assert record["background1"] == pytest.approx(background1, rel=1e-9)
    assert record["background2"] == pytest.approx(background2, rel=1e-6)
    assert math.isnan(record["mask_threshold"])
    np.testing.assert_allclose(out1, image1.astype(np.float32) - np.float32(background1), rtol=1e-6)
    np.testing.assert_allclose(out2, shifted2 - np.float32(background2), rtol=1e-5, atol=1e-3)
    assert out1.dtype == out2.dtype == np.float32

    by_region = Preprocessing.model_validate({
        "chromatic_shift": {"shift": list(shift)},
        "background": {"image2": {"method": "region_mean", "region_mask": "bg.tif"}},
    })
    with pytest.raises(ValueError, match="background_regions"):
        preprocess_frame(image1, image2, None, by_region, spacing)
    _, _, _, record = preprocess_frame(
        image1, image2, None, by_region, spacing, background_regions=(None, region2)
    )
    assert record["background2"] == pytest.approx(float(shifted2[region2 & valid].mean()), rel=1e-6)


# --------------------------------------------------------------------------- masks


def skimage_mask(frame, spacing, sigma, method, fill_holes, min_size):
    """The same recipe, written out with scikit-image and SciPy calls."""
    blurred = filters.gaussian(frame, sigma=tuple(sigma / np.asarray(spacing)), preserve_range=True)
    threshold = {"otsu": filters.threshold_otsu, "li": filters.threshold_li,
                 "triangle": filters.threshold_triangle, "isodata": filters.threshold_isodata,
                 "yen": filters.threshold_yen}[method](blurred)
    mask = blurred > threshold
    if fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    # keep objects of at least min_size physical volume
    labels, n = ndimage.label(mask)
    volumes = np.bincount(labels.ravel())[1:] * np.prod(spacing)
    keep = np.concatenate([[False], volumes >= min_size - 1e-12])
    return keep[labels], threshold


@pytest.mark.parametrize("method", ["otsu", "li", "triangle", "isodata", "yen"])
@pytest.mark.parametrize("shape, spacing", [((96, 80), (0.1, 0.1)), ((12, 48, 40), (0.3, 0.1, 0.1))])
def test_generated_mask_equals_scikit_image_called_directly(method, shape, spacing):
    scene = paired_spots(shape, spacing=spacing, distance=0.4, psf_sigma=0.2, n_pairs=25, n_decoys=5, seed=4)
    sigma, min_size = 0.15, 5 * float(np.prod(spacing))  # min_size: 5 voxels
    mask, threshold = generate_mask(scene.image1, spacing=spacing, sigma=sigma, method=method,
                                    fill_holes=True, min_size=min_size)
    expected, expected_threshold = skimage_mask(scene.image1, spacing, sigma, method, True, min_size)
    assert threshold == pytest.approx(expected_threshold, rel=1e-6)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, expected)
    assert 0 < mask.sum() < mask.size


def test_generated_mask_fills_holes_and_drops_small_objects_by_physical_size():
    spacing = (0.5, 0.25)  # voxel area 0.125
    yy, xx = np.indices((60, 80)) * np.array(spacing)[:, None, None]
    radius = np.hypot(yy - 15.0, xx - 10.0)
    frame = np.where(radius < 8.0, 100.0, 5.0)
    frame[radius < 3.0] = 5.0  # a hole
    frame[50:52, 70:74] = 100.0  # a speck of 8 voxels = area 1.0
    disk = radius < 8.0
    speck = np.zeros(frame.shape, bool)
    speck[50:52, 70:74] = True
    options = dict(spacing=spacing, sigma=0.0, method="otsu")
    mask, threshold = generate_mask(frame, **options, fill_holes=True, min_size=1.0)
    assert 5.0 <= threshold < 100.0
    np.testing.assert_array_equal(mask, disk | speck)  # area 1.0 is not below min_size 1.0
    mask, _ = generate_mask(frame, **options, fill_holes=True, min_size=1.01)
    np.testing.assert_array_equal(mask, disk)
    mask, _ = generate_mask(frame, **options, fill_holes=False, min_size=1.01)
    np.testing.assert_array_equal(mask, disk & (radius >= 3.0))


def test_preprocess_frame_generates_a_mask_per_frame_or_once():
    scene = paired_spots((64, 64), spacing=SPACING_2D, distance=0.3, psf_sigma=0.15, n_pairs=15, seed=5)
    other = paired_spots((64, 64), spacing=SPACING_2D, distance=0.3, psf_sigma=0.15, n_pairs=15, seed=6)
    config = {"mask": {"source": "image2", "sigma": 0.1, "method": "li", "min_size": 0.01}}
    settings = Preprocessing.model_validate(config)
    _, _, mask, record = preprocess_frame(scene.image1, scene.image2, None, settings, SPACING_2D)
    expected, threshold = skimage_mask(scene.image2, SPACING_2D, 0.1, "li", True, 0.01)
    np.testing.assert_array_equal(mask, expected)
    assert record["mask_threshold"] == pytest.approx(threshold, rel=1e-6)

    # a mask input restricts a mask generated from a channel
    _, _, restricted, _ = preprocess_frame(scene.image1, scene.image2, scene.mask, settings, SPACING_2D)
    np.testing.assert_array_equal(restricted, expected & scene.mask)

    # source "mask": the mask input is an intensity image to segment
    stain = paired_spots((64, 64), spacing=SPACING_2D, distance=0.3, psf_sigma=0.25, n_pairs=5, seed=8).image1
    settings = Preprocessing.model_validate({"mask": {"source": "mask", "method": "otsu"}})
    _, _, mask, _ = preprocess_frame(scene.image1, scene.image2, stain, settings, SPACING_2D)
    np.testing.assert_array_equal(mask, skimage_mask(stain, SPACING_2D, 0.0, "otsu", True, 0.0)[0])

    # once: generated from one frame, passed as the mask of every frame
    settings = Preprocessing.model_validate({"mask": {**config["mask"], "from_frame": 0}})
    shared, shared_threshold = generate_shared_mask(scene.image1, scene.image2, None, settings, SPACING_2D)
    np.testing.assert_array_equal(shared, expected)
    assert shared_threshold == pytest.approx(threshold, rel=1e-6)
    _, _, mask, record = preprocess_frame(other.image1, other.image2, shared, settings, SPACING_2D)
    np.testing.assert_array_equal(mask, shared)
    assert math.isnan(record["mask_threshold"])
    with pytest.raises(ValueError, match="generate_shared_mask"):
        preprocess_frame(other.image1, other.image2, None, settings, SPACING_2D)


def test_an_empty_mask_is_an_invalid_frame():
    flat = np.full((16, 16), 7.0, np.float32)
    settings = Preprocessing.model_validate({"mask": {"method": "otsu"}})
    with pytest.raises(InvalidFrameError, match="no voxel"):
        preprocess_frame(flat, flat, None, settings, (1.0, 1.0))
    with pytest.raises(InvalidFrameError, match="no voxel"):
        preprocess_frame(flat, flat, np.zeros(flat.shape, bool), Preprocessing(), (1.0, 1.0))


# --------------------------------------------------------------------------- config model

README_EXAMPLE = """
preprocess:
  chromatic_shift:
    shift: [0.0, 0.032, -0.018]      # (z, y, x) in the images' physical unit
    order: 3
  mask:
    source: image1
    sigma: 0.2
    method: li
    fill_holes: true
    min_size: 0.5
  background:
    image1: {method: median}
    image2: {method: region_mean, box: [[0, 2], [0, 5], [0, 5]]}
"""

BEADS_EXAMPLE = """
preprocess:
  chromatic_shift:
    reference: {image1: beads_c1.tif, image2: beads_c2.tif}
    upsample_factor: 50
  mask: {source: mask, sigma: 0.5, method: otsu, from_frame: 0}
  background:
    image1: {method: constant, value: 100}
    image2: {method: region_mean, region_mask: background_region.tif}
"""


@pytest.mark.parametrize("text", [README_EXAMPLE, BEADS_EXAMPLE])
def test_documented_examples_validate(text):
    settings = Preprocessing.model_validate(yaml.safe_load(text)["preprocess"])
    assert Preprocessing.model_validate(settings.model_dump()) == settings


def test_readme_example_runs_on_a_3d_frame():
    settings = Preprocessing.model_validate(yaml.safe_load(README_EXAMPLE)["preprocess"])
    scene = paired_spots((10, 48, 48), spacing=SPACING_3D, distance=0.3, psf_sigma=0.1, n_pairs=10, seed=9)
    # a cell-sized blob (about 3 um^3 above half maximum) so that min_size 0.5 keeps it
    z, y, x = np.indices(scene.image1.shape) * np.asarray(SPACING_3D)[:, None, None, None]
    cell = np.exp(-((z - 0.75) ** 2 + (y - 1.2) ** 2 + (x - 1.2) ** 2) / (2 * 0.8**2)).astype(np.float32)
    image1 = scene.image1 + cell
    out1, out2, mask, record = preprocess_frame(image1, scene.image2, None, settings, SPACING_3D)
    assert record["shift"] == (0.0, 0.032, -0.018)
    assert record["background1"] == pytest.approx(float(np.median(image1)), rel=1e-6)
    assert record["mask_threshold"] > 0
    generated, _ = skimage_mask(image1, SPACING_3D, 0.2, "li", True, 0.5)
    valid = valid_region(image1.shape, record["shift"], spacing=SPACING_3D)
    np.testing.assert_array_equal(mask, generated & valid)
    assert mask.any() and not mask.all()


@pytest.mark.parametrize(
    "config, location",
    [
        ({"chromatic_shfit": {"shift": [1.0, 2.0]}}, "chromatic_shfit"),
        ({"mask": {"sigma": 1.0, "thresold": "otsu"}}, "mask.thresold"),
        ({"background": {"image1": {"method": "median", "extra": 1}}}, "background.image1.extra"),
        ({"chromatic_shift": {"reference": {"frame": 0, "path": "x"}}}, "chromatic_shift.reference.path"),
    ],
)
def test_unknown_keys_are_rejected_by_name(config, location):
    with pytest.raises(ValidationError) as error:
        Preprocessing.model_validate(config)
    assert location in str(error.value)
    assert "Extra inputs are not permitted" in str(error.value)


@pytest.mark.parametrize(
    "config, location",
    [
        ({"mask": {"sigma": "wide"}}, "mask.sigma"),
        ({"mask": {"sigma": True}}, "mask.sigma"),
        ({"mask": {"sigma": -0.1}}, "mask.sigma"),
        ({"mask": {"method": "huang"}}, "mask.method"),
        ({"mask": {"fill_holes": "yes"}}, "mask.fill_holes"),
        ({"mask": {"from_frame": 1.5}}, "mask.from_frame"),
        ({"chromatic_shift": {"shift": [0.1]}}, "chromatic_shift.shift"),
        ({"chromatic_shift": {"shift": ["a", 0.1]}}, "chromatic_shift.shift.0"),
        ({"chromatic_shift": {"shift": [0.1, 0.2], "order": 7}}, "chromatic_shift.order"),
        ({"background": {"image2": {"method": "mode"}}}, "background.image2.method"),
        ({"background": {"image1": {"method": "constant"}}}, "background.image1"),
        ({"background": {"image1": {"method": "region_mean"}}}, "background.image1"),
        ({"background": {"image1": {"method": "median", "value": 3.0}}}, "background.image1"),
        ({"chromatic_shift": {}}, "chromatic_shift"),
        ({"chromatic_shift": {"reference": {"image1": "a.tif"}}}, "chromatic_shift.reference"),
    ],
)
def test_wrong_types_and_values_are_rejected_by_name(config, location):
    with pytest.raises(ValidationError) as error:
        Preprocessing.model_validate(config)
    first_location = str(error.value).splitlines()[1]  # line 0 is the count of errors
    assert first_location.startswith(location), str(error.value)


def test_relative_paths_are_resolved_against_the_config_folder(tmp_path):
    config = {
        "chromatic_shift": {"reference": {"image1": "beads/c1.tif", "image2": str(tmp_path / "c2.tif")}},
        "background": {"image2": {"method": "region_mean", "region_mask": "bg.tif"}},
    }
    settings = Preprocessing.model_validate(config, context={"base_dir": tmp_path / "run"})
    assert settings.chromatic_shift.reference.image1 == tmp_path / "run" / "beads" / "c1.tif"
    assert settings.chromatic_shift.reference.image2 == tmp_path / "c2.tif"
    assert settings.background.image2.region_mask == tmp_path / "run" / "bg.tif"
