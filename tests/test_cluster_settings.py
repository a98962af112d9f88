"""What the processes of a cluster cccdask starts are given: FFT-friendly malloc, quiet timers.

A real LocalCluster of worker processes on 127.0.0.1; the values are read inside the
worker and the scheduler.
"""

import os

import dask

from cccdask.cluster import FFT_FRIENDLY_MALLOC, QUIET_TIMERS, connect
from cccdask.config import ClusterConfig, ExecutionConfig

TIMERS = tuple(QUIET_TIMERS)


def _seen_by_worker():
    return os.environ.get("MALLOC_TRIM_THRESHOLD_"), [dask.config.get(key) for key in TIMERS]


def _seen_by_scheduler():
    return [dask.config.get(key) for key in TIMERS]


def _connect(execution=None):
    cluster = ClusterConfig.model_validate({"kind": "local", "local": {
        "n_workers": 1, "processes": True, "dashboard_address": None}})
    return connect(cluster, execution or ExecutionConfig())


def test_worker_processes_get_the_malloc_and_quiet_timers_and_the_scheduler_the_timers():
    with _connect() as handle:
        (malloc, timers), = handle.client.run(_seen_by_worker).values()
        scheduler_timers = handle.client.run_on_scheduler(_seen_by_scheduler)
    quiet = [quiet for _, quiet in QUIET_TIMERS.values()]
    assert malloc == FFT_FRIENDLY_MALLOC["MALLOC_TRIM_THRESHOLD_"]
    assert timers == quiet and scheduler_timers == quiet
    assert [dask.config.get(key) for key in TIMERS] == [default for default, _ in QUIET_TIMERS.values()]  # restored


def test_the_malloc_survives_a_plain_distributed_cluster_started_before(monkeypatch):
    """A Nanny copies distributed's MALLOC_TRIM_THRESHOLD_=65536 into this process's environment,
    which then outranks the config for every later Nanny; a value set on purpose is kept."""
    from distributed import LocalCluster

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with LocalCluster(n_workers=1, processes=True, dashboard_address=None, host="127.0.0.1"):
        pass
    assert os.environ.get("MALLOC_TRIM_THRESHOLD_") == "65536"
    with _connect() as handle:
        (malloc, _), = handle.client.run(_seen_by_worker).values()
    assert malloc == FFT_FRIENDLY_MALLOC["MALLOC_TRIM_THRESHOLD_"]
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1048576")
    with _connect() as handle:
        (malloc, _), = handle.client.run(_seen_by_worker).values()
    assert malloc == "1048576"


def test_a_timer_set_in_the_dask_config_or_the_run_config_is_kept():
    profile, tick = "distributed.worker.profile.interval", "distributed.admin.tick.interval"
    execution = ExecutionConfig.model_validate({"dask_config": {tick: "35ms"}})
    with dask.config.set({profile: "13ms"}), _connect(execution) as handle:
        (_, timers), = handle.client.run(_seen_by_worker).values()
    seen = dict(zip(TIMERS, timers))
    assert seen[profile] == "13ms" and seen[tick] == "35ms"
    assert seen["distributed.admin.system-monitor.interval"] == QUIET_TIMERS["distributed.admin.system-monitor.interval"][1]


def _task_page_faults(plan, batches) -> float:
    """Page faults per frame of the pipeline's task in this worker thread, after a warm-up pass."""
    import resource

    from cccdask.pipeline.task import compute_frames

    for start, stop in batches:
        compute_frames(plan, start, stop)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for start, stop in batches:
        compute_frames(plan, start, stop)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / batches[-1][1]


def test_the_task_on_1024_frames_reuses_freed_memory_in_the_worker(tmp_path):
    """A task's batch of 1024² frames, in a worker thread, meets no fresh pages frame after frame.

    Without one malloc arena the worker thread's arena unmapped its wholly free heaps after
    every batch: about 3 400 page faults (13 MiB of fresh pages) per frame.
    """
    import numpy as np

    from cccdask.config import PipelineConfig
    from cccdask.io.store import write_ome_zarr
    from cccdask.pipeline import run_identity
    from cccdask.pipeline.inputs import open_inputs
    from cccdask.pipeline.layout import plan_run
    from cccdask.pipeline.plan import frame_batches
    from cccdask.synthetic import paired_spots

    scene = paired_spots(shape=(1024, 1024), spacing=(0.05, 0.05), distance=0.3, seed=0, n_pairs=3200)
    frames = 16
    write_ome_zarr(tmp_path / "input.ome.zarr", np.stack([np.stack([scene.image1, scene.image2])] * frames),
                   "tcyx", (0.05, 0.05))
    write_ome_zarr(tmp_path / "mask.ome.zarr", np.stack([scene.mask.astype(np.uint8)] * frames), "tyx", (0.05, 0.05))
    config = PipelineConfig.model_validate({
        "input": {"image1": {"path": str(tmp_path / "input.ome.zarr"), "channel": 0},
                  "image2": {"path": str(tmp_path / "input.ome.zarr"), "channel": 1},
                  "mask": {"path": str(tmp_path / "mask.ome.zarr")}},
        "execution": {"frames_per_task": 4},
        "output": {"store": str(tmp_path / "out.zarr")},
    })
    inputs = open_inputs(config)
    plan, _ = plan_run(config, inputs, run_identity(config, inputs.frames))
    batches = frame_batches(frames, plan.frames_per_task)
    with _connect() as handle:
        faults = handle.client.submit(_task_page_faults, plan, batches, pure=False).result()
    assert faults < 100, f"{faults:.0f} page faults per frame"
