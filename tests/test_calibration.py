"""Calibration agreement (spacing, units, frame interval) and the axes settled for every input.

image1, image2 and the mask must describe one grid: in Python (xarray coordinates) and in
YAML runs (file metadata), a mismatch is refused naming both values and the fix; an input
without a calibration takes the other's, with a note. Files whose axes are guessed get a
hint when a channel is asked of a short first axis.
"""

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import xarray as xr
import yaml
from typer.testing import CliRunner

import cccdask
from cccdask import coefficients
from cccdask.cli import app
from cccdask.io.store import write_ome_zarr
from cccdask.synthetic import paired_spots_series

runner = CliRunner()
FIX_SPACING = ("They must be on one grid (to a relative 1e-6): if a file's calibration is wrong, set the voxel size "
               "explicitly (input.spacing: in a YAML run, spacing= in Python); otherwise resample one image onto the "
               "other's grid.")
FIX_UNITS = ("Set the calibration explicitly (input.spacing: and input.units: in a YAML run, spacing= and units= in "
             "Python), or convert one image's calibration.")
FIX_TIME = ("They must be one time series: if a file's metadata is wrong, correct it (in Python, give both the same t "
            "coordinates); otherwise resample one series in time.")


def _text(output: str) -> str:
    return re.sub(r"\s+", " ", output).strip()


@pytest.fixture(scope="module")
def scene():
    image1, image2, mask, _ = paired_spots_series(3, distances=[0.3, 0.4, 0.5], shape=(32, 32), spacing=(0.05, 0.05),
                                                  n_pairs=6)
    return image1, image2, mask


def _labelled(data, step=0.05, units="um", interval=2.0, time_units="s"):
    coords = {d: xr.Variable(d, np.arange(n) * step, attrs={"units": units} if units else {})
              for d, n in zip(("y", "x"), data.shape[1:])}
    if interval is not None:
        coords["t"] = xr.Variable("t", np.arange(data.shape[0]) * interval, attrs={"units": time_units})
    return xr.DataArray(data, dims=("t", "y", "x"), coords=coords)


# --------------------------------------------------------------------------- Python


@pytest.mark.parametrize("function", [cccdask.ccc, coefficients], ids=["ccc", "coefficients"])
@pytest.mark.parametrize("which, changes, message", [
    ("image2", {"step": 0.1}, "image1 and image2 have different voxel sizes: image1 (0.05, 0.05) um and image2 "
                              "(0.1, 0.1) um (y, x). " + FIX_SPACING),
    ("image2", {"step": 0.05 * (1 + 2e-6)}, "image1 and image2 have different voxel sizes: image1 (0.05, 0.05) um "
                                           "and image2 (0.0500001, 0.0500001) um (y, x). " + FIX_SPACING),
    ("image2", {"units": "nm"}, "image1 and image2 have different voxel sizes: image1 (0.05, 0.05) um and image2 "
                                "(0.05, 0.05) nm = (5e-05, 5e-05) um (y, x). " + FIX_SPACING),
    ("image2", {"units": "furlong"}, "image1 and image2 give their voxel sizes in different units: image1 (0.05, "
                                     "0.05) um and image2 (0.05, 0.05) furlong (y, x). " + FIX_UNITS),
    ("image2", {"interval": 3.0}, "image1 and image2 have different frame intervals: image1 2 s and image2 3 s. "
                                  + FIX_TIME),
    ("image2", {"time_units": "min"}, "image1 and image2 have different frame intervals: image1 2 s and image2 2 min. "
                                      + FIX_TIME),
    ("mask", {"step": 0.1}, "image1 and mask have different voxel sizes: image1 (0.05, 0.05) um and mask (0.1, 0.1) "
                            "um (y, x). " + FIX_SPACING),
    ("mask", {"interval": 1.0}, "image1 and mask have different frame intervals: image1 2 s and mask 1 s. "
                                + FIX_TIME),
])
def test_xarray_inputs_that_disagree_are_refused_naming_both_values(scene, function, which, changes, message):
    image1, image2, mask = scene
    a = _labelled(image1)
    b = _labelled(image2, **changes) if which == "image2" else _labelled(image2)
    m = _labelled(mask.astype(np.uint8), **changes) if which == "mask" else mask
    with pytest.raises(ValueError) as error:
        function(a, b, m)
    assert str(error.value) == message


def test_agreement_to_a_relative_1e_6_and_the_explicit_override(scene):
    image1, image2, mask = scene
    expected = cccdask.ccc(image1[0], image2[0], mask[0], spacing=(0.05, 0.05), max_distance=0.5)
    close = cccdask.ccc(_labelled(image1)[0], _labelled(image2, step=0.05 * (1 + 5e-7))[0], mask[0],
                        max_distance=0.5)
    np.testing.assert_array_equal(close["profile_subtracted"].values, expected["profile_subtracted"].values)
    # spacing= overrides every input's coordinates, so they are not compared
    overridden = cccdask.ccc(_labelled(image1, step=0.5)[0], _labelled(image2, step=0.1)[0], mask[0],
                             spacing=(0.05, 0.05), max_distance=0.5)
    np.testing.assert_array_equal(overridden["profile_subtracted"].values, expected["profile_subtracted"].values)


def test_the_same_calibration_in_other_units_is_converted_not_refused(scene):
    image1, image2, mask = scene
    expected = cccdask.ccc(_labelled(image1), _labelled(image2), mask, max_distance=0.5)
    converted = cccdask.ccc(_labelled(image1), _labelled(image2, step=50.0, units="nm", interval=2000.0,
                                                         time_units="ms"), mask, max_distance=0.5)
    assert converted["distance"].attrs["units"] == expected["distance"].attrs["units"] == "um"  # image1's unit
    np.testing.assert_array_equal(converted["t"].values, [0.0, 2.0, 4.0])
    np.testing.assert_array_equal(converted["profile_subtracted"].values, expected["profile_subtracted"].values)
    with pytest.raises(ValueError, match=re.escape("image1 2 s and image2 2000 us")):  # 2 ms, not 2 s
        cccdask.ccc(_labelled(image1), _labelled(image2, interval=2000.0, time_units="us"), mask)


def test_a_missing_calibration_takes_the_other_inputs(scene):
    from cccdask.frames import prepare_inputs

    image1, image2, mask = scene
    plain = xr.DataArray(image1, dims=("t", "y", "x"))
    frames = prepare_inputs(plain, _labelled(image2, step=0.1, interval=3.0), mask)
    assert frames.spacing == (0.1, 0.1) and frames.units == "um"
    np.testing.assert_array_equal(frames.image1["t"].values, [0.0, 3.0, 6.0])
    assert frames.notes == ("image1 has no voxel size; using image2's (0.1, 0.1) um",
                            "image1 has no frame interval; using image2's 3 s")
    # the result is the explicitly calibrated one
    got = cccdask.ccc(plain, _labelled(image2, step=0.1, interval=3.0), mask, max_distance=0.8)
    want = cccdask.ccc(plain, xr.DataArray(image2, dims=("t", "y", "x")), mask, spacing=(0.1, 0.1),
                       max_distance=0.8)
    np.testing.assert_array_equal(got["mean"].values, want["mean"].values)
    np.testing.assert_array_equal(got["t"].values, [0.0, 3.0, 6.0])


def test_a_3d_numpy_frame_without_spacing_warns(scene):
    image1, image2, _ = scene
    with pytest.warns(UserWarning, match=re.escape(
            "image1 is a 3D array without spacing: it is treated as one z, y, x frame at spacing 1 (pixels). Pass "
            "spacing=(dz, dy, dx) for a z-stack, or an xarray.DataArray with dims ('t', 'y', 'x') for a time "
            "series of 2D frames.")):
        cccdask.ccc(image1, image2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cccdask.ccc(image1, image2, spacing=(0.2, 0.05, 0.05))  # a z-stack said so: no warning
        cccdask.ccc(image1[0], image2[0])  # 2D: nothing to guess


# --------------------------------------------------------------------------- YAML runs


@pytest.fixture(scope="module")
def files(tmp_path_factory, scene):
    folder = tmp_path_factory.mktemp("calibration")
    image1, image2, mask = scene
    write_ome_zarr(folder / "c1.ome.zarr", image1, "tyx", (0.05, 0.05), time_interval=2.0)
    write_ome_zarr(folder / "c2.ome.zarr", image2, "tyx", (0.05, 0.05), time_interval=2.0)
    write_ome_zarr(folder / "c2_coarse.ome.zarr", image2, "tyx", (0.1, 0.1), time_interval=2.0)
    write_ome_zarr(folder / "c2_nm.ome.zarr", image2, "tyx", (0.05, 0.05), units="nm", time_interval=2.0)
    write_ome_zarr(folder / "c2_slow.ome.zarr", image2, "tyx", (0.05, 0.05), time_interval=3.0)
    write_ome_zarr(folder / "mask_coarse.ome.zarr", mask.astype(np.uint8), "tyx", (0.1, 0.1), time_interval=2.0)
    np.save(folder / "c2.npy", image2)
    np.save(folder / "two_channels.npy", np.stack([image1[0], image2[0]]))
    tifffile.imwrite(folder / "two_channels.tif", np.stack([image1[0], image2[0]]))  # no axis metadata
    return folder


def _config(folder: Path, name: str, **inputs) -> Path:
    section = {"image1": "c1.ome.zarr", "image2": "c2.ome.zarr"}
    section.update(inputs)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"input": section, "output": {"store": f"{name}.zarr", "reports": False},
                                    "ccc": {"max_distance": 0.5}, "cluster": {"kind": "synchronous"}}))
    return path


@pytest.mark.parametrize("name, inputs, message", [
    ("spacing", {"image2": "c2_coarse.ome.zarr"}, "input: image1 and image2 have different voxel sizes: image1 "
     "(0.05, 0.05) um and image2 (0.1, 0.1) um (y, x). " + FIX_SPACING),
    ("units", {"image2": "c2_nm.ome.zarr"}, "input: image1 and image2 have different voxel sizes: image1 (0.05, "
     "0.05) um and image2 (0.05, 0.05) nm = (5e-05, 5e-05) um (y, x). " + FIX_SPACING),
    ("interval", {"image2": "c2_slow.ome.zarr"}, "input: image1 and image2 have different frame intervals: image1 2 s "
     "and image2 3 s. " + FIX_TIME),
    ("mask", {"mask": "mask_coarse.ome.zarr"}, "input: image1 and mask have different voxel sizes: image1 (0.05, "
     "0.05) um and mask (0.1, 0.1) um (y, x). " + FIX_SPACING),
    ("tiff_channels", {"image1": {"path": "two_channels.tif", "channel": 0}, "image2": {"path": "two_channels.tif",
                                                                                        "channel": 1}},
     "input.image1: {folder}/two_channels.tif has no axis metadata, so its axes were guessed as z, y, x for shape "
     "(2, 32, 32); a channel was asked for and its first axis is short (2), like channels. Name the axes: dims: cyx "
     "(dims='cyx' in Python) if that axis holds the channels, or dims: zyx if it is a z-stack (then without a "
     "channel)."),
    ("npy_channels", {"image1": {"path": "two_channels.npy", "channel": 0}, "image2": {"path": "two_channels.npy",
                                                                                       "channel": 1}},
     "input.image1: {folder}/two_channels.npy has no axis metadata, so its axes were guessed as z, y, x for shape "
     "(2, 32, 32); a channel was asked for and its first axis is short (2), like channels. Name the axes: dims: cyx "
     "(dims='cyx' in Python) if that axis holds the channels, or dims: zyx if it is a z-stack (then without a "
     "channel)."),
])
def test_yaml_inputs_that_disagree_are_refused_before_any_work(files, name, inputs, message):
    config = _config(files, name, **inputs)
    for command in ("validate", "run"):
        result = runner.invoke(app, [command, str(config)])
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
        assert _text(result.output).split("Error: ", 1)[1] == message.format(folder=files)
    assert not (files / f"{name}.zarr").exists()


def test_validate_prints_the_axes_and_calibration_settled_for_every_input(files):
    config = _config(files, "settled", image2={"path": "c2.npy", "dims": "tyx"})
    result = runner.invoke(app, ["validate", str(config)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:5] == [
        f"input.image1: {files}/c1.ome.zarr: axes tyx (from the file's metadata); voxel size y 0.05, x 0.05 um; "
        f"frame interval 2 s",
        f"input.image2: {files}/c2.npy: axes tyx (given by dims); voxel size y 1, x 1 pixel (no calibration in the "
        f"file); frame interval 1 frame (none in the file)",
        "Settled: 3 frame(s) of {'y': 32, 'x': 32}, voxel size y 0.05, x 0.05 um, frame interval 2 s",
        "Note: image2 has no voxel size; using image1's (0.05, 0.05) um",
        "Note: image2 has no frame interval; using image1's 2 s",
    ]
    # named axes make the two-channel files usable
    for name in ("two_channels.tif", "two_channels.npy"):
        config = _config(files, "named", image1={"path": name, "channel": 0, "dims": "cyx"},
                         image2={"path": name, "channel": 1, "dims": "cyx"}, spacing=[0.05, 0.05])
        result = runner.invoke(app, ["validate", str(config)])
        assert result.exit_code == 0, result.output
        assert _text(result.output).startswith(
            f"input.image1: {files}/{name}: axes cyx (given by dims), channel 0; voxel size y 1, x 1 pixel (no "
            f"calibration in the file) input.image2: {files}/{name}: axes cyx (given by dims), channel 1;")
        assert "Settled: 1 frame(s) of {'y': 32, 'x': 32}, voxel size y 0.05, x 0.05 um" in _text(result.output)


def test_input_spacing_overrides_disagreeing_files(files, scene):
    config = _config(files, "override", image2="c2_coarse.ome.zarr", spacing=[0.05, 0.05], units="um")
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 0, result.output
    image1, image2, _ = scene
    stored = xr.open_zarr(files / "override.zarr")
    expected = cccdask.ccc(xr.DataArray(image1, dims=("t", "y", "x")), xr.DataArray(image2, dims=("t", "y", "x")),
                           spacing=(0.05, 0.05), max_distance=0.5)
    np.testing.assert_array_equal(stored["profile_subtracted"].values,
                                  expected["profile_subtracted"].values.astype(np.float32))  # stored as float32
