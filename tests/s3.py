"""An S3-protocol server on loopback for the tests: moto's ``ThreadedMotoServer``.

It stands in for S3 (or MinIO, Ceph, R2) in the tests only: the product talks to it through
fsspec's s3fs over real HTTP, exactly as to a real bucket, given ``SHOWRUNNER_S3__*``."""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
import threading
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


class Cuttable:
    """A TCP proxy on loopback in front of the S3 server, whose line can be cut: while cut, the
    connections it carries are closed and new ones are refused (nothing listens on its port), or,
    ``turning_away``, taken and reset at once (and counted: ``turned_away``), as when the network
    to a bucket fails; mended, it carries connections on the same port again.

    ``options()`` point a storage at it with the S3 client's own retries turned off, so that a
    test sees what Showrunner does about an outage, not what botocore does."""

    def __init__(self, server: S3Server) -> None:
        host, port = server.endpoint_url.removeprefix("http://").rsplit(":", 1)
        self.upstream = (host, int(port))
        self.lock = threading.Lock()
        self.open: set[socket.socket] = set()
        self.turning_away = False
        self.turned_away = 0
        self.listener = self._listen(0)
        self.port = self.listener.getsockname()[1]
        self.endpoint_url = f"http://127.0.0.1:{self.port}"

    def options(self) -> dict[str, Any]:
        # Short timeouts too (botocore's are 60 s): a request caught by a cut fails soon, and is
        # tried again within the storage's patience, rather than waiting out a minute per try.
        return {"endpoint_url": self.endpoint_url, **KEYS,
                "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 3,
                                  "read_timeout": 10}}

    def bucket(self, storage: Storage) -> Storage:
        """``storage``'s bucket, reached through this line."""
        return Storage(storage.url, self.options())

    def cut(self, *, turning_away: bool = False) -> None:
        with self.lock:
            listener = None if turning_away else self.listener
            self.listener = self.listener if turning_away else None
            self.turning_away = turning_away
            carried, self.open = self.open, set()
        if listener is not None:
            listener.close()
        for conn in carried:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def mend(self) -> None:
        with self.lock:
            self.turning_away = False
            if self.listener is None:
                self.listener = self._listen(self.port)

    def close(self) -> None:
        self.cut()

    def _turn_away(self, client: socket.socket) -> None:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # a reset
        self.turned_away += 1

    def _listen(self, port: int) -> socket.socket:
        listener = socket.create_server(("127.0.0.1", port))
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return listener

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed: cut
                return
            with self.lock:
                turning_away = self.turning_away
            if turning_away:
                self._turn_away(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self.lock:
                replaced = self.listener is not listener
                carried = not replaced and not self.turning_away
                if carried:
                    self.open |= {client, upstream}
            if not carried:  # cut meanwhile
                client.close()
                upstream.close()
                if replaced:
                    return
                # Turning away keeps this listener: it must go on accepting, or once mended
                # nothing would take the connections its backlog holds (they would hang).
                continue
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        for conn in (source, target):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        with self.lock:
            self.open -= {source, target}
