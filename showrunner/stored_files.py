"""Serving a file from object storage over HTTP, in pieces: a ``Range`` is read from where it
starts (a video's seek costs its bytes, not the file's), and the bytes are streamed in chunks,
never held whole. A local folder's files are served by Starlette's ``FileResponse`` instead."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi.responses import Response, StreamingResponse

from pipelines.byte_ranges import Unsatisfiable, byte_range
from pipelines.storage import Storage

CHUNK_BYTES = 1 << 20


async def stored_file(storage: Storage, key: str, media_type: str, range_header: str | None,
                      head: bool = False) -> Response:
    """The file ``key`` (its size first: a missing one raises ``FileNotFoundError``)."""
    size = await asyncio.to_thread(storage.size, key)
    headers = {"accept-ranges": "bytes"}
    try:
        span = byte_range(range_header, size)
    except Unsatisfiable:
        return Response(status_code=416, headers={**headers, "content-range": f"bytes */{size}"})
    start, length, status = 0, size, 200
    if span is not None:
        start, length, status = span.start, span.length, 206
        headers["content-range"] = span.content_range(size)
    headers["content-length"] = str(length)
    if head:
        return Response(status_code=status, headers=headers, media_type=media_type)
    return StreamingResponse(_read(storage, key, start, length), status_code=status,
                             headers=headers, media_type=media_type)


async def _read(storage: Storage, key: str, start: int, length: int) -> AsyncIterator[bytes]:
    handle = await asyncio.to_thread(storage.open, key)
    try:
        await asyncio.to_thread(handle.seek, start)
        while length > 0:
            chunk = await asyncio.to_thread(handle.read, min(CHUNK_BYTES, length))
            if not chunk:
                return
            length -= len(chunk)
            yield chunk
    finally:
        await asyncio.to_thread(handle.close)
