"""Fixtures of every tier but the unit one: servers the tests start for real, and the
session's one local Ray."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import ray

from local_server.process import LocalServer
from pipelines.storage import Storage
from tests import s3
from tests.chromium import browser, page  # noqa: F401  (the page's tests, in any tier)
from tests.postgres import PostgresServer, PostgresUnavailable, binaries
from tests.s3 import S3Server
from tests.support import unavailable

POSTGRES = "a PostgreSQL server (Debian's postgresql)"
GET_POSTGRES = "apt-get install postgresql"
METRICS_REPORT_INTERVAL_MS = 1000


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server on loopback for the whole session (started on first use, stopped at
    the end); skipped where it is not installed, failed under CI."""
    bin_dir = binaries()
    if bin_dir is None:
        unavailable(POSTGRES, GET_POSTGRES)
    assert bin_dir is not None
    try:
        server = PostgresServer(bin_dir)
    except PostgresUnavailable as err:
        unavailable(f"{POSTGRES}: {err}", GET_POSTGRES)
        raise
    with server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A ``postgresql+asyncpg://`` URL (with its password) of a new, empty database: each test
    sees only its own rows."""
    return postgres_server.new_database()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on loopback, started once (it stands in for S3 in tests only)."""
    yield from s3.started()


@pytest.fixture
def s3_storage(s3_server: S3Server) -> Storage:
    """A storage in a fresh bucket of the test S3 server."""
    return s3_server.new_bucket()


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


@pytest.fixture
def cuttable(s3_server: S3Server) -> Iterator[s3.Cuttable]:
    """A line to the test S3 server that a test can cut and mend."""
    line = s3.Cuttable(s3_server)
    yield line
    line.close()
