"""The table of bad inputs: each one tried through `cccdask run`, with the exact message a user sees.

Every case asserts the message text (whitespace-normalised), the exit code and the state
of the output store: none created (and no temporary leftovers), an existing store left
byte for byte unchanged, or an incomplete store that says so and resumes.
"""

import errno
import json
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from yaml_configs import write_config
from typer.testing import CliRunner

import cccdask
from cccdask.cli import app
from cccdask.io.store import FRAME_INVALID, FRAME_MISSING, FRAME_OK, read_completion, write_ome_zarr
from cccdask.synthetic import paired_spots_series

SPACING = (0.05, 0.05)
runner = CliRunner()


def _text(output: str) -> str:
    return re.sub(r"\s+", " ", output).strip()


def _error(output: str) -> str:
    """What follows "Error: " (the message), whitespace-normalised."""
    text = _text(output)
    assert "Error: " in text, text
    assert "Traceback" not in text
    return text.split("Error: ", 1)[1]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three 32 x 32 frames as .npy files (and variants that are wrong in one way each)."""
    folder = tmp_path_factory.mktemp("bad_input")
    image1, image2, mask, _ = paired_spots_series(3, distances=[0.3, 0.4, 0.5], shape=(32, 32), spacing=SPACING,
                                                  n_pairs=6)
    np.save(folder / "c1.npy", image1)
    np.save(folder / "c2.npy", image2)
    np.save(folder / "mask.npy", mask.astype(np.uint8))
    np.save(folder / "narrow.npy", image2[:, :16])
    np.save(folder / "empty_mask.npy", np.zeros((32, 32), np.uint8))
    np.save(folder / "text.npy", np.full((3, 32, 32), "a"))
    np.save(folder / "complex.npy", image1.astype(np.complex64))
    write_ome_zarr(folder / "zero_scale.ome.zarr", np.stack([image1, image2], axis=1), "tcyx", (0.0, 0.05))
    return folder, image1, image2, mask


def _config(folder: Path, name: str, **changes) -> Path:
    config = {
        "input": {"image1": {"path": "c1.npy", "dims": "tyx"}, "image2": {"path": "c2.npy", "dims": "tyx"},
                  "mask": {"path": "mask.npy", "dims": "tyx"}, "spacing": list(SPACING), "units": "um"},
        "ccc": {"max_distance": 0.5},
        "output": {"store": f"{name}.zarr", "reports": False},
        "cluster": {"kind": "synchronous"},
    }
    return write_config(folder, name, config, **changes)


# name, config changes, exit code, message ({config}: the YAML file, {folder}: the data folder)
REFUSED = [
    ("wrong_type", {"ccc__max_distance": "far"}, 2,
     "{config}: ccc.max_distance: Input should be a valid number, unable to parse string as a number (got 'far')"),
    ("wrong_type_list", {"input__spacing": "small"}, 2,
     "{config}: input.spacing: Input should be a valid number, unable to parse string as a number (got 'small') "
     "{config}: input.spacing: Input should be a valid list (got 'small')"),
    ("unknown_key", {"ccc__max_distanse": 1.0}, 2,
     "{config}: ccc.max_distanse: Extra inputs are not permitted (got 1.0)"),
    ("zero_spacing", {"input__spacing": [0, 0.05]}, 2,
     "{config}: input.spacing: spacing must be positive and finite on every axis, e.g. [0.2, 0.065, 0.065]"),
    ("negative_spacing", {"input__spacing": -0.05}, 2,
     "{config}: input.spacing: spacing must be positive and finite on every axis, e.g. [0.2, 0.065, 0.065] "
     "(got -0.05)"),
    ("zero_spacing_in_file", {"input__image1": {"path": "zero_scale.ome.zarr", "channel": 0},
                              "input__image2": {"path": "zero_scale.ome.zarr", "channel": 1},
                              "input__mask": None, "input__spacing": None, "input__units": None}, 1,
     "input: spacing (0.0, 0.05) must be positive and finite on every axis (a physical voxel size, e.g. 0.065 "
     "for 65 nm pixels in um)."),
    ("missing_file", {"input__image1": {"path": "nowhere.npy", "dims": "tyx"}}, 1,
     "input.image1: Image not found: {folder}/nowhere.npy (no such file or directory)."),
    ("channel_shapes", {"input__image2": {"path": "narrow.npy", "dims": "tyx"}}, 1,
     "input: image1 {{'t': 3, 'y': 32, 'x': 32}} and image2 {{'t': 3, 'y': 16, 'x': 32}} differ in shape or dims; "
     "the two channels must cover the same voxels."),
    ("mask_shape", {"input__mask": {"path": "narrow.npy", "dims": "tyx"}}, 1,
     "input: mask shape (3, 16, 32) does not match the images: expected (3, 32, 32) (one mask per frame)."),
    ("empty_mask", {"input__mask": "empty_mask.npy"}, 1,
     "input.mask: {folder}/empty_mask.npy has no voxel inside (all zero), so every frame would be empty; give a "
     "mask with non-zero voxels where the signal is, or remove input.mask to use whole frames."),
    ("text_dtype", {"input__image1": {"path": "text.npy", "dims": "tyx"}}, 1,
     "input: image1 has dtype <U1, which is not a real number type; convert it to an integer or float array first."),
    ("complex_dtype", {"input__image2": {"path": "complex.npy", "dims": "tyx"}}, 1,
     "input: image2 has dtype complex64, which is not a real number type; convert it to an integer or float "
     "array first."),
    ("under_a_file", {"output__store": "c1.npy/results.zarr"}, 1,
     "output.store {folder}/c1.npy/results.zarr: {folder}/c1.npy is a file, not a folder; choose another output "
     "location."),
    ("read_only_location", {"output__store": "/sys/cccdask-results.zarr"}, 1,
     "output.store /sys/cccdask-results.zarr: cannot write in /sys (Permission denied); choose another output "
     "location."),
]


@pytest.mark.parametrize("name, changes, code, message", REFUSED, ids=[case[0] for case in REFUSED])
def test_refused_before_any_work_with_a_message_naming_the_fix(data, name, changes, code, message):
    folder = data[0]
    config = _config(folder, name, **changes)
    store = Path(changes.get("output__store", f"{name}.zarr"))
    store = store if store.is_absolute() else folder / store
    expected = message.format(config=config, folder=folder)
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == code
    assert _error(result.output) == expected
    assert not store.exists() and not list(store.parent.glob(f".{store.name}*"))
    # `cccdask validate` finds the same problem before a run
    checked = runner.invoke(app, ["validate", str(config)])
    assert checked.exit_code == code and _error(checked.output) == expected


def test_invalid_yaml_and_a_missing_config(data):
    folder = data[0]
    broken = folder / "broken.yaml"
    broken.write_text("input:\n  image1: [unclosed\noutput: {store: broken.zarr}\n")
    result = runner.invoke(app, ["run", str(broken)])
    assert result.exit_code == 2
    assert _error(result.output) == f"{broken}: invalid YAML at line 3, column 7: expected ',' or ']', but got ':'"
    missing = runner.invoke(app, ["run", str(folder / "absent.yaml")])
    assert missing.exit_code == 2
    assert _error(missing.output) == f"config file '{folder / 'absent.yaml'}' does not exist."
    assert not (folder / "broken.zarr").exists()


def test_a_duplicate_key_and_a_folder_for_a_config_are_refused(data):
    folder = data[0]
    duplicate = folder / "duplicate.yaml"
    duplicate.write_text("input:\n  image1: c1.npy\n  image2: c2.npy\n  image1: c2.npy\noutput: {store: dup.zarr}\n")
    configs = folder / "configs"
    configs.mkdir()
    (configs / "run.yaml").write_text(duplicate.read_text())
    for command in ("run", "validate"):
        result = runner.invoke(app, [command, str(duplicate)])
        assert result.exit_code == 2
        assert _error(result.output) == (f"{duplicate}: invalid YAML at line 4, column 3: duplicate key 'image1' "
                                         f"(first at line 2); give each key once")
        result = runner.invoke(app, [command, str(configs)])
        assert result.exit_code == 2
        assert _error(result.output) == (f"{configs} is a folder, not a config file; give the YAML file itself "
                                         f"(run.yaml is there).")
    assert not (folder / "dup.zarr").exists()


@pytest.mark.parametrize("word", ["null", "none", "None", "~"])
def test_mask_none_or_null_means_no_mask(data, word):
    folder, image1, image2, _ = data
    config = _config(folder, f"no_mask_{word}", input__mask=None)
    text = config.read_text()
    config.write_text(text.replace("input:\n", f"input:\n  mask: {word}\n", 1))
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 0, result.output
    stored = xr.open_zarr(folder / f"no_mask_{word}.zarr")
    assert json.loads(stored.attrs["config"])["input"]["mask"] is None
    expected = cccdask.ccc(xr.DataArray(image1, dims=("t", "y", "x")), xr.DataArray(image2, dims=("t", "y", "x")),
                           spacing=SPACING, max_distance=0.5)
    # stored profiles are float32 (output.profile_range: auto)
    np.testing.assert_array_equal(stored["profile_subtracted"].values,
                                  expected["profile_subtracted"].values.astype(np.float32))


def test_an_existing_output(data):
    folder = data[0]
    config = _config(folder, "existing")
    store = folder / "existing.zarr"
    assert runner.invoke(app, ["run", str(config)]).exit_code == 0
    before = _snapshot(store)

    # the same config again on the complete store, inputs unchanged: nothing computed, nothing rewritten
    again = runner.invoke(app, ["run", str(config)])
    assert again.exit_code == 0 and "is complete for this config and these inputs: nothing to compute" in _text(
        again.output)
    after = _snapshot(store)
    assert after == before

    # another config, without --overwrite: refused, the store untouched
    other = _config(folder, "existing", ccc__max_distance=0.4)
    refused = runner.invoke(app, ["run", str(other)])
    assert refused.exit_code == 1
    assert _error(refused.output) == (f"output.store {store} exists and holds results of a different config; use "
                                      f"--overwrite to replace it.")
    assert _snapshot(store) == after

    # with --overwrite: replaced by the new config's complete results
    replaced = runner.invoke(app, ["run", str(other), "--overwrite"])
    assert replaced.exit_code == 0
    stored = xr.open_zarr(store)
    assert stored.attrs["cccdask_status"] == "complete" and stored.attrs["max_distance"] == 0.4
    _, image1, image2, mask = data
    expected = cccdask.ccc(xr.DataArray(image1, dims=("t", "y", "x")), xr.DataArray(image2, dims=("t", "y", "x")),
                           mask, spacing=SPACING, max_distance=0.4)
    np.testing.assert_array_equal(stored["profile_subtracted"].values,
                                  expected["profile_subtracted"].values.astype(np.float32))  # stored in float32

    # a folder that is not a cccdask store is never replaced, not even with --overwrite
    foreign = folder / "foreign.zarr"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("someone else's data")
    config = _config(folder, "foreign")
    for args in ([], ["--overwrite"]):
        result = runner.invoke(app, ["run", str(config), *args])
        assert result.exit_code == 1
        assert _error(result.output) == (f"output.store {foreign} exists and is not a cccdask results store; "
                                         f"choose another path.")
    assert _snapshot(foreign) == {"notes.txt": b"someone else's data"}


def test_nan_and_inf_pixels_make_that_frame_invalid_not_the_run(data):
    folder, image1, image2, mask = data
    bad = image1.copy()
    inside = np.argwhere(mask[1])
    bad[1][tuple(inside[0])] = np.nan
    bad[1][tuple(inside[-1])] = np.inf
    np.save(folder / "nan.npy", bad)
    config = _config(folder, "nan", input__image1={"path": "nan.npy", "dims": "tyx"})
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 0
    stored = xr.open_zarr(folder / "nan.zarr")
    assert stored.attrs["cccdask_status"] == "complete"
    assert list(stored["frame_status"].values) == [FRAME_OK, FRAME_INVALID, FRAME_OK]
    reason = ("image1 has NaN or infinite pixels inside the mask; replace them (e.g. numpy.nan_to_num) or exclude "
              "them with the mask.")
    assert str(stored["frame_error"].values[1]) == reason
    assert _text(result.output).count("invalid frame:") == 1  # the end table shows it
    expected = cccdask.ccc(xr.DataArray(image1[[0, 2]], dims=("t", "y", "x")),
                           xr.DataArray(image2[[0, 2]], dims=("t", "y", "x")), mask[[0, 2]], spacing=SPACING,
                           max_distance=0.5)
    np.testing.assert_array_equal(stored["mean"].values[[0, 2]], expected["mean"].values)
    assert np.isnan(stored["mean"].values[1])


def test_a_corrupted_input_chunk_leaves_an_incomplete_store_naming_the_file(data):
    folder, image1, image2, _ = data
    write_ome_zarr(folder / "cells.ome.zarr", np.stack([image1, image2], axis=1), "tcyx", SPACING)
    chunk = folder / "cells.ome.zarr" / "0" / "c" / "1" / "0" / "0" / "0"  # frame 1, channel 0
    good = chunk.read_bytes()
    chunk.write_bytes(b"not a blosc chunk")
    config = _config(folder, "corrupt", input__image1={"path": "cells.ome.zarr", "channel": 0},
                     input__image2={"path": "cells.ome.zarr", "channel": 1}, input__mask=None)
    store = folder / "corrupt.zarr"
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 1
    assert _error(result.output) == (
        f"1 task(s) failed; the store {store} is incomplete. Fix the cause and rerun the same config: only the "
        f"missing frames are computed. frames 1-1: InputReadError: cannot read frame 1 of {folder}/cells.ome.zarr "
        f"(channel 0): RuntimeError: error during blosc decompression: -1. The file may be corrupted, truncated or "
        f"changed: repair or rewrite it, then rerun the same config (with --overwrite when the file was rewritten: "
        f"a changed input is not resumed)")
    assert list(read_completion(store).status) == [FRAME_OK, FRAME_MISSING, FRAME_OK]
    assert xr.open_zarr(store).attrs["cccdask_status"] == "running"
    inspect = _text(runner.invoke(app, ["inspect", str(store)]).output)
    assert "Status: incomplete" in inspect and "Missing frames: 1" in inspect
    metadata = ("zarr.json", ".zattrs", ".zgroup", ".zarray")
    corrupted = sum(p.stat().st_size for p in (folder / "cells.ome.zarr").rglob("*")
                    if p.is_file() and p.name not in metadata)
    chunk.write_bytes(good)
    # the repaired input is a changed input: not resumed, recomputed with --overwrite
    refused = runner.invoke(app, ["run", str(config)])
    assert refused.exit_code == 1
    repaired = corrupted - len(b"not a blosc chunk") + len(good)
    assert _error(refused.output).startswith(
        f"input.image1 {folder}/cells.ome.zarr changed since the store was started: its chunk files changed in size "
        f"(from {corrupted} to {repaired} bytes)")
    assert runner.invoke(app, ["run", str(config), "--overwrite"]).exit_code == 0
    stored = xr.open_zarr(store)
    expected = cccdask.ccc(xr.DataArray(image1, dims=("t", "y", "x")), xr.DataArray(image2, dims=("t", "y", "x")),
                           spacing=SPACING, max_distance=0.5)
    np.testing.assert_array_equal(stored["profile_subtracted"].values,
                                  expected["profile_subtracted"].values.astype(np.float32))  # stored in float32
    assert stored.attrs["cccdask_status"] == "complete"


FILE_SIZE_LIMIT = 48 * 1024  # above the store's metadata (~25 KB), below one contribution image chunk


def _limit_file_size():
    """In the child: writes past FILE_SIZE_LIMIT fail with EFBIG (a real kernel limit; root too)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


def test_a_full_disk_leaves_an_incomplete_store_that_resumes(tmp_path):
    image1, image2, _, _ = paired_spots_series(3, distances=[0.3, 0.4, 0.5], shape=(128, 128), spacing=SPACING,
                                               n_pairs=60)
    noise = np.random.default_rng(0).random((2, 3, 128, 128), dtype=np.float32) * 0.05 * float(image1.max())
    image1, image2 = image1 + noise[0], image2 + noise[1]  # contribution images that do not compress
    np.save(tmp_path / "c1.npy", image1)
    np.save(tmp_path / "c2.npy", image2)
    config = _config(tmp_path, "full", input__mask=None, ccc__contributions=True)
    store = tmp_path / "full.zarr"
    done = subprocess.run([sys.executable, "-m", "cccdask", "run", str(config)], preexec_fn=_limit_file_size,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    cause = (f"OSError: [Errno {errno.EFBIG}] {os.strerror(errno.EFBIG)} (the disk holding the store is full, or a "
             f"file size or quota limit was reached: free space and rerun the same config; frames already recorded "
             f"are kept)")
    assert _error(done.stderr) == (
        f"3 task(s) failed; the store {store} is incomplete. Fix the cause and rerun the same config: only the "
        f"missing frames are computed. " + " ".join(f"frames {i}-{i}: {cause}" for i in range(3)))
    assert list(read_completion(store).status) == [FRAME_MISSING] * 3
    assert xr.open_zarr(store).attrs["cccdask_status"] == "running"
    # no chunk larger than the limit was left half-written
    assert all(p.stat().st_size < FILE_SIZE_LIMIT for p in store.rglob("*") if p.is_file())

    # space again: the same config completes the store
    assert runner.invoke(app, ["run", str(config)]).exit_code == 0
    stored = xr.open_zarr(store)
    assert stored.attrs["cccdask_status"] == "complete"
    expected = cccdask.ccc(xr.DataArray(image1, dims=("t", "y", "x")), xr.DataArray(image2, dims=("t", "y", "x")),
                           spacing=SPACING, max_distance=0.5, contributions=True)
    for name in ("profile_subtracted", "mean", "contribution1"):  # profiles stored in float32
        np.testing.assert_array_equal(stored[name].values, expected[name].values.astype(stored[name].dtype),
                                      err_msg=name)
