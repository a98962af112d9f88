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
table = ds[["mean", "sigma", "confidence", "r_squared"]].to_dataframe()
print(table)

# %% plot the fitted distance over time and the best frame's profiles
best = int(ds.attrs.get("best_frame", 0))
print(f"best frame {best}")
units = ds.attrs.get("units", "")
figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
ds["mean"].plot(ax=left, marker="o", label="mean")
left.fill_between(ds["t"].values, ds["mean"] - ds["sigma"], ds["mean"] + ds["sigma"], alpha=0.3, label="± sigma")
left.set_ylabel(f"distance ({units})")
left.legend()
frame = ds.isel(t=best)
reach = float(abs(frame["mean"]) + 5 * frame["sigma"]) if np.isfinite(frame["mean"]) else float(ds["distance"][-1])
near = frame.sel(distance=slice(0, reach))
near["profile_original"].plot(ax=right, marker="o", ls="none", mfc="none", color="blue", label="original")
near["profile_subtracted"].plot(ax=right, marker="o", ls="none", mfc="none", color="green", label="subtracted")
near["profile_fit"].plot(ax=right, marker="o", ls="none", color="magenta", ms=3, label="fit")
right.set_title(f"frame {best}")
right.legend()
figure.tight_layout()
figure.savefig(output)
print(f"wrote {output}")
