"""Open a cccdask results store in a notebook-style session and plot it.

Run as ``python workflows/inspect_results.py RESULTS.zarr [OUT.png]``; in Jupyter, run
the cells (``# %%``) one by one. Everything here is plain xarray + matplotlib: the store
is an ordinary Zarr v3 group that ``xr.open_zarr`` reads lazily.
"""

# %% open the store (lazy: nothing is read until values are used)
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

store = sys.argv[1] if len(sys.argv) > 1 else "cccdask-demo/results.zarr"
output = sys.argv[2] if len(sys.argv) > 2 else "results.png"
ds = xr.open_zarr(store)
print(ds)

# %% is the store complete? which frames have results?
status = ds["frame_status"].values  # 0 missing, 1 ok, 2 invalid frame, 3 fit failed
print(f"store status: {ds.attrs['cccdask_status']}; frames ok: {(status == 1).sum()} of {status.size}")
for i in np.flatnonzero(status > 1):
    print(f"frame {i}: {ds['frame_error'].values[i]}")

# %% the per-frame fits as a table
table = ds[[c for c in ("mean", "sigma", "confidence", "r_squared", "frame_quality") if c in ds]].to_dataframe()
print(table)
if "frame_quality" in ds:  # a bit mask: its meanings are in the variable's attrs
    print("frame_quality bits:", dict(zip(ds["frame_quality"].attrs["flag_meanings"].split(),
                                         ds["frame_quality"].attrs["flag_masks"])))

# %% plot the fitted distance over time and the best frame's profiles
best = int(ds.attrs.get("best_frame", 0))
print(f"best frame {best}")
units = ds.attrs.get("units", "")
t_units = ds["t"].attrs.get("units", "")
figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
left.plot(ds["t"].values, ds["mean"].values, marker="o", label="mean")
left.fill_between(ds["t"].values, ds["mean"] - ds["sigma"], ds["mean"] + ds["sigma"], alpha=0.3, label="± sigma")
left.set_xlabel(f"time ({t_units})")
left.set_ylabel(f"fitted distance ({units})")
left.set_title("Gaussian fit per frame")
left.legend()
frame = ds.isel(t=best)
reach = float(abs(frame["mean"]) + 5 * frame["sigma"]) if np.isfinite(frame["mean"]) else float(ds["distance"][-1])
near = frame.sel(distance=slice(0, reach))
distance = near["distance"].values
right.plot(distance, near["profile_original"].values, "o", mfc="none", color="blue", label="original")
right.plot(distance, near["profile_subtracted"].values, "o", mfc="none", color="green", label="subtracted")
right.plot(distance, near["profile_fit"].values, "o", color="magenta", ms=3, label="Gaussian fit")
right.set_xlabel(f"distance ({units})")
right.set_ylabel(f"cross-correlation ({ds['profile_original'].attrs.get('units', 'per mask volume')})")
right.set_title(
    f"frame {best} (t = {float(frame['t']):.4g} {t_units}): mean {float(frame['mean']):.3g} {units}, "
    f"sigma {float(frame['sigma']):.3g} {units}\nconfidence {float(frame['confidence']):.3g}, "
    f"R² {float(frame['r_squared']):.3g}",
    fontsize=9,
)
right.legend()
figure.tight_layout()
figure.savefig(output)
print(f"wrote {output}")
