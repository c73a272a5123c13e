"""What the server would have charged, request body by request body.

A client that crashes after a call was answered, and makes the call again, pays twice; no counter
of the client can show it, since the process that paid may be dead. The server sees every body,
so it keeps, per endpoint, how many times each body was billed: ``duplicate_paid`` (the sum over
bodies of times billed minus one) is what was paid for again. Bodies are known by a SHA-256 of
their bytes: a dict of 32-byte digests, one entry per distinct body, a hash per request.

**Billed** means what a provider charges for: a 200 carrying a well-formed answer. A 5xx, a 429,
a malformed body and a hang are not billed (a hang's answer, if it ever comes, comes after the
client gave up), nor is a request whose client left before its answer (aiohttp cancels the
handler): the client never had the answer, so asking again is not paying twice.

**A video job** is billed when its creation (``POST /v1/videos``) is answered 200 with the job:
what a provider charges for is the clip it accepted to render, and the polls and the download
that follow are free reads of it. A job that then fails (``--video-fail-rate``, or the server
stopping) is refunded, as providers do not charge for a generation that produced nothing; so a
client that creates the same clip again after a failure is not counted as paying twice, and one
that loses a running job's id and creates it again is. The creation body is multipart form data
whose boundary the client draws at random, so a form is known by its fields (names, values, and
an upload's file name and bytes, in sorted order) rather than its raw bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

Refund = Callable[[], None]


def body_digest(raw: bytes) -> bytes:
    """The key of a JSON body: its exact bytes (a client that rebuilds the same call sends the
    same bytes; one that changes a byte asked for something else)."""
    return hashlib.sha256(raw).digest()


def form_digest(form: Any) -> bytes:
    """The key of a form body, whatever its boundary: each field's name and value, an upload's
    file name and bytes, length-prefixed (no two forms share a key) and in sorted order. An
    upload's file is left at its start for whoever reads it next."""
    digest = hashlib.sha256()
    parts = []
    for name, value in form.items():
        if hasattr(value, "file"):  # an upload (aiohttp's FileField)
            data = value.file.read()
            value.file.seek(0)
            parts.append((name, (value.filename or "").encode() + b"\0" + data))
        else:
            parts.append((name, str(value).encode()))
    for name, data in sorted(parts):
        for chunk in (name.encode(), data):
            digest.update(len(chunk).to_bytes(8, "big"))
            digest.update(chunk)
    return digest.digest()


class Ledger:
    """How many times each body was billed. ``paid`` and ``duplicate_paid`` are kept as the
    ledger changes, so reading them costs nothing however many bodies it holds. Zeroing the
    counters (``DELETE /stats``) starts a new ledger: a refund of a job billed before goes to the
    old one, and changes nothing that is read."""

    __slots__ = ("_times", "paid")

    def __init__(self) -> None:
        self._times: dict[bytes, int] = {}
        self.paid = 0

    @property
    def duplicate_paid(self) -> int:
        """Answers billed for a body already billed: the sum over bodies of (times - 1)."""
        return self.paid - len(self._times)

    def bill(self, digest: bytes) -> Refund:
        """Bill one answer to ``digest``; returns what takes it back (a video job that fails)."""
        self._times[digest] = self._times.get(digest, 0) + 1
        self.paid += 1
        refunded = False

        def refund() -> None:
            nonlocal refunded
            if refunded:
                return
            refunded = True
            left = self._times[digest] - 1
            if left:
                self._times[digest] = left
            else:
                del self._times[digest]
            self.paid -= 1

        return refund
