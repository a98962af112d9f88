"""The files a Fiji user expects beside the store: CSV tables, plots, a summary.

Written by the driver when a run finalises, into ``<store name>-reports/`` next to the
store (``results.zarr`` -> ``results-reports/``):

* ``fits.csv`` - one row per frame: every per-frame value (the plugin's "Gaussian
  fits over time" table), with the frame's status, its quality verdict
  (:mod:`cccdask.quality`: ``ok`` or e.g. ``low_confidence+background_dominated``)
  and the reason it has no result;
* ``results.csv`` - the results table of the single frame, or of the best frame of a
  time series (mean, SD, confidence, R², height);
* ``profile.csv`` - the correlation plot's table for that frame (distance, original,
  subtracted, fit);
* ``correlation_plot.png`` - original (blue circles), subtracted (green), fit
  (magenta), x from 0 to mean + 5 sigma; the title names the frame (and its time)
  and gives mean and sigma with units, confidence, R² and any quality warning;
* ``heatmap.png`` - time series only: time x distance (0 at the top), panels for the
  Gaussian fit, subtracted and original profiles and their composite; each frame is a
  column centred on its own time (edges at the midpoints between frame times);
* ``summary.txt`` - the results, the quality counts (with the hint to set
  ``preprocess.background`` where background is the likely cause), the plugin's
  warnings (confidence < 0.1, R² < 0.05) and the frames without a result.

Each file is written to a temporary name and renamed, so a report is whole or absent.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import xarray as xr

from cccdask.io.store import FRAME_OK, FRAME_STATUS_NAMES
from cccdask.quality import (
    LOW_CONFIDENCE,
    LOW_R_SQUARED,
    dataset_quality,
    quality_counts,
    quality_names,
    quality_summary,
)

_MAX_HEATMAP_COLUMNS = 2000
_HEATMAP_ROWS = 400
_MAX_LISTED = 200


def reports_folder(store: Path | str) -> Path:
    """Where the reports of ``store`` go: ``<stem>-reports`` beside it."""
    store = Path(store)
    stem = store.name[: -len(".zarr")] if store.name.endswith(".zarr") else store.name
    return store.parent / f"{stem}-reports"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _csv_text(header: list[str], rows) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode()


def _number(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        return "NaN" if not np.isfinite(value) else repr(float(value))
    return str(value)


_COMPONENT_ORDER = ("mean", "sigma", "height", "confidence", "fit_ok", "component_status")


def _columns(ds: xr.Dataset) -> dict[str, np.ndarray]:
    """Per-frame columns (each over ``t``): the scalars, and with a ``component`` dim one
    column per component and value in 2.3.0's order (mean1, sigma1, height1, confidence1,
    ..., then r_squared), and one per number of Gaussians tried (bic_n1, ...)."""
    per_component = [n for n in _COMPONENT_ORDER if n in ds and ds[n].dims == ("t", "component")]
    columns = {}
    for i in range(ds.sizes.get("component", 0) if per_component else 0):
        for name in per_component:
            columns[f"{name}{i + 1}"] = np.asarray(ds[name].values[:, i])
    scalars = [
        name for name, v in ds.data_vars.items()
        if v.dims == ("t",) and name not in ("frame_status", "frame_error", "frame_quality") and v.dtype.kind in "biuf"
    ]
    order = ["mean", "sigma", "height", "confidence", "r_squared", "fit_ok", "n_selected"]
    for name in [n for n in order if n in scalars] + [n for n in scalars if n not in order]:
        columns[name] = np.asarray(ds[name].values)
    for name in ("rss", "bic", "aic"):
        if name in ds and ds[name].dims == ("t", "n_components"):
            for j, n in enumerate(ds["n_components"].values):
                columns[f"{name}_n{int(n)}"] = np.asarray(ds[name].values[:, j])
    return columns


def per_frame_table(ds: xr.Dataset) -> tuple[list[str], list[list]]:
    """Header and rows of ``fits.csv``: every per-frame value, the status and the reason."""
    values = _columns(ds)
    scalars = list(values)
    status = np.asarray(ds["frame_status"].values)
    errors = np.asarray(ds["frame_error"].values)
    frame = np.asarray(ds["frame"].values)
    times = np.asarray(ds["t"].values)
    flags = dataset_quality(ds)
    header = ["frame", "t"] + scalars + ["status", "quality", "reason"]
    rows = []
    for i in range(ds.sizes["t"]):
        rows.append(
            [int(frame[i]), _number(times[i])]
            + [_number(values[name][i]) for name in scalars]
            + [FRAME_STATUS_NAMES.get(int(status[i]), str(status[i])),
               "" if flags is None or status[i] != FRAME_OK else quality_names(flags[i]), str(errors[i])]
        )
    return header, rows


def background_subtracted(ds: xr.Dataset) -> bool:
    """Whether the run that wrote ``ds`` subtracted a background (``preprocess.background``)."""
    import json

    config = ds.attrs.get("config")
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except ValueError:
            config = None
    background = ((config or {}).get("preprocess") or {}).get("background") or {}
    return any((background.get(c) or {}).get("method", "none") != "none" for c in ("image1", "image2"))


def quality_lines(ds: xr.Dataset) -> list[str]:
    """The end-of-run quality summary of a results Dataset (empty in correlation mode)."""
    flags = dataset_quality(ds)
    if flags is None:
        return []
    assessed = np.asarray(ds["frame_status"].values) == FRAME_OK
    return quality_summary(quality_counts(flags, assessed), int(assessed.sum()), background_subtracted(ds))


def _reported_frame(ds: xr.Dataset) -> int:
    best = int(ds.attrs.get("best_frame", -1))
    if best >= 0:
        return best
    ok = np.flatnonzero(np.asarray(ds["frame_status"].values) == FRAME_OK)
    return int(ok[0]) if ok.size else 0


def correlation_plot(ds: xr.Dataset, frame: int, path: Path) -> None:
    """The plugin's correlation plot of one frame, as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    one = ds.isel(t=frame)
    distance = np.asarray(ds["distance"].values)
    units = ds["distance"].attrs.get("units", "")
    x_max = distance[-1]
    if "mean" in one:
        reach = np.abs(np.atleast_1d(one["mean"].values)) + 5 * np.atleast_1d(one["sigma"].values)
        if np.isfinite(reach).any():
            x_max = min(distance[-1], float(np.nanmax(reach)))
    keep = (distance >= 0) & (distance <= x_max)
    figure, axes = plt.subplots(figsize=(6, 4), dpi=110)
    if "profile_original" in one:
        axes.plot(distance[keep], np.asarray(one["profile_original"])[keep], "o", mfc="none", color="blue",
                  markersize=4, label="original")
    if "profile_subtracted" in one:
        axes.plot(distance[keep], np.asarray(one["profile_subtracted"])[keep], "o", mfc="none", color="green",
                  markersize=4, label="subtracted")
    if "profile_fit" in one:
        several = "profile_fit_component" in one
        axes.plot(distance[keep], np.asarray(one["profile_fit"])[keep], "o", color="magenta", markersize=3,
                  label="sum of Gaussians" if several else "Gaussian fit")
    if "profile_fit_component" in one:
        for i, curve in enumerate(np.asarray(one["profile_fit_component"])):
            if np.isfinite(curve).any():
                axes.plot(distance[keep], curve[keep], "--", linewidth=1.2, label=f"Gaussian {i + 1}")
    axes.set_xlim(0, x_max if x_max > 0 else 1)
    axes.set_xlabel(f"distance ({units})")
    axes.set_ylabel(_profile_label(ds))
    axes.set_title(_fit_title(ds, frame), fontsize=9)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    _atomic_write_bytes(path, buffer.getvalue())


def _profile_label(ds: xr.Dataset) -> str:
    name = next((n for n in ("profile_subtracted", "profile_original") if n in ds), None)
    units = ds[name].attrs.get("units") if name else None
    return "cross-correlation" + (f" ({units})" if units else " (per mask volume)")


def _fit_title(ds: xr.Dataset, frame: int) -> str:
    """Two lines: which frame (and when), and its fit with units and quality warnings."""
    one = ds.isel(t=frame)
    units = ds.attrs.get("units", "")
    first = f"frame {int(one['frame'])}"
    if ds.sizes["t"] > 1:
        first += f" (t = {float(one['t']):.4g} {ds['t'].attrs.get('units', '')})".replace(" )", ")")
        if frame == int(ds.attrs.get("best_frame", -1)):
            first += ", best frame"
    parts = []
    for name, label, suffix in (("mean", "mean", f" {units}"), ("sigma", "sigma", f" {units}"),
                                ("confidence", "confidence", ""), ("r_squared", "R²", "")):
        if name in one:
            value = float(np.atleast_1d(one[name].values)[0])  # several Gaussians: component 1
            parts.append(f"{label} {value:.3g}{suffix}" if np.isfinite(value) else f"{label} -")
    lines = [first, ", ".join(parts)] if parts else [first]
    flags = dataset_quality(ds)
    if flags is not None and flags[frame]:
        lines.append(f"warning: {quality_names(flags[frame]).replace('+', ', ')}")
    return "\n".join(lines)


def time_edges(times: np.ndarray) -> np.ndarray:
    """Cell edges along time for frames at ``times``: midpoints between neighbours.

    The first and last cells extend half their neighbour's interval outwards (a single
    frame: +-0.5), so each frame's cell holds its own time and reaches halfway to the
    frames before and after it (centred on it when frames are evenly spaced).
    """
    times = np.asarray(times, dtype=float)
    if times.size == 1:
        return np.array([times[0] - 0.5, times[0] + 0.5])
    middle = (times[1:] + times[:-1]) / 2
    return np.concatenate([[times[0] - (times[1] - times[0]) / 2], middle, [times[-1] + (times[-1] - times[-2]) / 2]])


def heatmap_cells(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What :func:`heatmap` draws: frame indices, time edges and distance edges of the cells.

    At most 2000 frames are drawn (evenly chosen); each is a column between the
    midpoints to its drawn neighbours. Distances run from 0 to where the fits reach
    (95th percentile of mean + 5 sigma), in 400 rows.
    """
    n_frames = ds.sizes["t"]
    columns = np.unique(np.linspace(0, n_frames - 1, min(n_frames, _MAX_HEATMAP_COLUMNS)).round().astype(int))
    distance = np.asarray(ds["distance"].values)
    d_max = distance[-1]
    if "mean" in ds and "sigma" in ds:
        reach = np.abs(np.asarray(ds["mean"].values)) + 5 * np.asarray(ds["sigma"].values)
        reach = reach.reshape(n_frames, -1)
        reach = np.where(np.isfinite(reach), reach, -np.inf).max(axis=1)
        reach = reach[np.isfinite(reach)]
        if reach.size:
            d_max = min(d_max, float(np.percentile(reach, 95)))
    rows = np.linspace(0, d_max, _HEATMAP_ROWS + 1)
    return columns, time_edges(np.asarray(ds["t"].values)[columns]), rows


def heatmap(ds: xr.Dataset, path: Path) -> None:
    """Time x distance heat maps (0 at the top) of the fit, subtracted and original profiles.

    Each frame is a column around its own time (edges at the midpoints between frame
    times, :func:`heatmap_cells`), so uneven frame intervals are drawn as they are.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = [n for n in ("profile_fit", "profile_subtracted", "profile_original") if n in ds]
    profiles_of = {name: ds[name] for name in names}
    labels = {"profile_fit": "Gaussian fit", "profile_subtracted": "subtracted", "profile_original": "original"}
    if "profile_fit_component" in ds:  # 2.3.0's channels: original, subtracted, Gaussian 1..n (and the sum)
        labels["profile_fit"] = "sum of Gaussians"
        for i in range(ds.sizes["component"]):
            name = f"Gaussian {i + 1}"
            profiles_of[name] = ds["profile_fit_component"].isel(component=i)
            names.append(name)
            labels[name] = name
    columns, t_edges, d_edges = heatmap_cells(ds)
    distance = np.asarray(ds["distance"].values)
    grid = (d_edges[1:] + d_edges[:-1]) / 2
    units = ds["distance"].attrs.get("units", "")
    t_units = ds["t"].attrs.get("units", "")
    figure, axes = plt.subplots(1, len(names) + 1, figsize=(4.4 * (len(names) + 1), 4), dpi=110, squeeze=False)
    # the plugin's channel colours: fit magenta, subtracted green, original blue
    colours = {"profile_fit": (1.0, 0.0, 1.0), "profile_subtracted": (0.0, 1.0, 0.0), "profile_original": (0.0, 0.0, 1.0)}
    composite = np.zeros((len(grid), len(columns), 3))
    for axis, name in zip(list(axes[0]) + [axes[0][-1]], names + [None]):
        if name is not None:
            profiles = np.asarray(profiles_of[name].isel(t=columns).values, dtype=float)
            image = np.stack([np.interp(grid, distance, p, left=np.nan, right=np.nan) for p in profiles], axis=1)
            shown = axis.pcolormesh(t_edges, d_edges, np.ma.masked_invalid(image), cmap="magma", shading="flat")
            axis.set_title(f"{labels[name]} profile")
            bar = figure.colorbar(shown, ax=axis, fraction=0.046)
            bar.set_label(f"cross-correlation ({profiles_of[name].attrs.get('units', 'per mask volume')})",
                          fontsize=8)
            finite = image[np.isfinite(image)]
            if name in colours and finite.size and finite.max() > finite.min():  # each over its own range
                scaled = np.clip((np.nan_to_num(image, nan=finite.min()) - finite.min()) / (finite.max() - finite.min()), 0, 1)
                composite += scaled[..., None] * np.asarray(colours[name])
        else:
            axis.pcolormesh(t_edges, d_edges, np.clip(composite, 0, 1), shading="flat")
            axis.set_title("composite (each scaled to its range)\nfit magenta, subtracted green, original blue",
                           fontsize=8)
        axis.set_xlim(t_edges[0], t_edges[-1])
        axis.set_ylim(d_edges[-1], d_edges[0])  # distance 0 at the top, as the plugin draws it
        axis.set_xlabel(f"time ({t_units})")
        axis.set_ylabel(f"distance ({units})")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    _atomic_write_bytes(path, buffer.getvalue())


def summary_text(ds: xr.Dataset) -> str:
    """The summary: results of the reported frame, warnings, frames without a result."""
    status = np.asarray(ds["frame_status"].values)
    errors = np.asarray(ds["frame_error"].values)
    n = ds.sizes["t"]
    units = ds.attrs.get("units", "")
    mode = ds.attrs.get("mode", "full")
    lines = [
        "cccdask - Colocalization by Cross Correlation",
        f"mode: {mode}; frames: {n}; spacing: {ds.attrs.get('spacing')} {units}",
        f"frames with a result: {int((status == FRAME_OK).sum())}; without: {int((status != FRAME_OK).sum())}",
    ]
    several = "component" in ds.dims
    if mode != "correlation" and "mean" in ds:
        frame = _reported_frame(ds)
        one = ds.isel(t=frame)
        which = "best frame" if n > 1 else "frame"
        lines += ["", f"Gaussian fit analysis ({which} {int(one['frame'])}):"]
        if several:
            lines[-1] = lines[-1][:-1] + (f", sum of {ds.sizes['component']} Gaussians; the best frame by "
                                          f"component 1's confidence):")
            meanings = ds["component_status"].attrs.get("flag_descriptions", [])
            for i in range(ds.sizes["component"]):
                c = one.isel(component=i)
                code = int(c["component_status"])
                if code:
                    reason = meanings[code] if code < len(meanings) else str(code)
                    lines.append(f"  Gaussian {i + 1}: failed ({reason})")
                    continue
                values = [f"mean {float(c['mean']):.6g} {units}", f"sigma {float(c['sigma']):.6g} {units}",
                          f"height {float(c['height']):.6g}"]
                if "confidence" in c:
                    values.append(f"confidence {float(c['confidence']):.6g}")
                lines.append(f"  Gaussian {i + 1}: " + ", ".join(values))
            if "r_squared" in one:
                lines.append(f"  R squared (sum, over Gaussian 1's range): {float(one['r_squared']):.6g}")
        else:
            for name, label in (("mean", "mean (mu)"), ("sigma", "standard deviation (sigma)"),
                                ("confidence", "confidence"), ("r_squared", "R squared"), ("height", "Gaussian height")):
                if name in one:
                    suffix = f" {units}" if name in ("mean", "sigma") else ""
                    lines.append(f"  {label}: {float(one[name]):.6g}{suffix}")
    warnings = []
    if "confidence" in ds:
        confidence = np.asarray(ds["confidence"].values, dtype=float)
        if several:
            confidence = confidence[:, 0]  # component 1
        for i in np.flatnonzero((status == FRAME_OK) & (confidence < LOW_CONFIDENCE)):
            warnings.append(
                f"frame {i}: confidence {confidence[i]:.3g} < {LOW_CONFIDENCE}: little or no correlation at this "
                f"distance (or resolution too low; check background subtraction and the mask)."
            )
    if "r_squared" in ds:
        r2 = np.asarray(ds["r_squared"].values, dtype=float)
        for i in np.flatnonzero((status == FRAME_OK) & (r2 < LOW_R_SQUARED)):
            warnings.append(f"frame {i}: R squared {r2[i]:.3g} < {LOW_R_SQUARED}: the Gaussian fits the profile poorly.")
    quality = quality_lines(ds)
    if quality:
        lines += [""] + quality
    lines += ["", f"Warnings ({len(warnings)}):"] + [f"  {w}" for w in warnings[:_MAX_LISTED]]
    if len(warnings) > _MAX_LISTED:
        lines.append(f"  ... and {len(warnings) - _MAX_LISTED} more (see fits.csv)")
    failed = np.flatnonzero(status != FRAME_OK)
    lines += ["", f"Frames without a result ({failed.size}):"]
    for i in failed[:_MAX_LISTED]:
        lines.append(f"  frame {i}: {FRAME_STATUS_NAMES.get(int(status[i]), status[i])}: {errors[i]}")
    if failed.size > _MAX_LISTED:
        lines.append(f"  ... and {failed.size - _MAX_LISTED} more (see fits.csv)")
    return "\n".join(lines) + "\n"


def write_reports(store: Path | str) -> Path:
    """Write every report of a finished store; return the reports folder."""
    folder = reports_folder(store)
    folder.mkdir(parents=True, exist_ok=True)
    with xr.open_zarr(str(store)) as ds:
        header, rows = per_frame_table(ds)
        _atomic_write_bytes(folder / "fits.csv", _csv_text(header, rows))
        frame = _reported_frame(ds)
        if "mean" in ds:
            one = ds.isel(t=slice(frame, frame + 1))
            if "component" in ds.dims:  # 2.3.0's fit table: mean1, sigma1, height1, confidence1, ..., R squared
                columns = {k: v for k, v in _columns(one).items()
                           if k.rstrip("0123456789") in ("mean", "sigma", "height", "confidence") or k == "r_squared"}
            else:
                columns = {n: np.asarray(one[n].values) for n in ("mean", "sigma", "confidence", "r_squared", "height")
                           if n in one}
            row = [int(one["frame"][0]), _number(float(one["t"][0]))] + [_number(v[0]) for v in columns.values()]
            header = ["frame", "t"] + list(columns) + ["units"]
            _atomic_write_bytes(folder / "results.csv", _csv_text(header, [row + [ds.attrs.get("units", "")]]))
        profile_names = [n for n in ("profile_original", "profile_subtracted", "profile_fit") if n in ds]
        if profile_names:
            one = ds[profile_names + [n for n in ("profile_fit_component",) if n in ds]].isel(t=frame).load()
            distance = np.asarray(ds["distance"].values)
            curves = [np.asarray(one[n].values) for n in profile_names]
            header = ["distance"] + [n.replace("profile_", "") for n in profile_names]
            if "profile_fit_component" in one:  # the sum, then Gaussian 1..n
                curves += list(np.asarray(one["profile_fit_component"].values))
                header += [f"gaussian{i + 1}" for i in range(one.sizes["component"])]
            rows = zip(*([distance] + curves))
            _atomic_write_bytes(folder / "profile.csv", _csv_text(header, [[_number(v) for v in r] for r in rows]))
            correlation_plot(ds, frame, folder / "correlation_plot.png")
            if ds.sizes["t"] > 1:
                heatmap(ds, folder / "heatmap.png")
        _atomic_write_bytes(folder / "summary.txt", summary_text(ds).encode())
    return folder
