"""The command line: bad input gives a message naming the problem, a non-zero exit and no store."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import xarray as xr
import yaml
from yaml_configs import write_config
from typer.testing import CliRunner

from cccdask.cli import app
from cccdask.synthetic import paired_spots_series

runner = CliRunner()


def _output(result) -> str:
    # one line per message, whatever the terminal width
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    return re.sub(r"\s+", " ", text)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    image1, image2, mask, _ = paired_spots_series(3, distances=[0.3, 0.4, 0.5], shape=(64, 64), n_pairs=30)
    tifffile.imwrite(folder / "cells.tif", np.stack([image1, image2], axis=1), imagej=True,
                     resolution=(20, 20), metadata={"axes": "TCYX", "unit": "um"})
    tifffile.imwrite(folder / "mask.tif", mask.astype(np.uint8), imagej=True, metadata={"axes": "TYX"})
    tifffile.imwrite(folder / "small_mask.tif", mask[:, :32, :32].astype(np.uint8), imagej=True,
                     metadata={"axes": "TYX"})
    return folder


def _write_config(folder: Path, name: str, address: str | None = None, **changes) -> Path:
    config = {
        "input": {"image1": {"path": "cells.tif", "channel": 0}, "image2": {"path": "cells.tif", "channel": 1},
                  "mask": "mask.tif"},
        "ccc": {"max_distance": 1.0},
        "output": {"store": f"{name}.zarr", "reports": False},
    }
    if address:
        config["cluster"] = {"kind": "address", "address": address}
    return write_config(folder, name, config, **changes)


@pytest.mark.parametrize(
    "name, changes, message",
    [
        ("missing_file", {"input__image1": {"path": "nowhere.tif", "channel": 0}}, "input.image1: Image not found"),
        ("channel_range", {"input__image2": {"path": "cells.tif", "channel": 5}},
         "input.image2: channel 5 is out of range"),
        ("no_channel", {"input__image2": "cells.tif"}, "has 2 channels; set input.image2.channel"),
        ("mask_shape", {"input__mask": "small_mask.tif"}, "mask shape (3, 32, 32) does not match the images"),
        ("unwritable", {"output__store": "cells.tif/inside.zarr"}, "is a file, not a folder"),
    ],
)
def test_bad_input_is_named_and_leaves_no_store(files, name, changes, message):
    config = _write_config(files, name, **changes)
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 1
    assert message in _output(result)
    assert "Traceback" not in _output(result)
    assert not (files / f"{name}.zarr").exists()
    assert not list(files.glob(f".{name}.zarr*"))
    # validate finds the same problem before a run
    checked = runner.invoke(app, ["validate", str(config)])
    assert checked.exit_code != 0 and (name == "unwritable" or message in _output(checked))


def test_invalid_yaml_and_unknown_keys(files):
    broken = files / "broken.yaml"
    broken.write_text("input:\n  image1: [unclosed\noutput: {store: x.zarr}\n")
    result = runner.invoke(app, ["run", str(broken)])
    assert result.exit_code == 2
    assert "invalid YAML at line" in _output(result)
    unknown = _write_config(files, "unknown", ccc__max_distanse=1.0)
    result = runner.invoke(app, ["validate", str(unknown)])
    assert result.exit_code == 2
    assert "ccc.max_distanse: Extra inputs are not permitted" in _output(result)
    wrong_type = _write_config(files, "wrong_type", ccc__contributions="maybe")
    result = runner.invoke(app, ["run", str(wrong_type)])
    assert result.exit_code == 2 and "ccc.contributions:" in _output(result)
    missing = runner.invoke(app, ["run", str(files / "absent.yaml")])
    assert missing.exit_code == 2 and "does not exist" in _output(missing)
    assert not (files / "x.zarr").exists() and not (files / "unknown.zarr").exists()


def test_validate_reports_the_inputs(files):
    result = runner.invoke(app, ["validate", str(_write_config(files, "good"))])
    assert result.exit_code == 0, _output(result)
    assert "3 frame(s)" in _output(result) and "(0.05, 0.05) um" in _output(result)


def test_run_inspect_and_overwrite(files, cluster_address):
    config = _write_config(files, "ok", address=cluster_address)
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 0, _output(result)
    stored = xr.open_zarr(files / "ok.zarr")
    # the summary table prints every frame's fitted mean
    for value in stored["mean"].values:
        assert f"{value:.3f}" in result.output
    inspected = runner.invoke(app, ["inspect", str(files / "ok.zarr")])
    assert inspected.exit_code == 0
    assert "complete 3; missing 0" in _output(inspected)

    changed = _write_config(files, "ok", address=cluster_address, ccc__max_distance=0.8)
    refused = runner.invoke(app, ["run", str(changed)])
    assert refused.exit_code == 1 and "different config" in _output(refused) and "--overwrite" in _output(refused)
    replaced = runner.invoke(app, ["run", str(changed), "--overwrite"])
    assert replaced.exit_code == 0, _output(replaced)
    assert xr.open_zarr(files / "ok.zarr")["distance"].values.max() <= 0.8
    # the YAML's output.overwrite does the same without the flag (an absent flag is no "resume")
    in_yaml = _write_config(files, "ok", address=cluster_address, ccc__max_distance=0.6,
                            output__overwrite=True)
    replaced = runner.invoke(app, ["run", str(in_yaml)])
    assert replaced.exit_code == 0, _output(replaced)
    assert xr.open_zarr(files / "ok.zarr")["distance"].values.max() < 0.65  # the 0.8 store was replaced


def test_inspect_lists_missing_frames_of_an_interrupted_store(files, cluster_address):
    import zarr

    # through a scheduler file this time (as `dask scheduler --scheduler-file` writes it)
    (files / "scheduler.json").write_text(json.dumps({"address": cluster_address}))
    config = _write_config(files, "partial")
    text = yaml.safe_load(config.read_text())
    text["cluster"] = {"kind": "scheduler_file", "scheduler_file": "scheduler.json"}
    config.write_text(yaml.safe_dump(text))
    done = runner.invoke(app, ["run", str(config)])
    assert done.exit_code == 0, _output(done)
    assert "Connected to the scheduler in" in _output(done)
    # as if the run had died before frames 1 and 2 were recorded
    group = zarr.open_group(str(files / "partial.zarr"), mode="r+")
    group["frame_status"][1:] = 0
    group.attrs["cccdask_status"] = "running"
    with pytest.warns(UserWarning, match="Consolidated metadata"):
        zarr.consolidate_metadata(str(files / "partial.zarr"))
    result = runner.invoke(app, ["inspect", str(files / "partial.zarr")])
    assert "incomplete" in _output(result) and "Missing frames: 1-2" in _output(result)
    foreign = runner.invoke(app, ["inspect", str(files)])
    assert foreign.exit_code == 1 and "is not a cccdask results store" in _output(foreign)
    absent = runner.invoke(app, ["inspect", str(files / "never-run.zarr")])
    assert absent.exit_code == 1 and "never-run.zarr does not exist" in _output(absent)
    assert not (files / "never-run.zarr").exists()


def test_demo_writes_known_distances_and_recovers_them(tmp_path):
    result = runner.invoke(app, ["demo", "--output", str(tmp_path), "--frames", "3", "--size", "128"])
    assert result.exit_code == 0, _output(result)
    stored = xr.open_zarr(tmp_path / "results.zarr")
    assert stored.attrs["cccdask_status"] == "complete"
    # true distances 0.3, 0.4, 0.5 um; the fitted means within 2 pixels (0.1 um)
    np.testing.assert_allclose(stored["mean"].values, [0.3, 0.4, 0.5], atol=0.1)
    assert (tmp_path / "results-reports" / "heatmap.png").exists()


def test_slurm_without_dask_jobqueue_is_a_clear_error(files, monkeypatch):
    # A None entry in sys.modules makes the import fail as if dask-jobqueue were not installed.
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)
    config = _write_config(files, "slurm")
    text = yaml.safe_load(config.read_text())
    text["cluster"] = {"kind": "slurm", "slurm": {"cores": 4, "memory": "16GB"}}
    config.write_text(yaml.safe_dump(text))
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 1
    assert "pip install 'cccdask[slurm]'" in _output(result)
    assert not (files / "slurm.zarr").exists()
