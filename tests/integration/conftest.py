"""Integration tier: one local Ray for the whole session, and bundled local servers on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import ray

from local_server.process import LocalServer


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """Started once: Ray takes seconds to start, and tests share it like a cluster would."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="WARNING",
        log_to_driver=False,
        namespace="showrunner-tests",
    )
    yield
    ray.shutdown()


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
