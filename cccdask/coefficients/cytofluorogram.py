""":func:`plot_cytofluorogram`: the two-channel scatter plot of one frame."""

from __future__ import annotations

import numpy as np
import xarray as xr



def plot_cytofluorogram(dataset: xr.Dataset, path: str, t: int | None = None) -> None:
    """Write a frame's cytofluorogram as a PNG, with the regression line and thresholds.

    Parameters
    ----------
    dataset : xarray.Dataset
        A result of :func:`coefficients` computed with ``cytofluorogram=bins``.
    path : str
        The PNG file to write.
    t : int, optional
        Frame index for a time series.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    if "cytofluorogram" not in dataset:
        raise ValueError("the dataset has no cytofluorogram; compute it with coefficients(..., cytofluorogram=256).")
    frame = dataset.isel(t=t) if "t" in dataset.dims else dataset
    counts = np.asarray(frame.cytofluorogram.values, dtype=float)
    edges1 = np.asarray(frame.cytofluorogram_edges1.values)
    edges2 = np.asarray(frame.cytofluorogram_edges2.values)
    figure, axes = plt.subplots(figsize=(5.5, 5))
    shown = np.where(counts > 0, counts, np.nan).T
    image = axes.pcolormesh(edges1, edges2, shown, norm=LogNorm(vmin=1, vmax=max(np.nanmax(counts), 1)),
                            cmap="viridis", shading="flat")
    figure.colorbar(image, ax=axes, label="voxels")
    if "costes_slope" in frame and np.isfinite(float(frame.costes_slope)):
        x = np.array([edges1[0], edges1[-1]])
        axes.plot(x, float(frame.costes_slope) * x + float(frame.costes_intercept), "k-", lw=1,
                  label="regression line")
    levels = np.asarray(frame.threshold.values, dtype=float)
    if np.isfinite(levels[0]):
        axes.axvline(levels[0], color="r", lw=1, label=f"threshold 1 = {levels[0]:.4g}")
    if np.isfinite(levels[1]):
        axes.axhline(levels[1], color="orange", lw=1, label=f"threshold 2 = {levels[1]:.4g}")
    axes.set_xlim(edges1[0], edges1[-1])
    axes.set_ylim(edges2[0], edges2[-1])
    axes.set_xlabel("channel 1 intensity")
    axes.set_ylabel("channel 2 intensity")
    axes.set_title(f"cytofluorogram (pearson r = {float(frame.pearson):.3f})")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
