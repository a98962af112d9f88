"""Read a region of a Zarr v3 array on local disk chunk by chunk, in the calling thread.

Zarr 3's synchronous ``array[...]`` sends every read through its asyncio event loop
thread, and every chunk's file read and decompression through a thread pool: two thread
hand-offs and several coroutines per chunk. For the inputs of a time series (one frame
and channel per chunk) that costs more CPU than the work itself: on a 256x256 float32
chunk, ~1.3 ms against ~0.16 ms for reading the file and decompressing it here (a 2x
difference on 1024x1024 chunks), and a pipeline task reads two or three such chunks per
frame. :func:`chunk_reader` reads the chunk files itself and decodes them with the
array's own codecs (their synchronous decode; a whole Blosc or Zstd chunk straight into
the result, through the numcodecs codec Zarr's wraps), so the values are Zarr's own, for the
common layout: a Zarr v3 array in a local directory, a regular chunk grid, no sharding,
no array-to-array codec, every codec able to decode synchronously. Any other array
(Zarr v2, sharded, a TIFF through tifffile's store, ...) is read through Zarr as before.
"""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import numpy as np


def chunk_reader(array):
    """A reader of ``array`` that slices like it: the direct reader where it applies, else ``array``.

    Parameters
    ----------
    array : zarr.Array or array-like
        What :func:`cccdask.io.readers.stored_array` returned.
    """
    try:
        return DirectChunkReader(array)
    except _NotSupported:
        return array


class _NotSupported(Exception):
    pass


class DirectChunkReader:
    """Basic selections (integers and step-1 slices) of a local, unsharded Zarr v3 array.

    The result equals ``array[selection]`` (a NumPy array of the array's dtype); other
    selections go through ``array`` itself.
    """

    def __init__(self, array):
        try:
            import zarr
            from zarr.abc.codec import ArrayBytesCodec, BytesBytesCodec, SupportsSyncCodec
            from zarr.codecs.sharding import ShardingCodec
            from zarr.core.buffer import default_buffer_prototype
            from zarr.core.chunk_grids import RegularChunkGrid
            from zarr.storage import LocalStore
        except ImportError as error:  # another Zarr than the 3.1 series this was written for
            raise _NotSupported(str(error)) from None
        if not isinstance(array, zarr.Array):
            raise _NotSupported("not a Zarr array")
        metadata = array.metadata
        if metadata.zarr_format != 3 or not isinstance(array.store, LocalStore):
            raise _NotSupported("not a Zarr v3 array in a local directory")
        if not isinstance(metadata.chunk_grid, RegularChunkGrid):
            raise _NotSupported("irregular chunk grid")
        codecs = list(metadata.codecs)
        if (not codecs or not isinstance(codecs[0], ArrayBytesCodec) or isinstance(codecs[0], ShardingCodec)
                or not all(isinstance(c, BytesBytesCodec) for c in codecs[1:])
                or not all(isinstance(c, SupportsSyncCodec) for c in codecs)):
            raise _NotSupported("sharded, or codecs without a synchronous decode")
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)
        self.chunks = tuple(metadata.chunk_grid.chunk_shape)
        self.folder = Path(array.store.root) / array.path
        self._metadata = metadata
        self._codecs = codecs
        self._prototype = default_buffer_prototype()
        self._spec = metadata.get_chunk_spec((0,) * len(self.shape), array._async_array.config, self._prototype)
        self._numcodec = _numcodec_decoding_into(codecs, self.dtype)

    def __getitem__(self, selection):
        bounds = self._bounds(selection)
        if bounds is None:
            return self.array[selection]
        squeeze = tuple(0 if squeeze else slice(None) for _, _, squeeze in bounds)
        out = np.empty(tuple(stop - start for start, stop, _ in bounds), dtype=self.dtype)
        if out.size:
            ranges = [range(start // c, math.ceil(stop / c)) for (start, stop, _), c in zip(bounds, self.chunks)]
            for coords in itertools.product(*ranges):
                source, target = [], []
                for (start, stop, _), index, c in zip(bounds, coords, self.chunks):
                    lo, hi = max(start, index * c), min(stop, (index + 1) * c)
                    source.append(slice(lo - index * c, hi - index * c))
                    target.append(slice(lo - start, hi - start))
                region = out[tuple(target)]
                if region.shape == self.chunks:
                    self._chunk(coords, out=region)
                else:
                    region[...] = self._chunk(coords)[tuple(source)]
        return out[squeeze]

    def _bounds(self, selection):
        """(start, stop, squeeze) per axis, or None for a selection this reader leaves to Zarr."""
        if not isinstance(selection, tuple):
            selection = (selection,)
        if len(selection) > len(self.shape):
            return None
        selection = selection + (slice(None),) * (len(self.shape) - len(selection))
        bounds = []
        for item, n in zip(selection, self.shape):
            if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
                index = int(item) + (n if item < 0 else 0)
                if not 0 <= index < n:
                    return None  # Zarr raises its own error
                bounds.append((index, index + 1, True))
            elif isinstance(item, slice):
                start, stop, step = item.indices(n)
                if step != 1:
                    return None
                bounds.append((start, max(start, stop), False))
            else:
                return None
        return bounds

    def _chunk(self, coords: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray:
        """One whole chunk, decoded (the fill value where no chunk file was written).

        With ``out`` (an array of the chunk's shape) the chunk is written there: a Blosc
        or Zstd chunk is decoded straight into it when it is C-contiguous (see
        :func:`_numcodec_decoding_into`), any other is decoded and copied.
        """
        try:
            data = (self.folder / self._metadata.encode_chunk_key(coords)).read_bytes()
        except FileNotFoundError:
            data = None
        if data is not None and out is not None and self._numcodec is not None and out.flags.c_contiguous:
            self._numcodec.decode(data, out=out)
            return out
        if data is None:
            chunk = np.full(self.chunks, self._spec.fill_value, dtype=self.dtype)
        else:
            buffer = self._prototype.buffer.from_bytes(data)
            for codec in reversed(self._codecs[1:]):
                buffer = codec._decode_sync(buffer, self._spec)
            chunk = self._codecs[0]._decode_sync(buffer, self._spec).as_numpy_array().reshape(self.chunks)
            chunk = chunk.astype(self.dtype, copy=False)  # stored big-endian: in this machine's order
        if out is None:
            return chunk
        out[...] = chunk
        return out


def _numcodec_decoding_into(codecs, dtype: np.dtype):
    """The numcodecs codec that decodes a chunk file into an array, for the commonest layout; else None.

    The layout: the bytes codec in this machine's byte order, then one Blosc or Zstd codec
    (Zarr's own wrap numcodecs', which decode into a given buffer). Zarr decodes into a
    read-only buffer of its own: a batch of 1024x1024 float32 frames then costs a copy of
    about 0.5-1 ms per frame and channel, a quarter to half of the read.
    """
    from zarr.codecs import BloscCodec, BytesCodec, ZstdCodec

    if len(codecs) != 2 or not isinstance(codecs[0], BytesCodec) or dtype.kind not in "biuf":
        return None
    endian = codecs[0].endian
    if dtype.itemsize > 1 and endian is not None and endian.value != sys.byteorder:
        return None
    if isinstance(codecs[1], BloscCodec):
        return codecs[1]._blosc_codec
    if isinstance(codecs[1], ZstdCodec):
        return codecs[1]._zstd_codec
    return None
