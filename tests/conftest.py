"""Shared fixtures: a real distributed cluster on 127.0.0.1 (a scheduler and two worker processes).

Also the hypothesis profile of every test run: derandomized (the examples follow from each
test's code, the same on every machine and every run) and without an example database (a
fresh clone and a reused checkout run the same examples), so no test depends on chance.
"""

import pytest
from hypothesis import settings

settings.register_profile("cccdask", derandomize=True, database=None, print_blob=True)
settings.load_profile("cccdask")


def _local_cluster():
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        host="127.0.0.1",
        memory_limit="1.5GiB",
    )


@pytest.fixture(scope="session")
def cluster_address():
    """Address of a scheduler with two single-threaded worker processes, for the whole session."""
    cluster = _local_cluster()
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


@pytest.fixture
def killable_cluster_address():
    """A cluster of its own for a test that kills a worker: whether and when its nanny
    restarts the worker cannot disturb the tests that share the session cluster."""
    cluster = _local_cluster()
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()
