"""The driver's block writer: small per-frame results written in blocks of many frames.

Scalars, profiles and other small per-frame outputs are stored in chunks of up to
:data:`BLOCK_FRAMES` frames along ``t`` (:func:`block_frames`), so a long series has
a few files per variable instead of one per frame. Tasks never write these chunks:
they return the values (:func:`cccdask.pipeline.task.compute_frames`) and the driver,
the only writer of these arrays, keeps the blocks that still wait for frames in memory
(:class:`BlockWriter`). On :meth:`BlockWriter.flush` every changed block is written
whole (one chunk per variable, written to a temporary file and renamed by Zarr); the
completion record is written after that (:class:`~cccdask.pipeline.record.Completion`),
so a frame recorded complete always has its values on disk. A run killed in the middle
of a block write leaves whole chunks holding values of frames not yet recorded: the
rerun computes those frames again and writes the same bytes.

A block met for the first time is read back from the store, so a resumed run keeps
the values of frames recorded by the earlier run. A block is dropped from memory once
every one of its frames is recorded and written: the driver holds only the blocks of
frames in flight (the submission window), whatever the series' length.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cccdask.io import store as results_store

BLOCK_FRAMES = 1024
"""Most frames in one chunk of a small per-frame variable."""
BLOCK_BYTES = 8 * 2**20
"""Target uncompressed bytes of one such chunk (fewer frames for long profiles)."""
SMALL_FRAME_BYTES = 2**20
"""Per-frame bytes up to which a non-image output is written by the driver in blocks."""


def frame_bytes(shape: tuple[int, ...], dtype) -> int:
    """Bytes one frame of a variable takes (shape without t); 64 per text entry."""
    dtype = np.dtype(dtype)
    item = 64 if dtype.kind == "O" else dtype.itemsize
    return int(np.prod(shape, dtype=np.int64)) * item


def is_small(dims: tuple[str, ...], shape: tuple[int, ...], dtype, spatial_dims: tuple[str, ...]) -> bool:
    """Whether a per-frame output (dims and shape without t) is written by the driver in blocks.

    Image-sized outputs (contributions, masks, maps) and correlograms (``shift_*`` dims)
    keep per-task chunks written by the tasks, as do outputs over 1 MiB per frame.
    """
    if any(d in spatial_dims or d.startswith("shift_") for d in dims):
        return False
    return frame_bytes(shape, dtype) <= SMALL_FRAME_BYTES


def block_frames(shape: tuple[int, ...], dtype, n_frames: int) -> int:
    """Frames per chunk along t of a small variable: up to 1024, about 8 MiB uncompressed."""
    by_bytes = BLOCK_BYTES // max(frame_bytes(shape, dtype), 1)
    return int(max(1, min(BLOCK_FRAMES, by_bytes, n_frames)))


class _Block:
    """One chunk along t of one variable, held while frames of it are outstanding."""

    def __init__(self, values: np.ndarray, settled: np.ndarray):
        self.values = values
        self.settled = settled  # frames recorded earlier or received in this run
        self.dirty = False


class BlockWriter:
    """Collects the small results tasks return; writes whole chunks, only from the driver.

    Parameters
    ----------
    path : Path
        The store.
    identity : str
        Its ``identity_hash`` (guards against writing into a replaced store).
    layouts : sequence of VariableLayout
        The variables written here (their t chunk is the block).
    complete : numpy.ndarray of bool
        Per frame: recorded by an earlier run (its stored values are kept).
    """

    def __init__(self, path: Path | str, identity: str, layouts, complete: np.ndarray):
        self.path, self.identity = str(path), identity
        self.layouts = {v.name: v for v in layouts}
        self.complete = np.asarray(complete, dtype=bool)
        self.blocks: dict[tuple[str, int], _Block] = {}

    def _block(self, name: str, index: int) -> _Block:
        block = self.blocks.get((name, index))
        if block is None:
            size = self.layouts[name].chunks[0]
            start = index * size
            stop = min(start + size, len(self.complete))
            values = results_store.read_frames(self.path, name, start, stop)
            block = self.blocks[(name, index)] = _Block(values, self.complete[start:stop].copy())
        return block

    def add(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Take the values of frames ``start .. start + n - 1`` (per variable, frames first)."""
        for name, values in arrays.items():
            size = self.layouts[name].chunks[0]
            for frame in range(start, start + len(values)):
                block = self._block(name, frame // size)
                block.values[frame % size] = values[frame - start]
                block.settled[frame % size] = True
                block.dirty = True

    def flush(self) -> None:
        """Write every changed block whole; forget the blocks whose frames are all in."""
        for (name, index), block in sorted(self.blocks.items()):
            if block.dirty:
                self._write_block(name, index * self.layouts[name].chunks[0], block.values)
                block.dirty = False
        self.blocks = {key: b for key, b in self.blocks.items() if not b.settled.all()}

    def _write_block(self, name: str, start: int, values: np.ndarray) -> None:
        results_store.write_frames(self.path, self.identity, start, {name: values})

    def held_frames(self) -> int:
        """Frames held in memory across all variables (for tests and benchmarks)."""
        return sum(len(b.values) for b in self.blocks.values())
