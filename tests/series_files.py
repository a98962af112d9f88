"""Synthetic two-channel series written as the OME-Zarr files the YAML tests read.

``cells.ome.zarr`` holds both channels (t, c, [z,] y, x), ``mask.ome.zarr`` the masks
(t, [z,] y, x, uint8); a config points at them with ``channel: 0`` / ``channel: 1``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cccdask.io.store import write_ome_zarr
from cccdask.synthetic import paired_spots_series

SPACING = (0.05, 0.05)


def write_cells(folder: Path, image1, image2, spacing=SPACING, mask=None, **metadata) -> Path:
    """Write ``cells.ome.zarr`` (and ``mask.ome.zarr`` when ``mask`` is given) into ``folder``.

    ``metadata`` goes to :func:`cccdask.io.store.write_ome_zarr` for both files (units,
    time interval).
    """
    spatial = "zyx"[-len(spacing):]
    write_ome_zarr(folder / "cells.ome.zarr", np.stack([image1, image2], axis=1), "tc" + spatial, spacing,
                   **metadata)
    if mask is not None:
        write_ome_zarr(folder / "mask.ome.zarr", np.asarray(mask).astype(np.uint8), "t" + spatial, spacing,
                       **metadata)
    return folder


def write_paired_series(folder: Path, n_frames: int, distances, *, shape, n_pairs: int, spacing=SPACING,
                        with_mask: bool = False, **scene):
    """Spots paired at ``distances`` (one per frame, µm), written by :func:`write_cells`.

    Returns ``(image1, image2, mask)`` as :func:`cccdask.synthetic.paired_spots_series`
    made them (the mask is written only ``with_mask``).
    """
    image1, image2, mask, _ = paired_spots_series(n_frames, distances=distances, shape=shape, spacing=spacing,
                                                  n_pairs=n_pairs, **scene)
    write_cells(folder, image1, image2, spacing, mask if with_mask else None)
    return image1, image2, mask
