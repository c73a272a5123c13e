"""An S3-protocol server on loopback for the tests: moto's ``ThreadedMotoServer``.

It stands in for S3 (or MinIO, Ceph, R2) in the tests only: the product talks to it through
fsspec's s3fs over real HTTP, exactly as to a real bucket, given ``SHOWRUNNER_S3__*``."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipelines.storage import Storage

KEYS = {"key": "testing", "secret": "testing"}  # moto takes any
_buckets = itertools.count(1)


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def options(self) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint_url, **KEYS}

    def environment(self) -> dict[str, str]:
        """How a process is pointed at this server through the settings."""
        return {"SHOWRUNNER_S3__ENDPOINT_URL": self.endpoint_url,
                "SHOWRUNNER_S3__ACCESS_KEY_ID": KEYS["key"],
                "SHOWRUNNER_S3__SECRET_ACCESS_KEY": KEYS["secret"],
                "AWS_DEFAULT_REGION": "us-east-1"}

    def new_bucket(self) -> Storage:
        """A fresh, empty bucket, as a storage with a prefix in it."""
        name = f"test-{next(_buckets)}-{uuid.uuid4().hex[:8]}"
        storage = Storage(f"s3://{name}/episodes", self.options())
        storage.fs.mkdir(name)
        return storage


def started() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()
