"""Fixtures of both tiers: servers the tests start for real, once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipelines.storage import Storage
from tests import s3
from tests.postgres import PostgresServer, PostgresUnavailable, binaries
from tests.s3 import S3Server
from tests.support import unavailable

POSTGRES = "a PostgreSQL server (Debian's postgresql)"
GET_POSTGRES = "apt-get install postgresql"


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
