"""One frame on in-memory inputs uses every core for its FFTs; a Dask worker's task one thread."""

import importlib
import os

import numpy as np
import pytest
import scipy.fft
from distributed import Client

import cccdask
from cccdask.synthetic import paired_spots

ccc_module = importlib.import_module("cccdask.ccc")  # the module (cccdask.ccc is the function)
SPACING = (0.05, 0.05)


def _scene():
    scene = paired_spots(shape=(96, 96), spacing=SPACING, distance=0.4, seed=3, n_pairs=30)
    return scene.image1, scene.image2, scene.mask


def _threads_seen(monkeypatch, **kwargs):
    """The scipy.fft worker setting in force while the kernel runs, and the result."""
    seen = []
    kernel = ccc_module.ccc_frame

    def recording_kernel(*args, **options):
        seen.append(scipy.fft.get_workers())
        return kernel(*args, **options)

    monkeypatch.setattr(ccc_module, "ccc_frame", recording_kernel)
    result = cccdask.ccc(*_scene(), spacing=SPACING, **kwargs)
    return seen, result


def test_one_frame_in_memory_uses_every_core_the_process_may_use(monkeypatch):
    seen, result = _threads_seen(monkeypatch)
    assert seen == [len(os.sched_getaffinity(0))]
    assert scipy.fft.get_workers() == 1  # the setting is restored afterwards
    told, alone = _threads_seen(monkeypatch, fft_workers=1)
    assert told[-1] == 1
    for name in ("profile_subtracted", "mean", "sigma", "confidence"):  # threads do not change the numbers
        np.testing.assert_array_equal(result[name].values, alone[name].values, err_msg=name)


def test_fft_workers_must_be_positive():
    with pytest.raises(ValueError, match="fft_workers must be a positive number of threads, not 0"):
        cccdask.ccc(*_scene(), spacing=SPACING, fft_workers=0)


def _threads_in_task():
    return ccc_module.fft_threads(), ccc_module.fft_threads(3)


def test_inside_a_dask_worker_one_thread_per_task(cluster_address):
    with Client(cluster_address) as client:
        assert client.submit(_threads_in_task, pure=False).result() == (1, 3)
