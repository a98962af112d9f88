"""Synthetic data for the example configs in ``configs/``, so each runs as shipped.

``cccdask demo --example timeseries-3d`` (or the config's path) writes the files the
config's ``input:`` section names, shaped as that example expects, next to the config:

* ``timeseries-3d``: a 3D time series, two channels in one OME-Zarr (t, c, z, y, x),
  a mask per frame, spot pairs 0.3 um apart;
* ``preprocess-2d``: a 2D time series (t, c, y, x) that needs the config's
  preparation: channel 2 displaced by +0.5 um in x (the config's chromatic shift
  corrects it), a background level in each channel (channel 1 uneven: median;
  channel 2 a constant 10);
* ``demo``: the data ``cccdask demo`` writes.

``slurm-example`` points at a cluster's shared file system and needs SLURM: it has no
local data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cccdask.synthetic import paired_spots

DEMO_DISTANCES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass(frozen=True)
class ExampleData:
    """What one example's data is: frames, frame shape, spacing, truth."""

    name: str
    description: str
    n_frames: int
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    distance: float


EXAMPLES = {
    "timeseries-3d": ExampleData("timeseries-3d", "3D time series, 2 channels, a mask per frame",
                                 6, (16, 96, 96), (0.15, 0.05, 0.05), 0.3),
    "preprocess-2d": ExampleData("preprocess-2d", "2D time series needing chromatic shift, mask and background",
                                 8, (256, 256), (0.05, 0.05), 0.3),
    "demo": ExampleData("demo", "the `cccdask demo` data", len(DEMO_DISTANCES), (256, 256), (0.05, 0.05), 0.3),
}
NOT_LOCAL = {"slurm-example": "it runs on a SLURM cluster and reads /shared/project/...: copy it and point "
                              "input.* at your own data"}


def demo_scenes(n_frames: int, size: int, spacing=(0.05, 0.05)):
    """The demo's frames: well-separated spot pairs at the demo distances (cycled)."""
    distances = np.resize(np.asarray(DEMO_DISTANCES), n_frames)
    scenes = [
        # well-separated pairs (no spot within 1.2 um of another but its partner) and
        # unpaired decoys: the known answer is not blurred by chance coincidences
        paired_spots(shape=(size, size), spacing=spacing, distance=float(d), psf_sigma=0.1,
                     n_pairs=int(30 * (size / 256) ** 2), n_decoys=int(8 * (size / 256) ** 2),
                     min_separation=1.2, seed=i)
        for i, d in enumerate(distances)
    ]
    return distances, scenes


def write_demo_data(folder: Path, n_frames: int, size: int):
    """input.ome.zarr (t, c, y, x) and mask.ome.zarr (t, y, x) of the demo, in ``folder``."""
    from cccdask.io.store import write_ome_zarr

    spacing = (0.05, 0.05)
    distances, scenes = demo_scenes(n_frames, size, spacing)
    images = np.stack([np.stack([s.image1, s.image2]) for s in scenes])  # t, c, y, x
    masks = np.stack([s.mask for s in scenes]).astype(np.uint8)
    write_ome_zarr(folder / "input.ome.zarr", images, "tcyx", spacing, units="um", time_interval=1.0, time_units="s")
    write_ome_zarr(folder / "mask.ome.zarr", masks, "tyx", spacing, units="um", time_interval=1.0, time_units="s")
    return distances, scenes


def example_name(example: str) -> str:
    """The example's name from a name or a config path (``configs/timeseries-3d.yaml``)."""
    name = Path(example).name
    return name[: -len(".yaml")] if name.endswith(".yaml") else name


def write_example_data(example: str, config_path: Path) -> list[Path]:
    """Write the data of one example config; return the files written.

    Parameters
    ----------
    example : str
        A name of :data:`EXAMPLES`.
    config_path : Path
        The example's config; its ``input:`` paths say where the data goes.

    Raises
    ------
    ValueError
        An unknown example, or one that has no local data.
    """
    from cccdask.config import load_config
    from cccdask.io.store import write_ome_zarr

    name = example_name(example)
    if name in NOT_LOCAL:
        raise ValueError(f"the example {name!r} has no local data: {NOT_LOCAL[name]}.")
    if name not in EXAMPLES:
        raise ValueError(f"unknown example {name!r}; choose one of {', '.join(sorted(EXAMPLES))}.")
    spec = EXAMPLES[name]
    inputs = load_config(config_path).input
    image_path = Path(inputs.image1.path)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    written = [image_path]
    if name == "demo":
        if image_path.parent / "input.ome.zarr" != image_path:
            raise ValueError(f"{config_path} does not read input.ome.zarr: write the demo with `cccdask demo`.")
        write_demo_data(image_path.parent, spec.n_frames, spec.shape[-1])
        return [image_path, image_path.parent / "mask.ome.zarr"]
    scenes = [paired_spots(shape=spec.shape, spacing=spec.spacing, distance=spec.distance, psf_sigma=0.1,
                           n_pairs=40 if len(spec.shape) == 3 else 60, n_decoys=10, seed=i, amplitude=1000.0)
              for i in range(spec.n_frames)]
    channel1 = np.stack([s.image1 for s in scenes])
    channel2 = np.stack([s.image2 for s in scenes])
    if name == "preprocess-2d":
        pixels = int(round(0.5 / spec.spacing[-1]))  # channel 2 seen +0.5 um in x: the config shifts it back
        displaced = np.zeros_like(channel2)
        displaced[..., pixels:] = channel2[..., :-pixels]
        x = np.linspace(0.0, 1.0, spec.shape[-1])
        channel1 = channel1 + 50.0 * (1 + 0.2 * x)  # an uneven background: the median removes most of it
        channel2 = displaced + 10.0  # the constant background the config subtracts
    data = np.clip(np.stack([channel1, channel2], axis=1), 0, 65535).round().astype(np.uint16)
    dims = "tczyx" if len(spec.shape) == 3 else "tcyx"
    write_ome_zarr(image_path, data, dims, spec.spacing, units="um", time_interval=2.0, time_units="s")
    if inputs.mask is not None:
        mask_path = Path(inputs.mask.path)
        masks = np.stack([s.mask for s in scenes]).astype(np.uint8)
        write_ome_zarr(mask_path, masks, "t" + dims[2:], spec.spacing, units="um", time_interval=2.0,
                       time_units="s")
        written.append(mask_path)
    return written
