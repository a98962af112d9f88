"""The direct chunk reader returns exactly what Zarr's own slicing returns, or leaves the read to Zarr."""

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, ZstdCodec

from cccdask.io.chunk_reader import DirectChunkReader, chunk_reader

SELECTIONS = [
    (slice(None),),
    (slice(1, 4), 1),  # frames 1-3 of channel 1: chunks cut along t
    (3, 0, slice(5, 20), slice(None)),  # a window across chunk edges
    (4,),  # the last frame: edge chunks along y and x
    (slice(0, 0),),  # empty
    (-1, 1),
    (slice(0, 2), 1, slice(0, 16), slice(0, 32)),  # exactly one chunk
    (slice(2, 4), 0, slice(16, 32), slice(32, 50)),  # exactly one chunk at the edge (padded in storage)
    (slice(None, None, 2), 1),  # a step: read through Zarr
]


@pytest.mark.parametrize("codecs", ["blosc", "zstd", "zstd big-endian", "uncompressed"])
def test_direct_reads_equal_zarr(tmp_path, codecs):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 60000, (5, 2, 37, 50)).astype(np.uint16)
    options = {"blosc": dict(compressors=[BloscCodec()]), "zstd": dict(compressors=[ZstdCodec()]),
               "zstd big-endian": dict(serializer=BytesCodec(endian="big"), compressors=[ZstdCodec()]),
               "uncompressed": dict(compressors=None)}[codecs]
    array = zarr.create_array(tmp_path / "a.zarr", data=data, chunks=(2, 1, 16, 32), zarr_format=3, **options)
    reader = chunk_reader(zarr.open_array(tmp_path / "a.zarr", mode="r"))
    assert isinstance(reader, DirectChunkReader)
    # blosc and little-endian zstd decode whole chunks straight into the result
    assert (reader._numcodec is not None) == (codecs in ("blosc", "zstd"))
    for selection in SELECTIONS:
        got = reader[selection]
        assert got.dtype == data.dtype and got.flags.writeable
        np.testing.assert_array_equal(got, array[selection])
        np.testing.assert_array_equal(got, data[selection])


def test_missing_chunks_read_as_the_fill_value(tmp_path):
    array = zarr.create_array(tmp_path / "a.zarr", shape=(4, 30, 30), chunks=(1, 16, 16), dtype=np.float32,
                              fill_value=7.5, zarr_format=3)
    array[1, 3:20, :] = np.arange(17 * 30, dtype=np.float32).reshape(17, 30)
    reader = chunk_reader(zarr.open_array(tmp_path / "a.zarr", mode="r"))
    assert isinstance(reader, DirectChunkReader) and reader._numcodec is not None
    for selection in [(slice(None),), (0,), (slice(1, 3), slice(10, 30), 4), (0, slice(0, 16), slice(0, 16))]:
        np.testing.assert_array_equal(reader[selection], array[selection])
    assert reader[0, 0, 0] == 7.5 and reader[1, 3, 1] == 1.0


def test_other_layouts_are_read_by_zarr(tmp_path):
    data = np.arange(4 * 8 * 8, dtype=np.int32).reshape(4, 8, 8)
    v2 = zarr.create_array(tmp_path / "v2.zarr", data=data, chunks=(1, 8, 8), zarr_format=2)
    sharded = zarr.create_array(tmp_path / "sharded.zarr", data=data, chunks=(1, 4, 4), shards=(2, 8, 8),
                                zarr_format=3)
    in_memory = zarr.create_array(zarr.storage.MemoryStore(), data=data, chunks=(1, 8, 8))
    for array in (v2, sharded, in_memory, data):
        assert chunk_reader(array) is array
