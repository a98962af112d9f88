"""An in-thread local cluster (``processes: false``) with a memory limit below what the
driver process itself holds: its workers measure the whole process, and must neither
pause nor spill on the driver's memory (they would wait forever), while the limit still
sizes the tasks."""

import subprocess
import sys
import textwrap

import numpy as np
import xarray as xr

from series_files import write_paired_series

SPACING = (0.05, 0.05)


def test_a_driver_holding_more_than_the_limit_does_not_pause_in_thread_workers(tmp_path):
    write_paired_series(tmp_path, 4, np.linspace(0.3, 0.6, 4), shape=(48, 48), spacing=SPACING, n_pairs=8)
    script = textwrap.dedent(f"""
        import numpy as np
        from cccdask.config import config_from_dict
        from cccdask.pipeline import run

        held = np.ones(400 * 2**20 // 8)  # 400 MiB touched by this process: over 80 % of the workers' limit
        config = config_from_dict({{
            "input": {{"image1": {{"path": "cells.ome.zarr", "channel": 0}},
                      "image2": {{"path": "cells.ome.zarr", "channel": 1}}}},
            "ccc": {{"max_distance": 0.5}}, "output": {{"store": "out.zarr", "reports": False}},
            "execution": {{"frames_per_task": 1, "stall_timeout": 0}},
            "cluster": {{"kind": "local", "local": {{"n_workers": 1, "processes": False, "memory_limit": "300MiB",
                                                   "dashboard_address": None}}}}}}, base_dir={str(tmp_path)!r})
        run(config)
        print(held[-1])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    stored = xr.open_zarr(tmp_path / "out.zarr")
    assert stored.attrs["cccdask_status"] == "complete"
    assert (stored["frame_status"].values == 1).all()
