"""The per-frame quality verdict on profiles with a known answer and on synthetic scenes."""

import numpy as np
import pytest

import cccdask
from cccdask.quality import (
    QUALITY_FLAGS,
    far_field_ratio,
    frame_quality,
    intensity_floor,
    quality_counts,
    quality_names,
    quality_summary,
)
from cccdask.synthetic import paired_spots

DISTANCE = np.linspace(0, 2.0, 41)


def test_far_field_ratio_of_a_gaussian_on_a_baseline():
    # profile = c + exp(-(d - 0.3)^2 / 2 0.1^2): far field (d >= 1.5) is c, peak 1 + c
    for c in (0.0, 0.1, 0.5, 2.0):
        profile = c + np.exp(-((DISTANCE - 0.3) ** 2) / (2 * 0.1**2))
        assert far_field_ratio(DISTANCE, profile, 0.3, 0.1) == pytest.approx(c / (1 + c), abs=1e-12)
    # the far field (d >= 1.5) leaves out d <= |mean| + 3 sigma when at least 3 distances remain
    profile = np.zeros_like(DISTANCE)
    profile[6] = 1.0  # the peak, at 0.3
    profile[(DISTANCE > 1.49) & (DISTANCE < 1.76)] = 0.8  # 6 distances: the fit's own tail
    profile[DISTANCE > 1.76] = 0.1  # 5 distances
    assert far_field_ratio(DISTANCE, profile, 1.46, 0.1) == pytest.approx(0.1, abs=1e-12)
    assert far_field_ratio(DISTANCE, profile) == pytest.approx(0.8, abs=1e-12)  # no fit: the outer quarter
    assert far_field_ratio(DISTANCE, profile, 1.8, 0.1) == pytest.approx(0.8, abs=1e-12)  # < 3 left: outer quarter


def test_far_field_ratio_per_frame_and_degenerate_profiles():
    profiles = np.stack([np.exp(-DISTANCE), -np.ones_like(DISTANCE), np.full_like(DISTANCE, np.nan)])
    ratio = far_field_ratio(DISTANCE, profiles)
    expected0 = np.median(np.exp(-DISTANCE[DISTANCE >= 1.5])) / 1.0
    assert ratio[0] == pytest.approx(expected0, abs=1e-12)
    assert ratio[1] == np.inf  # no positive correlation at all: flat, flagged
    assert np.isnan(ratio[2])


def test_frame_quality_thresholds_and_names():
    confidence = np.array([0.5, 0.099, 0.1, np.nan, 0.5, 0.5])
    r2 = np.array([0.9, 0.9, 0.049, 0.9, 0.05, 0.9])
    far = np.array([0.0, 0.3, -0.25, 0.24, np.inf, 0.0])
    floor1 = np.array([0.0, 0.0, 0.0, 0.5, 0.49, np.nan])
    floor2 = np.array([0.0, 0.0, 0.0, 0.0, 0.2, 0.7])
    flags = frame_quality(confidence, r2, far, floor1, floor2)
    assert flags.tolist() == [0, 1 | 4, 2 | 4, 8, 4, 8]
    assert [quality_names(f) for f in flags] == [
        "ok", "low_confidence+flat_profile", "poor_fit+flat_profile", "background_dominated", "flat_profile",
        "background_dominated"]
    assert quality_counts(flags) == {"low_confidence": 1, "poor_fit": 1, "flat_profile": 3, "background_dominated": 2}
    assert quality_counts(flags, assessed=[1, 0, 0, 0, 0, 0]) == dict.fromkeys(QUALITY_FLAGS, 0)
    assert frame_quality(r_squared=r2).tolist() == [0, 0, 2, 0, 0, 0]


def test_summary_names_preprocess_background_only_when_background_is_the_cause():
    counts = {"low_confidence": 2, "poor_fit": 0, "flat_profile": 1, "background_dominated": 3}
    text = "\n".join(quality_summary(counts, 10, background_subtracted=False))
    assert "low_confidence 2, flat_profile 1, background_dominated 3" in text
    assert "no background is subtracted" in text and "set preprocess.background" in text
    text = "\n".join(quality_summary(counts, 10, background_subtracted=True))
    assert "check the preprocess.background settings" in text
    text = "\n".join(quality_summary({**dict.fromkeys(QUALITY_FLAGS, 0), "poor_fit": 2}, 10, False))
    assert "poor_fit 2" in text and "preprocess.background" not in text
    assert quality_summary(dict.fromkeys(QUALITY_FLAGS, 0), 4, False) == ["Quality: no warnings in 4 frame(s)."]


def _scene(offset, gradient=0.0, seed=1, **kwargs):
    options = dict(shape=(256, 256), distance=0.3, psf_sigma=0.1, n_pairs=60, n_decoys=10, seed=seed)
    options.update(kwargs)
    scene = paired_spots(**options)
    x = np.linspace(0, 1, options["shape"][1])[None, :]
    background = offset * (1 + gradient * x)
    return scene, scene.image1 + background, scene.image2 + background


def _assess(image1, image2, mask):
    """cccdask.ccc on one frame, and its quality flags."""
    result = cccdask.ccc(image1, image2, mask, spacing=(0.05, 0.05), max_distance=2.0)
    ratio = far_field_ratio(result["distance"].values, result["profile_subtracted"].values,
                            float(result["mean"]), float(result["sigma"]))
    flags = frame_quality(float(result["confidence"]), float(result["r_squared"]), ratio,
                          intensity_floor(image1, mask), intensity_floor(image2, mask))
    return result, float(ratio), int(flags)


@pytest.mark.parametrize("kwargs", [
    {}, {"n_pairs": 360}, {"psf_sigma": 0.3, "distance": 0.5}, {"distance": 1.2},
    {"psf_sigma": 0.2, "distance": 0.8}, {"independent": True},
])
def test_scenes_without_background_are_not_flagged(kwargs):
    scene, image1, image2 = _scene(0.0, seed=2, **kwargs)
    result, ratio, flags = _assess(image1, image2, scene.mask)
    assert abs(ratio) < 0.2
    assert not flags & (QUALITY_FLAGS["flat_profile"] | QUALITY_FLAGS["background_dominated"])
    if not kwargs.get("independent"):
        assert flags == 0
        # the verdict is right: sigma within 45% of the scene's correlation width
        assert float(result["sigma"]) == pytest.approx(scene.correlation_sigma, rel=0.45)


@pytest.mark.parametrize("offset,gradient", [(1.0, 0.0), (1.0, 0.3), (5.0, 0.3), (20.0, 0.0)])
def test_an_unsubtracted_background_is_flagged_and_widens_the_fit(offset, gradient):
    scene, image1, image2 = _scene(offset, gradient)
    result, ratio, flags = _assess(image1, image2, scene.mask)
    assert flags & QUALITY_FLAGS["background_dominated"]
    assert flags & QUALITY_FLAGS["flat_profile"] and abs(ratio) >= 0.25
    assert flags & QUALITY_FLAGS["low_confidence"]
    # the flags are right to warn: sigma is well off the clean scene's
    clean, _, clean_flags = _assess(scene.image1, scene.image2, scene.mask)
    assert clean_flags == 0
    assert float(result["sigma"]) > 1.3 * float(clean["sigma"])
    # subtracting the background level (preprocess.background: median) removes the floor
    level1, level2 = (float(np.median(image[scene.mask])) for image in (image1, image2))
    subtracted, _, flags_after = _assess(image1 - level1, image2 - level2, scene.mask)
    assert not flags_after & QUALITY_FLAGS["background_dominated"]


def test_a_small_offset_has_a_floor_before_it_distorts_the_profile():
    # an offset of a fifth of the spot amplitude: the fit is still near the truth, the floor already shows
    scene, image1, image2 = _scene(0.2)
    result, ratio, flags = _assess(image1, image2, scene.mask)
    assert flags & QUALITY_FLAGS["background_dominated"] and not flags & QUALITY_FLAGS["flat_profile"]
    # the floor is the offset less 2.33 noise SDs (the 1st percentile of the background voxels' noise)
    floor = 0.2 - 2.326 * 0.02
    assert intensity_floor(image1, scene.mask) == pytest.approx(floor / float(image1[scene.mask].mean()), abs=0.02)


def test_intensity_floor_against_numpy():
    rng = np.random.default_rng(0)
    image = rng.random((40, 40)) + 3.0
    mask = np.zeros((40, 40), bool)
    mask[5:30, 10:35] = True
    inside = image[mask]
    assert intensity_floor(image, mask) == pytest.approx(np.percentile(inside, 1) / inside.mean(), abs=1e-15)
    assert np.isnan(intensity_floor(image, np.zeros_like(mask)))
    assert np.isnan(intensity_floor(-image))


def _floor_by_sorting(values: np.ndarray) -> float:
    """intensity_floor's definition by a full sort: 1st percentile, linearly interpolated, over the mean."""
    values = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    mean = float(values.mean(dtype=np.float64))  # summed in the values' own order, as intensity_floor sums
    values = np.sort(values)
    position = 0.01 * (values.size - 1)
    low = int(np.floor(position))
    high = min(low + 1, values.size - 1)
    floor = float(values[low]) + (position - low) * (float(values[high]) - float(values[low]))
    return floor / mean


@pytest.mark.parametrize("case", ["random float32", "uint16 with ties", "descending", "sample holds the smallest",
                                  "NaN and inf", "small"])
def test_intensity_floor_equals_the_sorted_order_statistics(case):
    """Exactly (==) the order statistics of a full sort, also when the strided sample misleads the selection."""
    rng = np.random.default_rng(3)
    n = 200_000
    if case == "random float32":
        values = rng.gamma(2.0, 1.0, n).astype(np.float32)
    elif case == "uint16 with ties":
        values = rng.poisson(20, n).astype(np.uint16)
    elif case == "descending":
        values = np.linspace(10.0, 1.0, n)
    elif case == "sample holds the smallest":  # every 64th value is among the smallest: the threshold is too low
        values = rng.uniform(100.0, 200.0, n)
        values[::64] = np.arange(values[::64].size, dtype=float)
    elif case == "NaN and inf":
        values = rng.uniform(1.0, 2.0, n)
        values[::7] = np.nan
        values[1::11] = np.inf
    else:
        values = rng.uniform(1.0, 2.0, 37)
    mask = rng.random(n if values.size == n else values.size) < 0.9
    image = values.reshape(-1, 8) if values.size % 8 == 0 else values
    assert intensity_floor(image, mask.reshape(image.shape)) == _floor_by_sorting(values[mask])
    assert intensity_floor(image) == _floor_by_sorting(values)
