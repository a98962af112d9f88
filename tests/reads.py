"""A Dask array whose chunk reads are counted, for tests of how often and how many at once."""

from __future__ import annotations

import weakref

import dask.array as da
import numpy as np


def counted_reads(values: np.ndarray, chunks, counts: dict) -> da.Array:
    """``values`` (2D) as a Dask array whose every chunk read is counted: ``counts["reads"]``
    and the most read chunks alive at once, ``counts["peak"]``."""

    def read(block_info=None):
        where = tuple(slice(lo, hi) for lo, hi in block_info[None]["array-location"])
        block = values[where].copy()
        counts["reads"] += 1
        counts["alive"] += 1
        counts["peak"] = max(counts["peak"], counts["alive"])
        weakref.finalize(block, lambda: counts.__setitem__("alive", counts["alive"] - 1))
        return block

    return da.map_blocks(read, chunks=chunks, dtype=values.dtype, meta=np.empty((0, 0), values.dtype))

