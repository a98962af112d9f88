"""What a new user meets first: a fast CLI, runnable examples, warnings from validate."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import xarray as xr
from typer.testing import CliRunner

from cccdask.checks import machine_warnings
from cccdask.cli import app
from cccdask.config import config_from_dict
from cccdask.io.readers import open_image
from cccdask.synthetic import paired_spots

runner = CliRunner()
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _output(result) -> str:
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    return re.sub(r"\s+", " ", text)


def test_help_imports_no_heavy_module_and_shows_flags_as_flags():
    code = ("import sys\nfrom cccdask.cli import app\ntry:\n    app(['run', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('numpy', 'dask', 'scipy', 'xarray', 'zarr', 'distributed', 'pandas')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"COLUMNS": "120", "PATH": "", "PYTHONPATH": str(Path(__file__).parents[1])}).stdout
    assert out.strip().endswith("[]"), out
    assert re.search(r"--overwrite\s+Replace", out) and "<bool>" not in out


def test_machine_warnings_compare_the_request_with_the_machine(tmp_path):
    def config(**local):
        return config_from_dict({"input": {"image1": "a.tif", "image2": "b.tif"}, "output": {"store": "o.zarr"},
                                 "cluster": {"kind": "local", "local": local}}, base_dir=tmp_path)

    gib = 2**30
    heavy = machine_warnings(config(n_workers=4, memory_limit="8GiB"), total_memory=23 * gib, cores=2)
    assert len(heavy) == 2
    assert "4 worker(s) x 8.00 GiB = 32.00 GiB of memory but this machine has 23.00 GiB" in heavy[0]
    assert "4 worker(s) x 1 thread(s) but this machine has 2 core(s)" in heavy[1]
    assert machine_warnings(config(n_workers=2, memory_limit="8GiB"), total_memory=23 * gib, cores=2) == []
    assert machine_warnings(config(), total_memory=23 * gib, cores=2) == []  # defaults fit by construction


def _two_channel_tiff(folder: Path, offset: float) -> Path:
    scene = paired_spots(shape=(128, 128), distance=0.3, n_pairs=16, n_decoys=3, amplitude=1000.0, seed=0)
    data = np.stack([scene.image1, scene.image2])[None] + offset
    path = folder / f"cells-{offset:g}.tif"
    tifffile.imwrite(path, np.clip(data, 0, None).astype(np.uint16), imagej=True, resolution=(20, 20),
                     metadata={"axes": "TCYX", "unit": "um"})
    return path


@pytest.mark.parametrize("offset, background, warned", [
    (400.0, None, True), (0.0, None, False), (400.0, {"image1": {"method": "median"}}, False)])
def test_validate_hints_at_background_subtraction(tmp_path, offset, background, warned):
    image = _two_channel_tiff(tmp_path, offset)
    config = {"input": {"image1": {"path": image.name, "channel": 0}, "image2": {"path": image.name, "channel": 1}},
              "output": {"store": "out.zarr"}, "cluster": {"kind": "synchronous"}}
    if background:
        config["preprocess"] = {"background": background}
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, _output(result)
    assert ("no background is subtracted" in _output(result)) == warned
    assert ("set preprocess.background" in _output(result)) == warned


def test_demo_example_writes_the_data_an_example_config_reads(tmp_path, monkeypatch):
    shutil.copytree(CONFIGS, tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    missing = runner.invoke(app, ["validate", "configs/timeseries-3d.yaml"])
    assert missing.exit_code == 1
    assert "write its data with `cccdask demo --example configs/timeseries-3d.yaml`" in _output(missing)
    written = runner.invoke(app, ["demo", "--example", "timeseries-3d"])
    assert written.exit_code == 0, _output(written)
    checked = runner.invoke(app, ["validate", "configs/timeseries-3d.yaml"])
    assert checked.exit_code == 0, _output(checked)
    assert "6 frame(s) of {'z': 16, 'y': 96, 'x': 96}" in _output(checked)
    assert "mask: per frame" in _output(checked)
    image = open_image(tmp_path / "configs/data/cells.ome.zarr", channel=1)
    assert image.dims == ("t", "z", "y", "x") and image.attrs["time_units"] == "s"
    # channel 2 holds the partner spots: correlated with channel 1 at a shift, not zero
    assert float(xr.corr(image.isel(t=0), open_image(tmp_path / "configs/data/cells.ome.zarr", channel=0).isel(t=0))) > 0
    refused = runner.invoke(app, ["demo", "--example", "slurm-example"])
    assert refused.exit_code == 1 and "has no local data" in _output(refused)


def _run_config(folder: Path, image: Path, name: str, cluster: dict, **sections) -> Path:
    import yaml

    config = {"input": {"image1": {"path": image.name, "channel": 0}, "image2": {"path": image.name, "channel": 1}},
              "ccc": {"max_distance": 1.5}, "output": {"store": f"{name}.zarr", "reports": True},
              "cluster": cluster, **sections}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


NO_SCHEDULER = {"kind": "address", "address": "tcp://127.0.0.1:9", "connect_timeout": 1.0}


def test_a_complete_store_is_returned_without_a_cluster_until_an_input_changes(tmp_path):
    import os

    image = _two_channel_tiff(tmp_path, 0.0)
    first = runner.invoke(app, ["run", str(_run_config(tmp_path, image, "again", {"kind": "synchronous"}))])
    assert first.exit_code == 0, _output(first)
    summary = (tmp_path / "again-reports" / "summary.txt").stat().st_mtime_ns
    # same config and inputs, and a cluster that cannot be reached: nothing connects to it
    rerun = runner.invoke(app, ["run", str(_run_config(tmp_path, image, "again", NO_SCHEDULER))])
    assert rerun.exit_code == 0, _output(rerun)
    assert "is complete for this config and these inputs: nothing to compute" in _output(rerun)
    assert (tmp_path / "again-reports" / "summary.txt").stat().st_mtime_ns == summary
    # an input touched since: not returned as complete, refused as changed; --overwrite recomputes
    info = image.stat()
    os.utime(image, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))
    refused = runner.invoke(app, ["run", str(_run_config(tmp_path, image, "again", NO_SCHEDULER))])
    assert refused.exit_code != 0 and "nothing to compute" not in _output(refused)
    assert "changed since the store was started" in _output(refused)
    redone = runner.invoke(app, ["run", "--overwrite",
                                 str(_run_config(tmp_path, image, "again", {"kind": "synchronous"}))])
    assert redone.exit_code == 0, _output(redone)
    assert (tmp_path / "again-reports" / "summary.txt").stat().st_mtime_ns != summary


@pytest.mark.parametrize("background", [None, {"image1": {"method": "median"}, "image2": {"method": "median"}}])
def test_a_run_flags_an_unsubtracted_background_and_names_the_setting(tmp_path, background):
    from cccdask.quality import QUALITY_FLAGS, far_field_ratio, intensity_floor

    image = _two_channel_tiff(tmp_path, 400.0)
    sections = {"preprocess": {"background": background}} if background else {}
    result = runner.invoke(app, ["run", str(_run_config(tmp_path, image, "offset", {"kind": "synchronous"},
                                                         **sections))])
    assert result.exit_code == 0, _output(result)
    ds = xr.open_zarr(tmp_path / "offset.zarr")
    flags = int(ds["frame_quality"].values[0])
    assert ds["frame_quality"].attrs["flag_meanings"] == " ".join(QUALITY_FLAGS)
    data = tifffile.imread(image).astype(float).reshape(2, 128, 128)  # the two channels of the one frame
    # the far field the task measured is the one of the profile and the fit as stored
    stored = far_field_ratio(ds["distance"].values, ds["profile_subtracted"].values[0], float(ds["mean"].values[0]),
                             float(ds["sigma"].values[0]))
    assert float(ds["far_field_ratio"].values[0]) == pytest.approx(stored, rel=1e-12, abs=1e-12)
    if background is None:
        # the floor the task stored is the one of the raw channels
        assert float(ds["intensity_floor1"].values[0]) == pytest.approx(intensity_floor(data[0]), abs=1e-12)
        assert flags & QUALITY_FLAGS["background_dominated"]
        assert "Background is the likely cause: no background is subtracted" in _output(result)
        assert "set preprocess.background" in (tmp_path / "offset-reports" / "summary.txt").read_text()
        assert "background_dominated" in (tmp_path / "offset-reports" / "fits.csv").read_text()
    else:
        median = data[0] - np.median(data[0])
        assert float(ds["intensity_floor1"].values[0]) == pytest.approx(intensity_floor(median), abs=1e-6)
        assert not flags & QUALITY_FLAGS["background_dominated"]
        assert "likely cause" not in _output(result)
