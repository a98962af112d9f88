"""The store layout for long series: small results in blocks of frames, bounded profiles.

The block writer is checked on a real Zarr store against values written by hand; runs
on the synchronous kind are checked against :func:`cccdask.ccc` on the same frames.
"""

import math

import numpy as np
import pytest
import xarray as xr
import zarr

import cccdask
from cccdask.config import ConfigError, config_from_dict
from cccdask.io.store import VariableLayout
from cccdask.kernels.profile import profile_geometry
from cccdask.pipeline import blocks, open_inputs, plan_run, run, run_identity
from cccdask.pipeline.blocks import BlockWriter
from series_files import write_paired_series

SPACING = (0.05, 0.05)


# --------------------------------------------------------------------------- the block writer


def _hand_store(path, n_frames=10, chunk=4):
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs["identity_hash"] = "run"
    group.create_array("mean", shape=(n_frames,), chunks=(chunk,), dtype="f8", fill_value=np.nan)
    group.create_array("profile", shape=(n_frames, 5), chunks=(chunk, 5), dtype="f4", fill_value=np.nan)
    zarr.consolidate_metadata(str(path))
    return [VariableLayout("mean", ("t",), (n_frames,), np.dtype("f8"), (chunk,)),
            VariableLayout("profile", ("t", "distance"), (n_frames, 5), np.dtype("f4"), (chunk, 5))]


def _values(frames):
    frames = np.asarray(frames)
    return {"mean": frames * 1.5, "profile": (frames[:, None] * 10 + np.arange(5)).astype(np.float32)}


def _chunk_files(path, name):
    return sorted(p.name for p in (path / name / "c").iterdir())


def test_block_writer_writes_whole_blocks_and_keeps_only_open_ones(tmp_path):
    path = tmp_path / "blocks.zarr"
    layouts = _hand_store(path)
    writer = BlockWriter(path, "run", layouts, np.zeros(10, dtype=bool))
    expected = {"mean": np.full(10, np.nan), "profile": np.full((10, 5), np.nan, dtype=np.float32)}
    for start, stop in ((4, 6), (0, 2), (8, 10), (2, 4)):  # out of order, as tasks finish
        values = _values(range(start, stop))
        writer.add(start, values)
        writer.flush()
        for name in expected:
            expected[name][start:stop] = values[name]
            np.testing.assert_array_equal(zarr.open_array(str(path / name))[...], expected[name])
    # blocks 0-3 and 8-9 are complete and forgotten; 4-7 still waits for frames 6, 7
    assert writer.held_frames() == 2 * 4
    assert _chunk_files(path, "mean") == ["0", "1", "2"]
    writer.add(6, _values(range(6, 8)))
    writer.flush()
    assert writer.held_frames() == 0
    np.testing.assert_array_equal(zarr.open_array(str(path / "mean"))[...], np.arange(10) * 1.5)


def test_a_resumed_block_keeps_the_frames_recorded_before(tmp_path):
    path = tmp_path / "resumed.zarr"
    layouts = _hand_store(path)
    first = BlockWriter(path, "run", layouts, np.zeros(10, dtype=bool))
    first.add(0, _values(range(0, 6)))
    first.flush()
    complete = np.arange(10) < 6  # frames 0-5 recorded; 6-9 missing
    second = BlockWriter(path, "run", layouts, complete)
    second.add(6, _values(range(6, 10)))
    second.flush()
    assert second.held_frames() == 0
    np.testing.assert_array_equal(zarr.open_array(str(path / "mean"))[...], np.arange(10) * 1.5)
    np.testing.assert_array_equal(zarr.open_array(str(path / "profile"))[...], _values(range(10))["profile"])


# --------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blocks")
    image1, image2, _ = write_paired_series(folder, 12, np.linspace(0.3, 0.6, 12), shape=(48, 48), spacing=SPACING,
                                            n_pairs=12)
    return folder, image1, image2


def _run(folder, name, **output):
    config = config_from_dict({
        "input": {"image1": {"path": "cells.ome.zarr", "channel": 0},
                  "image2": {"path": "cells.ome.zarr", "channel": 1}},
        "ccc": {"contributions": True},
        "output": {"store": f"{name}.zarr", "reports": False, **output},
        "execution": {"frames_per_task": 2},
        "cluster": {"kind": "synchronous"},
    }, base_dir=folder)
    return xr.open_zarr(run(config)), folder / f"{name}.zarr"


def _expected(series):
    _, image1, image2 = series
    return cccdask.ccc(xr.DataArray(image1, dims=("t", "y", "x")), xr.DataArray(image2, dims=("t", "y", "x")),
                       spacing=SPACING, contributions=True)


def test_small_results_in_blocks_large_ones_per_task(series, monkeypatch):
    monkeypatch.setattr(blocks, "BLOCK_FRAMES", 5)
    stored, path = _run(series[0], "blocked")
    expected = _expected(series)
    for name in ("mean", "sigma", "confidence", "fit_ok", "frame_status"):
        chunks = stored[name].encoding["chunks"]
        assert chunks == ((5,) if name != "frame_status" else (12,)), name
    assert _chunk_files(path, "mean") == ["0", "1", "2"]  # 12 frames in blocks of 5
    assert stored["profile_subtracted"].encoding["chunks"][0] == 5
    assert stored["contribution1"].encoding["chunks"] == (2, 48, 48)  # the task's own chunks
    assert len(list((path / "contribution1" / "c").iterdir())) == 6
    for name in ("mean", "sigma", "confidence", "contribution1"):
        np.testing.assert_array_equal(stored[name].values, expected[name].values, err_msg=name)


def test_profiles_stored_out_to_a_quarter_of_the_frame_unless_full(series):
    expected = _expected(series)
    bounded, _ = _run(series[0], "bounded")
    full, _ = _run(series[0], "full", profile_range="full")
    reach = 48 * SPACING[0] / 4
    kept = int(np.sum(expected["distance"].values <= reach * (1 + 1e-12)))
    assert 0 < kept < expected.sizes["distance"]
    np.testing.assert_array_equal(bounded["distance"].values, expected["distance"].values[:kept])
    for name in ("profile_original", "profile_subtracted", "profile_fit"):
        assert bounded[name].dtype == np.float32 and full[name].dtype == np.float64
        np.testing.assert_array_equal(bounded[name].values, expected[name].values[:, :kept].astype(np.float32))
        np.testing.assert_array_equal(full[name].values, expected[name].values)  # today's profile, whole
    for name in ("mean", "sigma", "confidence"):  # the fit used the whole profile either way
        np.testing.assert_array_equal(bounded[name].values, expected[name].values)
        np.testing.assert_array_equal(full[name].values, expected[name].values)
    number, _ = _run(series[0], "number", profile_range=0.3)
    assert number["distance"].values.max() <= 0.3 * (1 + 1e-12) < expected["distance"].values[number.sizes["distance"]]


def test_profile_range_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="profile_range.*positive distance"):
        config_from_dict({"input": {"image1": "a.tif", "image2": "b.tif"},
                          "output": {"store": "r.zarr", "profile_range": -1.0}}, base_dir=tmp_path)


def test_default_results_of_a_2048_frame_are_under_a_tenth_of_its_input(tmp_path):
    """Bytes per frame of every stored variable (uncompressed) against the uint16 input."""
    group = zarr.open_group(str(tmp_path / "big.ome.zarr"), mode="w", zarr_format=3)
    from cccdask.io.store import ngff_multiscales

    group.attrs["ome"] = ngff_multiscales([("0", tuple("tcyx"))], (0.1, 0.1), "um")
    group.create_array("0", shape=(2, 2, 2048, 2048), dtype=np.uint16, chunks=(1, 1, 2048, 2048),
                       dimension_names=list("tcyx"))  # metadata only: no frame is read
    config = config_from_dict({"input": {"image1": {"path": "big.ome.zarr", "channel": 0},
                                         "image2": {"path": "big.ome.zarr", "channel": 1}},
                               "output": {"store": "r.zarr"}}, base_dir=tmp_path)
    inputs = open_inputs(config)
    _, layout = plan_run(config, inputs, run_identity(config, inputs.frames))
    per_frame = sum(math.prod(v.shape[1:]) * v.dtype.itemsize for v in layout.variables) + 1  # + frame_status
    input_bytes = 2 * 2048 * 2048 * 2
    assert per_frame <= 0.1 * input_bytes
    corner = len(profile_geometry((2048, 2048), (0.1, 0.1)).distances)
    # what the store held before: three float64 profiles out to the corner, 45 % of the input
    assert 3 * corner * 8 > 0.4 * input_bytes
