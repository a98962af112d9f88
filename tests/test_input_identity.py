"""Input identity: a store is never resumed from inputs whose content changed at the same path.

For each format (Zarr, OME-Zarr, TIFF, .npy) a complete store is made, the input is
rewritten with other pixels at the same path (same shape, dtype and calibration, so the
config and everything the old identity hash saw are equal), and the same command is run
again: refused with a message naming the input, what changed and the fix, and the store
is unchanged byte for byte. ``--overwrite`` then recomputes every frame, and the store
equals a fresh run's on the new content. Touching a file (or a Zarr chunk) without
changing its content counts as a change: the fingerprint is size and modification time.
"""

import datetime
import os
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
import xarray as xr
import yaml
import zarr
from typer.testing import CliRunner

import cccdask
from cccdask.cli import app
from cccdask.io.fingerprint import METADATA_NAMES
from cccdask.io.store import write_ome_zarr
from cccdask.synthetic import paired_spots_series

SPACING = (0.05, 0.05)
runner = CliRunner()
FIX = ("The results in {store} were computed from the old content, so it is not resumed. Rerun with --overwrite (or "
       "output.overwrite: true) to recompute every frame from the current input, or restore the input.")


def _text(output: str) -> str:
    return re.sub(r"\s+", " ", output).strip()


def _error(output: str) -> str:
    text = _text(output)
    assert "Traceback" not in text
    return text.split("Error: ", 1)[1]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _time(ns: int) -> str:
    """Independent of cccdask's own formatting helper: UTC, microseconds."""
    return datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f UTC")


def _chunk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name not in METADATA_NAMES)


@pytest.fixture(scope="module")
def scenes():
    """Two different series of the same shape, dtype and calibration."""
    old = paired_spots_series(3, distances=[0.3, 0.4, 0.5], shape=(32, 32), spacing=SPACING, n_pairs=6, seed=1)
    new = paired_spots_series(3, distances=[0.5, 0.35, 0.45], shape=(32, 32), spacing=SPACING, n_pairs=6, seed=10)
    return old[:2], new[:2]


def _write(folder: Path, kind: str, image1: np.ndarray, image2: np.ndarray, compress: bool = False) -> dict:
    """image1 and image2 in one file of ``kind``; returns the input section of the config."""
    if kind == "ome-zarr":
        write_ome_zarr(folder / "cells.ome.zarr", np.stack([image1, image2], axis=1), "tcyx", SPACING)
        return {"image1": {"path": "cells.ome.zarr", "channel": 0}, "image2": {"path": "cells.ome.zarr", "channel": 1}}
    if kind == "zarr":
        group = zarr.open_group(str(folder / "cells.zarr"), mode="a", zarr_format=3)
        for name, data in (("c1", image1), ("c2", image2)):
            if name in group:
                group[name][...] = data
            else:
                group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=(1, 32, 32),
                                   dimension_names=["t", "y", "x"])[...] = data
        return {"image1": {"path": "cells.zarr", "component": "c1"}, "image2": {"path": "cells.zarr", "component": "c2"},
                "spacing": list(SPACING), "units": "um"}
    if kind == "tiff":
        tifffile.imwrite(folder / "cells.tif", np.stack([image1, image2], axis=1), imagej=True,
                         resolution=(1 / SPACING[1], 1 / SPACING[0]), metadata={"axes": "TCYX", "unit": "um"},
                         compression="zlib" if compress else None)
        return {"image1": {"path": "cells.tif", "channel": 0}, "image2": {"path": "cells.tif", "channel": 1}}
    np.save(folder / "c1.npy", image1)
    np.save(folder / "c2.npy", image2)
    return {"image1": {"path": "c1.npy", "dims": "tyx"}, "image2": {"path": "c2.npy", "dims": "tyx"},
            "spacing": list(SPACING), "units": "um"}


def _config(folder: Path, name: str, section: dict, store: str = "results.zarr") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"input": section, "ccc": {"max_distance": 0.5},
                                    "output": {"store": store, "reports": False}, "cluster": {"kind": "synchronous"}}))
    return path


def _assert_same_results(store: Path, reference: Path) -> None:
    got, want = xr.open_zarr(store), xr.open_zarr(reference)
    assert sorted(got.data_vars) == sorted(want.data_vars)
    for name in want.data_vars:
        np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=name)
    assert got.attrs["cccdask_status"] == "complete"


@pytest.mark.parametrize("kind", ["zarr", "ome-zarr", "tiff", "npy"])
def test_a_changed_input_is_refused_and_overwrite_recomputes(tmp_path, scenes, kind):
    (old1, old2), (new1, new2) = scenes
    section = _write(tmp_path, kind, old1, old2)
    config = _config(tmp_path, "run", section)
    store = tmp_path / "results.zarr"
    assert runner.invoke(app, ["run", str(config)]).exit_code == 0
    before = _snapshot(store)
    paths = {name: tmp_path / section[name]["path"] for name in ("image1", "image2")}
    stats = {name: (os.stat(p), _chunk_bytes(p) if p.is_dir() else 0) for name, p in paths.items()}

    _write(tmp_path, kind, new1, new2, compress=True)  # other pixels, same path, shape, dtype, calibration
    changed = []
    for name, path in paths.items():
        stat, chunk_bytes = stats[name]
        if path.is_dir():
            now = _chunk_bytes(path)
            change = (f"its chunk files changed in size (from {chunk_bytes} to {now} bytes)" if now != chunk_bytes
                      else "chunk files were rewritten (their modification times differ)")
        elif os.stat(path).st_size != stat.st_size:  # the TIFF is compressed now
            change = f"its size changed from {stat.st_size} to {os.stat(path).st_size} bytes"
        else:
            change = (f"it was modified (modification time {_time(stat.st_mtime_ns)}, now "
                      f"{_time(os.stat(path).st_mtime_ns)})")
        changed.append(f"input.{name} {path} changed since the store was started: {change}")
    for command in ("run", "validate"):
        refused = runner.invoke(app, [command, str(config)])
        assert refused.exit_code == 1, refused.output
        assert _error(refused.output) == "; ".join(changed) + ". " + FIX.format(store=store)
        assert _snapshot(store) == before  # byte for byte, the root metadata included
    assert not list(tmp_path.glob(".results.zarr*"))  # no lock or temporary left behind

    replaced = runner.invoke(app, ["run", str(config), "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert "already complete" not in _text(replaced.output)
    fresh = _config(tmp_path, "fresh", section, store="fresh.zarr")
    assert runner.invoke(app, ["run", str(fresh)]).exit_code == 0
    _assert_same_results(store, tmp_path / "fresh.zarr")
    # and the fresh run is right: cccdask.ccc on the new pixels in memory
    expected = cccdask.ccc(xr.DataArray(new1, dims=("t", "y", "x")), xr.DataArray(new2, dims=("t", "y", "x")),
                           spacing=SPACING, max_distance=0.5)
    np.testing.assert_array_equal(xr.open_zarr(store)["profile_subtracted"].values,
                                  expected["profile_subtracted"].values.astype(np.float32))  # stored as float32
    # the store now records the new content: the same command resumes it
    again = runner.invoke(app, ["run", str(config)])
    assert again.exit_code == 0 and "is complete for this config and these inputs: nothing to compute" in \
        _text(again.output)


@pytest.mark.parametrize("kind", ["npy", "ome-zarr"])
def test_touching_an_input_counts_as_a_change(tmp_path, scenes, kind):
    (old1, old2), _ = scenes
    section = _write(tmp_path, kind, old1, old2)
    config = _config(tmp_path, "run", section)
    store = tmp_path / "results.zarr"
    assert runner.invoke(app, ["run", str(config)]).exit_code == 0
    before = _snapshot(store)
    path = tmp_path / section["image1"]["path"]
    touched = path / "0" / "c" / "1" / "0" / "0" / "0" if kind == "ome-zarr" else path
    stat = os.stat(touched)
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    change = ("chunk files were rewritten (their modification times differ)" if kind == "ome-zarr" else
              f"it was modified (modification time {_time(stat.st_mtime_ns)}, now "
              f"{_time(stat.st_mtime_ns + 1_000_000_000)})")
    labels = ("image1", "image2") if kind == "ome-zarr" else ("image1",)
    refused = runner.invoke(app, ["run", str(config)])
    assert refused.exit_code == 1
    assert _error(refused.output) == "; ".join(
        f"input.{name} {path} changed since the store was started: {change}" for name in labels
    ) + ". " + FIX.format(store=store)
    assert _snapshot(store) == before


def test_overwrite_recomputes_every_frame_of_the_same_config(tmp_path, scenes):
    (old1, old2), _ = scenes
    config = _config(tmp_path, "run", _write(tmp_path, "npy", old1, old2))
    store = tmp_path / "results.zarr"
    assert runner.invoke(app, ["run", str(config)]).exit_code == 0
    right = xr.open_zarr(store)["mean"].values.copy()
    zarr.open_group(str(store), mode="r+")["mean"][1] = -1.0  # a stored value that no computation gives
    resumed = runner.invoke(app, ["run", str(config)])
    assert resumed.exit_code == 0 and "nothing to compute" in _text(resumed.output)
    assert xr.open_zarr(store)["mean"].values[1] == -1.0  # a resume keeps recorded frames
    replaced = runner.invoke(app, ["run", str(config), "--overwrite"])
    assert replaced.exit_code == 0 and "already complete" not in _text(replaced.output)
    np.testing.assert_array_equal(xr.open_zarr(store)["mean"].values, right)


def test_what_changed_in_a_zarr_folder_is_named(tmp_path):
    from cccdask.io.fingerprint import describe_change, input_fingerprint

    group = zarr.open_group(str(tmp_path / "image.zarr"), mode="w", zarr_format=3)
    array = group.create_array("0", shape=(4, 8, 8), dtype="uint16", chunks=(1, 8, 8), fill_value=0)
    array[:2] = 7  # two chunks written, two left to the fill value (no files)
    files = sorted(p for p in (tmp_path / "image.zarr" / "0").rglob("*") if p.is_file() and p.name != "zarr.json")
    first = input_fingerprint(tmp_path / "image.zarr")
    assert (first["kind"], first["chunks"], first["chunk_bytes"]) == ("folder", 2, sum(p.stat().st_size for p in files))
    assert describe_change(first, input_fingerprint(tmp_path / "image.zarr")) is None  # reading changes nothing
    array[2] = 7
    assert describe_change(first, input_fingerprint(tmp_path / "image.zarr")) == \
        "its number of chunk files changed from 2 to 3"
    second = input_fingerprint(tmp_path / "image.zarr")
    group.attrs["note"] = "calibrated again"
    assert describe_change(second, input_fingerprint(tmp_path / "image.zarr")) == \
        "its array metadata changed (shape, data type, chunks, axes or attributes)"
