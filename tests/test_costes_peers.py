"""The coloc2 and jacop presets on Coloc 2's own test images (``../shared/peers``).

Two checks: Coloc 2's own JUnit assertions (values copied from its tests, with their
tolerances), and every Costes number of both presets against literal ports of the tools'
Java loops (``java_tool_ports.py``: one pass over the voxels per candidate, as the tools
do) at 1e-6 relative, thresholds exactly.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
from java_tool_ports import Coloc2Port, JacopPort

from cccdask import coefficients
from cccdask.kernels.coefficients import joint_table, kendall_tau_b

PEERS = Path(__file__).resolve().parents[2] / "shared" / "peers"
pytestmark = pytest.mark.skipif(not PEERS.is_dir(), reason=f"Coloc 2's test images are not at {PEERS}")


def load(name: str) -> np.ndarray:
    if name.endswith(".tiff"):  # LZW-compressed: read with Pillow (no imagecodecs needed)
        from PIL import Image

        return np.asarray(Image.open(PEERS / name))
    return tifffile.imread(PEERS / name)


@pytest.fixture(scope="module")
def sample():
    """colocsample1b: channel 1 green, channel 2 red (Coloc 2's positive correlation test)."""
    return load("colocsample1b-green.tif"), load("colocsample1b-red.tif"), load("colocsample1b-mask.tif") > 0


@pytest.fixture(scope="module")
def manders():
    return {letter: load(f"manders{letter}.tiff") for letter in "ABCDEFGHI"}


def plain(image1, image2, mask=None, **options):
    return coefficients(image1, image2, mask, van_steensel_shifts=None, preset="coloc2", **options)


# ---------------------------------------------------------------------------------------
# Coloc 2's own assertions
# ---------------------------------------------------------------------------------------
MANDERS_M1_M2 = {  # MandersColocalizationTest.mandersPaperImagesTest: (M1, M2, tolerance of M1)
    "A": (1.0, 1.0, 1e-4), "B": (0.75, 0.75, 1e-4), "C": (0.5, 0.5, 1e-4), "D": (0.25, 0.25, 1e-4),
    "E": (0.0, 0.0, 1e-4), "F": (0.25, 0.3333, 1e-4), "G": (0.25, 0.50, 1e-4), "H": (0.25, 1.00, 1e-4),
    "I": (0.083, 0.75, 1e-3),
}
MANDERS_PEARSON = {"A": 1.0, "B": 0.72, "C": 0.44, "D": 0.16, "E": -0.12, "F": 0.22, "G": 0.30, "H": 0.48,
                   "I": 0.23}  # PearsonsCorrelationTest.mandersPaperImagesTest, tolerance 0.01


@pytest.mark.parametrize("letter", "ABCDEFGHI")
def test_manders_paper_images_as_coloc2_asserts(manders, letter):
    ds = plain(manders["A"], manders[letter])
    m1, m2, tolerance = MANDERS_M1_M2[letter]
    assert abs(float(ds.m1) - m1) <= tolerance
    assert abs(float(ds.m2) - m2) <= 1e-4
    assert abs(float(ds.pearson) - MANDERS_PEARSON[letter]) <= 0.01


def test_thresholded_manders_at_70_53_and_the_bisection_that_finds_them(sample):
    green, red, mask = sample
    # MandersColocalizationTest.mandersRealNoisyImagesTest: thresholds 70/53, mask, 1e-6
    manual = plain(green, red, mask, threshold=(70, 53))
    assert abs(float(manual.m1) - 0.705665) <= 1e-6
    assert abs(float(manual.m2) - 0.724752) <= 1e-6
    # "the results from a Costes Autothreshold using bisection implementation of regression"
    found = plain(green, red, mask, threshold="costes", costes_search="bisection")
    assert found.threshold.values.tolist() == [70.0, 53.0]
    assert abs(float(found.m1) - 0.705665) <= 1e-6
    assert abs(float(found.m2) - 0.724752) <= 1e-6


def test_pearson_spearman_icq_as_coloc2_asserts(sample):
    green, red, _ = sample
    positive = plain(green, red)
    zero = plain(load("greenZstack.tif"), load("redZstack.tif"))
    negative = plain(load("syntheticNegCh1.tif"), load("syntheticNegCh2.tif"))
    assert abs(float(positive.pearson) - 0.75) <= 0.01  # PearsonsCorrelationTest
    assert abs(float(zero.pearson)) <= 0.05
    assert 0.546 < float(positive.spearman) < 0.547  # SpearmanRankTest
    assert abs(float(zero.spearman)) < 0.012
    assert -0.178 < float(negative.spearman) < -0.173
    assert abs(float(negative.spearman) - -0.1743) <= 0.001  # statisticsTest: same 15 pairs
    assert 0.34 < float(positive.icq) < 0.35  # LiICQTest
    assert abs(float(zero.icq)) < 0.01


@pytest.mark.parametrize("values1, values2, expected", [  # KendallTauTest
    ([4, 10, 3, 1, 9, 2, 6, 7, 8, 5], [5, 8, 6, 2, 10, 3, 9, 4, 7, 1], 23.0 / 45.0),
    ([1, 1, 1, 1], [2, 2, 2, 2], math.nan),
    ([1, 1, 2, 3], [3, 2, 1, 1], -0.8),
])
def test_kendall_tau_as_coloc2_asserts(values1, values2, expected):
    tau, _ = kendall_tau_b(joint_table(np.array(values1), np.array(values2)))
    if math.isnan(expected):
        assert math.isnan(tau)
    else:
        assert abs(tau - expected) <= 1e-10


def test_bisection_thresholds_swap_with_the_channels():
    # AutoThresholdRegressionTest.cummutativityTest (bisection, syntheticNeg)
    ch1, ch2 = load("syntheticNegCh1.tif"), load("syntheticNegCh2.tif")
    forward = plain(ch1, ch2, threshold="costes", costes_search="bisection")
    backward = plain(ch2, ch1, threshold="costes", costes_search="bisection")
    assert forward.threshold.values.tolist() == backward.threshold.values[::-1].tolist()


# ---------------------------------------------------------------------------------------
# Against the ports of the tools' Java loops
# ---------------------------------------------------------------------------------------
def peer_pairs():
    pairs = [("colocsample1b, mask", "colocsample1b-green.tif", "colocsample1b-red.tif", "colocsample1b-mask.tif"),
             ("colocsample1b, red first", "colocsample1b-red.tif", "colocsample1b-green.tif",
              "colocsample1b-mask.tif"),
             ("colocsample1b", "colocsample1b-green.tif", "colocsample1b-red.tif", None),
             ("Zstack", "greenZstack.tif", "redZstack.tif", None),
             ("high_random_overlap", "high_random_overlap1.tif", "high_random_overlap2.tif", None),
             ("syntheticNeg", "syntheticNegCh1.tif", "syntheticNegCh2.tif", None)]
    pairs += [(f"manders A-{x}", "mandersA.tiff", f"manders{x}.tiff", None) for x in "BCDEFGHI"]
    return pairs


def close(actual: float, expected: float, rel: float = 1e-6) -> bool:
    if math.isnan(expected):
        return math.isnan(actual)
    return abs(actual - expected) <= rel * max(abs(expected), 1e-300) or actual == expected


def inputs(file1, file2, mask_file):
    image1, image2 = load(file1), load(file2)
    mask = None if mask_file is None else load(mask_file) > 0
    inside = np.ones(image1.shape, bool) if mask is None else mask
    return image1, image2, mask, image1[inside], image2[inside]


@pytest.mark.parametrize("label, file1, file2, mask_file", peer_pairs(), ids=[p[0] for p in peer_pairs()])
@pytest.mark.parametrize("search", ["stepper", "bisection"])
def test_coloc2_preset_equals_the_port_of_coloc2(label, file1, file2, mask_file, search):
    image1, image2, mask, values1, values2 = inputs(file1, file2, mask_file)
    info = np.iinfo(image1.dtype) if image1.dtype.kind in "ui" else np.finfo(image1.dtype)
    port = Coloc2Port(values1, values2, (float(info.min), float(info.max)))
    expected = port.execute("Costes" if search == "stepper" else "Bisection")
    ds = plain(image1, image2, mask, threshold="costes", costes_search=search)
    assert ds.threshold.values.tolist() == [expected["threshold1"], expected["threshold2"]], label
    for name, value in (("costes_slope", "slope"), ("costes_intercept", "intercept"), ("m1", "m1"), ("m2", "m2"),
                        ("coloc2_pearson_below_threshold", "pearson_below"),
                        ("coloc2_pearson_above_threshold", "pearson_above")):
        assert close(float(ds[name]), expected[value]), (label, name, float(ds[name]), expected[value])


def test_coloc2_first_voxel_difference_is_only_in_the_line(sample):
    """Coloc 2 leaves the first voxel of the mask out of its regression sums; cccdask
    counts it: on colocsample1b the line moves by about 1e-5, the thresholds do not."""
    green, red, mask = sample
    tool = Coloc2Port(green[mask], red[mask], (0.0, 255.0), skip_first_voxel=True)
    ours = Coloc2Port(green[mask], red[mask], (0.0, 255.0))
    with_bug, without = tool.execute("Bisection"), ours.execute("Bisection")
    assert (with_bug["threshold1"], with_bug["threshold2"]) == (without["threshold1"], without["threshold2"]) \
        == (70, 53)
    assert 1e-7 < abs(with_bug["slope"] / without["slope"] - 1) < 1e-4


@pytest.mark.parametrize("label, file1, file2, mask_file",
                         [p for p in peer_pairs() if p[0] != "syntheticNeg"],
                         ids=[p[0] for p in peer_pairs() if p[0] != "syntheticNeg"])
def test_jacop_preset_equals_the_port_of_jacop(label, file1, file2, mask_file):
    image1, image2, mask, values1, values2 = inputs(file1, file2, mask_file)
    port = JacopPort(values1, values2)
    expected = port.CostesAutoThr()
    t1, t2 = expected["threshold1"], expected["threshold2"]
    expected.update({f"thresholded_{k}": v for k, v in port.Overlap(t1, t2).items()})
    expected.update({f"mm_{k}": v for k, v in port.MM(t1, t2).items()})
    ds = coefficients(image1, image2, mask, threshold="costes", preset="jacop", van_steensel_shifts=None)
    assert ds.threshold.values.tolist() == [t1, t2], label
    for name, value in (("costes_slope", "slope"), ("costes_intercept", "intercept"),
                        ("jacop_costes_pearson", "pearson"), ("jacop_costes_m1", "m1"), ("jacop_costes_m2", "m2"),
                        ("jacop_thresholded_overlap", "thresholded_overlap"), ("jacop_thresholded_k1", "thresholded_k1"),
                        ("jacop_thresholded_k2", "thresholded_k2"), ("m1", "mm_m1"), ("m2", "mm_m2")):
        assert close(float(ds[name]), expected[value]), (label, name, float(ds[name]), expected[value])
    start_values = (t1, t2) == (port.Amax, port.Bmax)
    assert bool(str(ds.costes_note.values)) == start_values
