"""Shared fixtures: a real distributed cluster on 127.0.0.1 (a scheduler and two worker processes)."""

import pytest


@pytest.fixture(scope="session")
def cluster_address():
    """Address of a scheduler with two single-threaded worker processes, for the whole session."""
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        host="127.0.0.1",
        memory_limit="1.5GiB",
    )
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()
