"""Integration tier: one local Ray for the whole session, and bundled local servers on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import ray

from local_server.process import LocalServer

METRICS_REPORT_INTERVAL_MS = 1000


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """Started once: Ray takes seconds to start, and tests share it like a cluster would.

    The node's metrics agent serves Prometheus text even without the dashboard, on a port Ray
    picks itself (see ``metrics_url``). Workers push their metrics to it every
    ``metrics_report_interval_ms`` (10 s by default); once a second keeps the metrics test short.
    """
    ray.init(
        address="local",  # its own, never a cluster another test (or a `ray start`) left
        num_cpus=2,
        include_dashboard=False,
        logging_level="WARNING",
        log_to_driver=False,
        namespace="showrunner-tests",
        _system_config={"metrics_report_interval_ms": METRICS_REPORT_INTERVAL_MS},
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def metrics_url(ray_session: None) -> str:
    """This node's Prometheus endpoint (the port is the one Ray bound, as it reports it)."""
    here = ray.get_runtime_context().get_node_id()
    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["NodeID"] == here)
    return f"http://127.0.0.1:{port}/metrics"


@pytest.fixture
def local_server() -> Iterator[Callable[..., LocalServer]]:
    """Start a bundled server with the given flags; every one started is stopped after the test."""
    started: list[LocalServer] = []

    def start(**flags: Any) -> LocalServer:
        server = LocalServer(latency_scale=flags.pop("latency_scale", 0.0), **flags)
        server.__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__(None, None, None)
