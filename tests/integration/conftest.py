"""Integration tier: the tests share one local Ray (``ray_session``, in ``tests/conftest.py``)
and start bundled local servers on loopback."""

from __future__ import annotations

import pytest
import ray


@pytest.fixture(scope="session")
def metrics_url(ray_session: None) -> str:
    """This node's Prometheus endpoint (the port is the one Ray bound, as it reports it)."""
    here = ray.get_runtime_context().get_node_id()
    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["NodeID"] == here)
    return f"http://127.0.0.1:{port}/metrics"
