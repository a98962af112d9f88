"""Open and check the inputs of a run (metadata only), and read single frames.

:func:`open_inputs` validates the config's input section before any work (files,
channels, shapes, an empty mask); :class:`SourceSpec` is how a task reopens one input
lazily; :func:`read_frame` reads one whole frame (driver-side steps such as the
chromatic-shift estimate and the shared generated mask use it); :func:`describe_settled`
says which axes and calibration were settled for every input (run log, ``validate``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import xarray as xr

from cccdask.config import PipelineConfig
from cccdask.frames import prepare_inputs
from cccdask.io.readers import describe_image


@dataclass(frozen=True)
class SourceSpec:
    """How a task opens one input lazily (see :func:`cccdask.io.readers.open_image`)."""

    path: str
    channel: int | None = None
    component: str | None = None
    dims: str | None = None

    def open(self) -> xr.DataArray:
        stat = os.stat(self.path)
        return _open_source(self, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _open_source(spec: SourceSpec, mtime_ns: int) -> xr.DataArray:
    from cccdask.io.readers import open_image

    return open_image(spec.path, component=spec.component, channel=spec.channel, dims=spec.dims)


def read_frame(spec: SourceSpec, index: int) -> np.ndarray:
    """Frame ``index`` of an input (the whole input when it has no t dim)."""
    array = spec.open()
    if "t" in array.dims:
        array = array.isel(t=index)
    return np.asarray(array.data.compute(scheduler="synchronous"))


@dataclass
class RunInputs:
    """The validated inputs of a run (lazy)."""

    frames: Any  # cccdask.frames.Frames
    image1: SourceSpec
    image2: SourceSpec
    mask: SourceSpec | None
    chunks: tuple[int, ...]


def _open_checked(source, label: str, frame_chunks=None) -> xr.DataArray:
    from cccdask.io.readers import open_image

    try:
        array = open_image(source.path, component=source.component, channel=source.channel, dims=source.dims,
                           frame_chunks=frame_chunks)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{label}: {error}") from None
    except ValueError as error:
        raise ValueError(f"{label}: {error}") from None
    if "c" in array.dims:
        n = array.sizes["c"]
        raise ValueError(
            f"{label}: {source.path} has {n} channels; set {label}.channel to one of 0..{n - 1}."
        )
    return array


def open_inputs(config: PipelineConfig, frame_chunks: dict[str, int] | None = None) -> RunInputs:
    """Open and validate the inputs (metadata only).

    ``frame_chunks``: Dask chunks per spatial dim (voxels) instead of one chunk per
    frame (:func:`cccdask.io.readers.open_image`), e.g. the tiles of the tiled path.

    Raises
    ------
    FileNotFoundError, ValueError
        Missing files, channels out of range, shape mismatches between the channels
        and the mask; the message names the config key.
    """
    section = config.input
    image1 = _open_checked(section.image1, "input.image1", frame_chunks)
    image2 = _open_checked(section.image2, "input.image2", frame_chunks)
    mask = None if section.mask is None else _open_checked(section.mask, "input.mask", frame_chunks)
    if mask is not None and "t" in mask.dims and "t" not in image1.dims:
        raise ValueError("input.mask has a t dim but the images are a single frame; give one mask frame.")
    if mask is not None and "t" in mask.dims and mask.sizes["t"] != image1.sizes.get("t"):
        raise ValueError(
            f"input.mask has {mask.sizes['t']} frames but the images have {image1.sizes.get('t')}; "
            f"give one mask per frame or a single mask frame."
        )
    try:
        frames = prepare_inputs(image1, image2, mask, spacing=section.spacing, units=section.units)
    except ValueError as error:
        raise ValueError(f"input: {error}") from None
    if frames.mask is not None and "t" not in frames.mask.dims and not bool(np.asarray(frames.mask.any().values)):
        raise ValueError(
            f"input.mask: {section.mask.path} has no voxel inside (all zero), so every frame would be empty; "
            f"give a mask with non-zero voxels where the signal is, or remove input.mask to use whole frames."
        )
    chunks = tuple(c[0] for c in frames.image1.chunks[1:]) if frames.lazy else frames.frame_shape

    def spec(source):
        return None if source is None else SourceSpec(str(source.path), source.channel, source.component, source.dims)

    return RunInputs(frames, spec(section.image1), spec(section.image2), spec(section.mask), chunks)


def describe_settled(frames, labels=("input.image1", "input.image2", "input.mask")) -> list[str]:
    """What a run settled on, one line per input and one for the frames, plus the notes.

    Parameters
    ----------
    frames : cccdask.frames.Frames
        Prepared from images opened by :func:`cccdask.io.readers.open_image` (their
        attrs say where the axes and calibration came from).
    labels : tuple of str
        Names of image1, image2 and the mask in the lines.
    """
    lines = []
    for label, image in zip(labels, (frames.image1, frames.image2, frames.mask)):
        if image is not None:
            lines.append(f"{label}: {image.attrs.get('source', '(in memory)')}: {describe_image(image)}")
    spacing = ", ".join(f"{d} {v:g}" for d, v in zip(frames.spatial_dims, frames.spacing))
    line = (f"Settled: {frames.n_frames} frame(s) of {dict(zip(frames.spatial_dims, frames.frame_shape))}, "
            f"voxel size {spacing} {frames.units}")
    if frames.time_series:
        interval = frames.image1.attrs.get("time_interval")
        if interval is not None:
            line += f", frame interval {interval:g} {frames.image1.attrs.get('time_units') or ''}".rstrip()
    lines.append(line)
    lines += [f"Note: {note}" for note in frames.notes]
    return lines
