"""The bundled server's app in-process, for the unit tests of its HTTP behaviour: aiohttp's test
server on a loopback port, with a fake clock for its buckets when a test needs one."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from local_server.app import build_app
from local_server.cli import RUNNER_OPTIONS
from local_server.config import ServerConfig

Make = Callable[..., Awaitable[TestClient]]
CHAT = "/v1/chat/completions"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def apps() -> AsyncIterator[Make]:
    """The body of a fixture: start an app for a config (latency 0 unless given); every one
    started is closed after the test."""
    clients: list[TestClient] = []

    async def start(clock: Callable[[], float] = time.monotonic, **options: Any) -> TestClient:
        options.setdefault("latency_scale", 0.0)
        server = TestServer(build_app(ServerConfig(**options), clock))
        # As ``serve`` runs it (the test server sets handler_cancellation itself).
        await server.start_server(**{k: v for k, v in RUNNER_OPTIONS.items()
                                     if k != "handler_cancellation"})
        client = TestClient(server)
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()
