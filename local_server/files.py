"""Files the server links to from its answers (``GET /files/images/{name}``): pictures answered
as URLs, as OpenAI's ``response_format="url"`` and some local servers do by default.

Kept in the server's temporary folder, the newest ``kept`` only: a provider's links expire too,
and a long benchmark must not fill the disk. Anyone holding a link may read it without a key, as
a provider's signed links are read; names are random, so links cannot be guessed.
"""

from __future__ import annotations

import secrets
import tempfile
from collections import OrderedDict
from pathlib import Path

from aiohttp import web

from local_server.background import in_background
from local_server.errors import ApiError
from local_server.state import ServerState

KEPT = 256
ROUTE = "/files/images/{name}"


class ImageFiles:
    """The newest ``kept`` pictures answered as links, by file name."""

    def __init__(self, state: ServerState, kept: int = KEPT) -> None:
        self.state = state
        self.kept = kept
        self._folder = tempfile.TemporaryDirectory(prefix="showrunner-images-")
        self._files: OrderedDict[str, Path] = OrderedDict()

    async def add(self, png: bytes) -> str:
        """Keep ``png``; returns its file name (the oldest kept one is let go beyond ``kept``)."""
        name = f"img_{secrets.token_hex(12)}.png"
        path = Path(self._folder.name) / name
        await in_background(path.write_bytes, png)
        self._files[name] = path
        while len(self._files) > self.kept:
            _, oldest = self._files.popitem(last=False)
            oldest.unlink(missing_ok=True)
        return name

    def path(self, name: str) -> Path | None:
        """Where the picture ``name`` is kept; None if it never was or has been let go."""
        return self._files.get(name)

    @staticmethod
    def url(origin: str, name: str) -> str:
        return f"{origin}{ROUTE.format(name=name)}"

    async def serve(self, request: web.Request) -> web.StreamResponse:
        request_id = self.state.request_id()
        path = self.path(request.match_info["name"])
        if path is None:
            return ApiError(404, f"No image file {request.match_info['name']!r}: it never "
                            f"existed, or it expired (the server keeps the newest {self.kept}).",
                            code="not_found").response(request_id)
        return web.FileResponse(path, headers={"Content-Type": "image/png",
                                               "x-request-id": request_id})

    async def close(self, app: web.Application) -> None:
        self._files.clear()
        self._folder.cleanup()
