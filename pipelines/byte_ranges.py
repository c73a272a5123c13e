"""The one byte range of an HTTP ``Range`` header (RFC 9110 §14), for files served from object
storage: pure, so every edge is tested without a server.

One range is served as asked (206). A header this does not take (another unit, several ranges,
a malformed one) is ignored and the whole file is served (200), as the RFC lets a server do. A
range that starts past the end cannot be served (416).
"""

from __future__ import annotations

import re
from typing import NamedTuple

_ONE_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


class Unsatisfiable(Exception):
    """The range starts past the file's end (HTTP 416)."""


class ByteRange(NamedTuple):
    start: int
    end: int  # inclusive, as in Content-Range

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


def byte_range(header: str | None, size: int) -> ByteRange | None:
    """The range to serve of a file of ``size`` bytes; None for the whole file."""
    if not header:
        return None
    match = _ONE_RANGE.match(header)
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if len(first) > 20 or len(last) > 20:  # no file is that long: not worth parsing
        raise Unsatisfiable(header)
    if not first:  # "-N": the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable(header)
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    if last and int(last) < start:
        return None  # malformed (end before start): ignored, the whole file
    if start >= size:
        raise Unsatisfiable(header)
    return ByteRange(start, min(int(last), size - 1) if last else size - 1)
