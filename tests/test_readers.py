"""Lazy readers: real Zarr (v2, v3), OME-Zarr (0.4, 0.5), TIFF (plain, ImageJ, OME) and .npy
files written in tmp_path, read back with cccdask.io.readers.open_image."""

from __future__ import annotations

import importlib.util
import json
import pickle

import dask.array as da
import dask
import numpy as np
import pytest
import tifffile
import zarr

from cccdask.frames import prepare_inputs
from cccdask.io.readers import open_image, select_channel, stored_array


@pytest.fixture
def rng():
    return np.random.default_rng(20261124)


def frame_chunks(shape, dims):
    """The chunking open_image promises: 1 along t and c, whole extent along z, y, x."""
    return tuple((1,) * n if d in "tc" else (n,) for d, n in zip(dims, shape))


def assert_lazy_per_frame(image):
    assert isinstance(image.data, da.Array)
    assert image.data.chunks == frame_chunks(image.shape, image.dims)


def assert_physical_coords(image, spacing, units, time_interval=None, time_units=None):
    spatial = [d for d in "zyx" if d in image.dims]
    np.testing.assert_allclose(image.attrs["spacing"], spacing, rtol=1e-6)
    assert image.attrs["units"] == units
    for d, step in zip(spatial, spacing):
        np.testing.assert_allclose(image[d].values, np.arange(image.sizes[d]) * step, rtol=1e-6)
        assert image[d].attrs["units"] == units
    if time_interval is not None:
        n = image.sizes["t"]
        np.testing.assert_allclose(image["t"].values, np.arange(n) * time_interval, rtol=1e-6)
        np.testing.assert_array_equal(image["frame"].values, np.arange(n))
        assert image["frame"].dims == ("t",)
        assert image.attrs["time_interval"] == pytest.approx(time_interval, rel=1e-6)
        assert image.attrs["time_units"] == time_units
        assert image["t"].attrs["units"] == time_units


# ----------------------------------------------------------------------------- Zarr


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_plain_zarr_array_with_dims_is_transposed_to_tczyx(tmp_path, rng, zarr_format):
    written = rng.integers(0, 4000, size=(2, 3, 5, 6), dtype=np.uint16)  # stored as c, t, y, x
    path = tmp_path / "plain.zarr"
    zarr.create_array(path, data=written, chunks=(1, 1, 5, 3), zarr_format=zarr_format)

    image = open_image(path, dims="ctyx")

    assert image.dims == ("t", "c", "y", "x")
    np.testing.assert_array_equal(image.values, written.transpose(1, 0, 2, 3))
    assert_lazy_per_frame(image)
    assert_physical_coords(image, (1.0, 1.0), "pixel", 1.0, "frame")
    assert image.attrs["source"] == str(path)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_dimension_names_name_the_dims(tmp_path, rng, zarr_format):
    written = rng.normal(size=(4, 3, 5, 6)).astype(np.float32)
    path = tmp_path / "named.zarr"
    if zarr_format == 3:
        zarr.create_array(path, data=written, zarr_format=3, dimension_names=["z", "t", "y", "x"])
    else:
        array = zarr.create_array(path, data=written, zarr_format=2)
        array.attrs["_ARRAY_DIMENSIONS"] = ["z", "t", "y", "x"]  # xarray's convention for v2

    image = open_image(path)

    assert image.dims == ("t", "z", "y", "x")
    np.testing.assert_array_equal(image.values, written.transpose(1, 0, 2, 3))
    assert_lazy_per_frame(image)


@pytest.mark.parametrize("shape, dims", [((5, 6), ("y", "x")), ((3, 5, 6), ("z", "y", "x"))])
def test_2d_and_3d_without_metadata_default_to_yx_and_zyx(tmp_path, rng, shape, dims):
    written = rng.integers(0, 255, size=shape, dtype=np.uint8)
    path = tmp_path / "frame.zarr"
    zarr.create_array(path, data=written)

    image = open_image(path)

    assert image.dims == dims
    np.testing.assert_array_equal(image.values, written)
    assert image.attrs["time_interval"] is None and "t" not in image.coords


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_group_component_and_errors(tmp_path, rng, zarr_format):
    path = tmp_path / "group.zarr"
    group = zarr.open_group(path, mode="w", zarr_format=zarr_format)
    first = rng.integers(0, 100, size=(4, 5), dtype=np.int32)
    second = rng.integers(0, 100, size=(3, 4, 5), dtype=np.int32)
    group.create_array("first", data=first)
    group.create_group("nested").create_array("second", data=second)

    np.testing.assert_array_equal(open_image(path, component="first").values, first)
    nested = open_image(path, component="nested/second")
    assert nested.dims == ("z", "y", "x")
    np.testing.assert_array_equal(nested.values, second)
    # a subgroup with one array opens that array
    np.testing.assert_array_equal(open_image(path, component="nested").values, second)

    with pytest.raises(ValueError, match=r"component=.*first.*nested/second"):
        open_image(path)
    with pytest.raises(ValueError, match=r"'missing' is not in the Zarr group.*first.*nested/second"):
        open_image(path, component="missing")
    with pytest.raises(ValueError, match=r"is a Zarr array, not a group"):
        open_image(path / "first", component="0")


def test_group_with_a_single_array_opens_it(tmp_path, rng):
    path = tmp_path / "single.zarr"
    written = rng.integers(0, 100, size=(6, 7), dtype=np.uint16)
    zarr.open_group(path, mode="w").create_array("only", data=written)
    np.testing.assert_array_equal(open_image(path).values, written)


def test_4d_without_metadata_asks_for_dims(tmp_path):
    path = tmp_path / "4d.zarr"
    zarr.create_array(path, shape=(2, 3, 4, 5), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"4 dims.*dims="):
        open_image(path)


@pytest.mark.parametrize(
    "dims, message",
    [
        ("tqyx", r"\['q'\].*t, c, z, y, x"),
        ("tyx", r"names 3 axes but the image has 4"),
        ("ttyx", "repeats"),
        ("tczy", "lack y or x"),
    ],
)
def test_bad_dims_are_rejected(tmp_path, dims, message):
    path = tmp_path / "4d.zarr"
    zarr.create_array(path, shape=(2, 3, 4, 5), dtype=np.uint8)
    with pytest.raises(ValueError, match=message):
        open_image(path, dims=dims)


def test_a_terabyte_store_opens_without_reading_chunks(tmp_path):
    path = tmp_path / "huge.zarr"
    shape = (2000, 2, 64, 4096, 4096)  # uint16: 8.8 TB, none of it written
    chunks = (1, 1, 16, 1024, 1024)
    zarr.create_array(path, shape=shape, chunks=chunks, dtype=np.uint16, dimension_names=list("tczyx"))

    image = open_image(path, channel=1)

    assert image.shape == (2000, 64, 4096, 4096)
    assert image.nbytes == 2000 * 64 * 4096 * 4096 * 2
    # a 2 GiB frame is over Dask's chunk size: it keeps the stored chunks (a tile reads its part)
    assert image.data.chunksize == (1, 16, 1024, 1024) and image.data.numblocks == (2000, 4, 4, 4)
    assert sorted(p.name for p in path.iterdir()) == ["zarr.json"]  # nothing was written or read


def test_a_frame_over_the_dask_chunk_size_keeps_the_stored_chunks(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 4000, (3, 32, 64, 64), dtype=np.uint16)  # 256 KiB frames
    cases = {"small.zarr": (1, 8, 32, 32), "stored.zarr": (1, 8, 32, 32), "large.zarr": (1, 32, 64, 64)}
    for name, chunks in cases.items():
        zarr.create_array(tmp_path / name, data=data, chunks=chunks, dimension_names=list("tzyx"))
    small = open_image(tmp_path / "small.zarr")  # the default chunk size, 128 MiB: one chunk per frame
    with dask.config.set({"array.chunk-size": "64KiB"}):
        stored = open_image(tmp_path / "stored.zarr")  # 16 KiB stored chunks kept
        large = open_image(tmp_path / "large.zarr")  # 256 KiB stored chunks: Dask's chunks within 64 KiB
    assert small.data.chunksize == (1, 32, 64, 64)
    assert stored.data.chunksize == (1, 8, 32, 32)
    assert large.data.chunksize[0] == 1 and np.prod(large.data.chunksize) * 2 <= 64 * 1024
    tiles = open_image(tmp_path / "large.zarr", frame_chunks={"z": 16, "y": 24, "x": 64})  # the tiled path's reads
    assert tiles.data.chunks[1:] == ((16, 16), (24, 24, 16), (64,))
    for image in (small, stored, large, tiles):
        np.testing.assert_array_equal(image.values, data)


# ------------------------------------------------------------------------- OME-Zarr


def _multiscales(axes, dataset_scales, level_scale):
    return {
        "axes": axes,
        "datasets": [
            {
                "path": str(level),
                "coordinateTransformations": [
                    {"type": "scale", "scale": scale},
                    {"type": "translation", "translation": [7.0] * len(scale)},
                ],
            }
            for level, scale in enumerate(dataset_scales)
        ],
        "coordinateTransformations": [{"type": "scale", "scale": level_scale}],
    }


def test_ome_zarr_04(tmp_path, rng):
    level0 = rng.integers(0, 4000, size=(3, 2, 4, 8, 10), dtype=np.uint16)
    level1 = level0[..., ::2, ::2]
    axes = [
        {"name": "t", "type": "time", "unit": "second"},
        {"name": "c", "type": "channel"},
        {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    dataset_scales = [[1.0, 1.0, 0.5, 0.1, 0.1], [1.0, 1.0, 0.5, 0.2, 0.2]]
    level_scale = [2.5, 1.0, 1.0, 1.5, 1.5]
    path = tmp_path / "image.ome.zarr"
    group = zarr.open_group(path, mode="w", zarr_format=2)
    group.create_array("0", data=level0, chunks=(1, 1, 4, 8, 10))
    group.create_array("1", data=level1, chunks=(1, 1, 4, 4, 5))
    multiscales = _multiscales(axes, dataset_scales, level_scale) | {"version": "0.4", "name": "image"}
    (path / ".zattrs").write_text(json.dumps({"multiscales": [multiscales]}))

    image = open_image(path)

    assert image.dims == ("t", "c", "z", "y", "x")
    np.testing.assert_array_equal(image.values, level0)
    assert_lazy_per_frame(image)
    expected = np.multiply(dataset_scales[0], level_scale)
    assert_physical_coords(image, expected[2:], "um", expected[0], "s")

    coarse = open_image(path, component="1")
    np.testing.assert_array_equal(coarse.values, level1)
    assert_physical_coords(coarse, np.multiply(dataset_scales[1], level_scale)[2:], "um", expected[0], "s")

    # the level-0 array opened by its own path still finds the image's metadata
    direct = open_image(path / "0")
    assert_physical_coords(direct, expected[2:], "um", expected[0], "s")


def test_ome_zarr_05_with_channel_selection(tmp_path, rng):
    level0 = rng.normal(size=(2, 3, 5, 6, 7)).astype(np.float32)
    axes = [
        {"name": "t", "type": "time", "unit": "millisecond"},
        {"name": "c", "type": "channel"},
        {"name": "z", "type": "space", "unit": "nanometer"},
        {"name": "y", "type": "space", "unit": "nanometer"},
        {"name": "x", "type": "space", "unit": "nanometer"},
    ]
    dataset_scales = [[40.0, 1.0, 300.0, 65.0, 65.0]]
    level_scale = [1.0, 1.0, 1.0, 1.0, 1.0]
    path = tmp_path / "image.ome.zarr"
    group = zarr.open_group(path, mode="w", zarr_format=3)
    group.create_array("0", data=level0, chunks=(1, 1, 5, 6, 7), dimension_names=list("tczyx"))
    metadata_file = path / "zarr.json"
    metadata = json.loads(metadata_file.read_text())
    multiscales = _multiscales(axes, dataset_scales, level_scale)
    metadata["attributes"] = {"ome": {"version": "0.5", "multiscales": [multiscales]}}
    metadata_file.write_text(json.dumps(metadata))

    image = open_image(path, channel=2)

    assert image.dims == ("t", "z", "y", "x")
    np.testing.assert_array_equal(image.values, level0[:, 2])
    assert image.attrs["channel"] == 2
    assert_lazy_per_frame(image)
    assert_physical_coords(image, dataset_scales[0][2:], "nm", dataset_scales[0][0], "ms")
    # the coordinates are what cccdask's own input handling reads the spacing from
    frames = prepare_inputs(image, image)
    assert frames.spacing == pytest.approx(tuple(dataset_scales[0][2:]))
    assert frames.units == "nm"

    with pytest.raises(ValueError, match=r"channel 3 is out of range.*has 3 channels"):
        open_image(path, channel=3)


def test_ome_zarr_axis_names_outside_tczyx_need_dims(tmp_path, rng):
    written = rng.integers(0, 9, size=(3, 4, 5), dtype=np.uint8)
    path = tmp_path / "angles.ome.zarr"
    group = zarr.open_group(path, mode="w", zarr_format=2)
    group.create_array("0", data=written)
    axes = [{"name": "angle", "type": "space"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    multiscales = _multiscales(axes, [[2.0, 0.5, 0.5]], [1, 1, 1]) | {"version": "0.4"}
    (path / ".zattrs").write_text(json.dumps({"multiscales": [multiscales]}))

    with pytest.raises(ValueError, match=r"angle.*dims="):
        open_image(path)
    image = open_image(path, dims="zyx")
    assert image.dims == ("z", "y", "x")
    np.testing.assert_array_equal(image.values, written)
    assert_physical_coords(image, (2.0, 0.5, 0.5), "um")  # scales without units: the "um" convention


# ----------------------------------------------------------------------------- TIFF


def test_imagej_hyperstack(tmp_path, rng):
    written = rng.integers(0, 4000, size=(3, 4, 2, 8, 9), dtype=np.uint16)  # T, Z, C, Y, X
    x_size, y_size, z_size, interval = 0.2, 0.25, 0.5, 2.5
    path = tmp_path / "hyperstack.tif"
    tifffile.imwrite(
        path,
        written,
        imagej=True,
        resolution=(1 / x_size, 1 / y_size),
        metadata={"spacing": z_size, "unit": "um", "finterval": interval, "axes": "TZCYX"},
    )

    image = open_image(path)

    assert image.dims == ("t", "c", "z", "y", "x")
    np.testing.assert_array_equal(image.values, written.transpose(0, 2, 1, 3, 4))
    assert_lazy_per_frame(image)
    assert_physical_coords(image, (z_size, y_size, x_size), "um", interval, "s")

    second = open_image(path, channel=1)
    assert second.dims == ("t", "z", "y", "x")
    np.testing.assert_array_equal(second.values, written[:, :, 1])
    with pytest.raises(ValueError, match=r"channel 2 is out of range.*has 2 channels"):
        open_image(path, channel=2)

    overridden = open_image(path, spacing=(1.0, 2.0, 3.0), units="nm")
    assert_physical_coords(overridden, (1.0, 2.0, 3.0), "nm", interval, "s")
    with pytest.raises(ValueError, match="spacing has 2 values"):
        open_image(path, spacing=(1.0, 2.0))

    # the stored array behind it, in storage order, read without a Dask graph
    array, dims = stored_array(path)
    assert dims == ("t", "z", "c", "y", "x") and not isinstance(array, da.Array)
    np.testing.assert_array_equal(np.asarray(array[1:3]), written[1:3])


@pytest.mark.parametrize("unit", ["micron", "\\u00B5m"])  # ImageJ writes µm escaped: descriptions are ASCII
def test_imagej_2d_time_series_units_and_time_unit(tmp_path, rng, unit):
    written = rng.integers(0, 255, size=(5, 6, 7), dtype=np.uint8)
    path = tmp_path / "series.tif"
    pixel = 0.125
    tifffile.imwrite(
        path,
        written,
        imagej=True,
        resolution=(1 / pixel, 1 / pixel),
        metadata={"axes": "TYX", "unit": unit, "finterval": 0.5, "tunit": "min"},
    )

    image = open_image(path)

    assert image.dims == ("t", "y", "x")
    np.testing.assert_array_equal(image.values, written)
    assert_lazy_per_frame(image)
    assert_physical_coords(image, (pixel, pixel), "um", 0.5, "min")


def test_ome_tiff_with_units_converted_to_x(tmp_path, rng):
    written = rng.integers(0, 60000, size=(2, 3, 4, 6, 7), dtype=np.uint16)  # T, C, Z, Y, X
    metadata = {
        "axes": "TCZYX",
        "PhysicalSizeX": 0.11,
        "PhysicalSizeY": 0.12,
        "PhysicalSizeZ": 350.0,
        "PhysicalSizeZUnit": "nm",
        "TimeIncrement": 1.5,
        "TimeIncrementUnit": "ms",
    }
    path = tmp_path / "image.ome.tif"
    tifffile.imwrite(path, written, metadata=metadata)

    image = open_image(path)

    assert image.dims == ("t", "c", "z", "y", "x")
    np.testing.assert_array_equal(image.values, written)
    assert_lazy_per_frame(image)
    # X and Y default to micrometres in OME; Z (nm) is converted to X's unit
    assert_physical_coords(image, (350.0 / 1000.0, 0.12, 0.11), "um", 1.5, "ms")


def test_pyramidal_ome_tiff_reads_full_resolution(tmp_path, rng):
    written = rng.integers(0, 4000, size=(2, 16, 16), dtype=np.uint16)
    path = tmp_path / "pyramid.ome.tif"
    with tifffile.TiffWriter(path) as writer:
        writer.write(written, subifds=1, metadata={"axes": "CYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.4})
        writer.write(written[:, ::2, ::2], subfiletype=1)

    image = open_image(path)

    assert image.dims == ("c", "y", "x")
    np.testing.assert_array_equal(image.values, written)
    assert_physical_coords(image, (0.4, 0.3), "um")


def test_tiff_compression_without_decoder_fails_at_open(tmp_path, rng):
    if importlib.util.find_spec("imagecodecs") is not None:
        pytest.skip("imagecodecs is installed, so LZW can be decoded")
    path = tmp_path / "lzw.tif"
    tifffile.imwrite(path, rng.integers(0, 255, size=(5, 6), dtype=np.uint8))
    with tifffile.TiffFile(path, mode="r+b") as tif:  # mark the strip as LZW-compressed
        tif.pages.first.tags["Compression"].overwrite(5)
    with pytest.raises(ValueError, match=r"LZW-compressed.*imagecodecs"):
        open_image(path)


def test_plain_tiff(tmp_path, rng):
    stack = rng.integers(0, 255, size=(3, 5, 6), dtype=np.uint8)
    series = rng.integers(0, 255, size=(2, 3, 5, 6), dtype=np.uint8)
    stack_path, series_path = tmp_path / "stack.tif", tmp_path / "series.tif"
    # a page stack without any description, and a shape description without axes
    tifffile.imwrite(stack_path, stack, photometric="minisblack", metadata=None)
    tifffile.imwrite(series_path, series, photometric="minisblack")

    image = open_image(stack_path)
    assert image.dims == ("z", "y", "x")
    np.testing.assert_array_equal(image.values, stack)
    assert_physical_coords(image, (1.0, 1.0, 1.0), "pixel")

    with pytest.raises(ValueError, match=r"4 dims.*dims="):
        open_image(series_path)
    timed = open_image(series_path, dims="tzyx")
    np.testing.assert_array_equal(timed.values, series)
    assert_lazy_per_frame(timed)
    with pytest.raises(ValueError, match="Zarr groups only"):
        open_image(stack_path, component="0")


def test_tiff_resolution_in_centimetres(tmp_path, rng):
    written = rng.integers(0, 255, size=(5, 6), dtype=np.uint8)
    path = tmp_path / "calibrated.tif"
    pixel_cm = 2.5e-5  # 0.25 um
    # metadata=None: no description, so the resolution tags are the only calibration
    resolution = (1 / pixel_cm, 1 / pixel_cm)
    tifffile.imwrite(path, written, resolution=resolution, resolutionunit="CENTIMETER", metadata=None)
    image = open_image(path)
    assert image.dims == ("y", "x")
    np.testing.assert_array_equal(image.values, written)
    assert_physical_coords(image, (pixel_cm * 1e4, pixel_cm * 1e4), "um")


# ----------------------------------------------------------------------------- .npy


def test_npy_is_memory_mapped_per_frame(tmp_path, rng):
    written = rng.normal(size=(4, 2, 16, 16))
    path = tmp_path / "series.npy"
    np.save(path, written)

    image = open_image(path, dims="tcyx", spacing=0.1, units="micron")

    assert image.dims == ("t", "c", "y", "x")
    np.testing.assert_array_equal(image.values, written)
    assert_lazy_per_frame(image)
    assert_physical_coords(image, (0.1, 0.1), "um", 1.0, "frame")
    np.testing.assert_array_equal(image.isel(t=3, c=1).values, written[3, 1])


@pytest.mark.parametrize("kind", ["npy", "tiff", "zarr"])
def test_graph_carries_no_pixels_and_survives_pickling(tmp_path, rng, kind):
    written = rng.normal(size=(6, 64, 64)).astype(np.float32)
    path = tmp_path / f"image.{kind}"
    if kind == "npy":
        np.save(path, written)
        path = tmp_path / "image.npy"
    elif kind == "tiff":
        tifffile.imwrite(path, written, imagej=True, metadata={"axes": "TYX"})
    else:
        zarr.create_array(path, data=written, dimension_names=list("tyx"))

    image = open_image(path, dims="tyx")
    payload = pickle.dumps(image.data)

    assert len(payload) < written.nbytes / 10
    np.testing.assert_array_equal(pickle.loads(payload).compute(scheduler="sync"), written)


def test_reads_on_worker_processes(tmp_path, rng):
    distributed = pytest.importorskip("distributed")
    written = rng.integers(0, 4000, size=(4, 2, 12, 12), dtype=np.uint16)
    tiff_path, npy_path = tmp_path / "hs.tif", tmp_path / "hs.npy"
    tifffile.imwrite(tiff_path, written, imagej=True, metadata={"axes": "TCYX"})
    np.save(npy_path, written)

    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster, distributed.Client(cluster) as client:
        from_tiff = open_image(tiff_path, channel=1)
        from_npy = open_image(npy_path, dims="tcyx", channel=1)
        sums = client.compute([from_tiff.sum(("y", "x")).data, from_npy.sum(("y", "x")).data], sync=True)

    expected = written[:, 1].astype(np.int64).sum(axis=(1, 2))
    np.testing.assert_array_equal(sums[0], expected)
    np.testing.assert_array_equal(sums[1], expected)


# --------------------------------------------------------------------------- errors


def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "nowhere" / "image.tif"
    with pytest.raises(FileNotFoundError, match="nowhere/image.tif"):
        open_image(missing)


@pytest.mark.parametrize("make", ["text", "directory"])
def test_unknown_format_lists_supported_ones(tmp_path, make):
    path = tmp_path / "image.tif"
    if make == "text":
        path.write_text("not an image")
    else:
        path.mkdir()
    with pytest.raises(ValueError, match=r"not an image format.*Zarr.*OME-Zarr.*TIFF.*\.npy"):
        open_image(path)


def test_select_channel_rejects_non_integers(tmp_path, rng):
    path = tmp_path / "c.npy"
    np.save(path, rng.normal(size=(3, 4, 5)))
    image = open_image(path, dims="cyx")
    with pytest.raises(ValueError, match="integer index"):
        select_channel(image, 1.5)
    with pytest.raises(ValueError, match=r"channel -1 is out of range.*3 channels"):
        select_channel(image, -1)
    np.testing.assert_array_equal(select_channel(image, 0).values, np.load(path)[0])
