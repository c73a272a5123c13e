"""The API's one error shape, ``{"error": {"status", "code", "message", "fields"?}}``, for the
answers the app makes and for those the HTTP server makes on its own (Serve's proxy and uvicorn),
which have nothing but a status and a text.

Pure logic: ``JsonErrors`` is plain ASGI (dicts and awaitables), so it needs no web framework
and its tests need no server.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

# The codes of answers made from a status alone; the app's own errors pick more precise ones.
CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 408: "request_timeout", 413: "body_too_large",
    416: "range_not_satisfiable", 422: "invalid_request", 429: "rate_limited",
    500: "internal_error", 502: "bad_gateway", 503: "unavailable", 504: "gateway_timeout",
}
MAX_MESSAGE = 1000  # a text made elsewhere is cut here: an error says what, not everything


def code_for(status: int) -> str:
    return CODES.get(status, "http_error")


def phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_body(status: int, code: str, message: str,
               fields: list[dict[str, str]] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"status": status, "code": code, "message": message}
    if fields:
        error["fields"] = fields
    return {"error": error}


def from_text(status: int, text: bytes) -> bytes:
    """The JSON body of an error some other layer answered in plain text (or with no body:
    then the status's phrase is the message)."""
    message = text.decode("utf-8", errors="replace").strip()[:MAX_MESSAGE] or phrase(status)
    return json.dumps(error_body(status, code_for(status), message)).encode()


def raw_response(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 error answer, for a server that writes bytes to the socket itself (as
    uvicorn does for a request it cannot parse); it closes the connection after."""
    body = from_text(status, message.encode())
    head = (f"HTTP/1.1 {status} {phrase(status)}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode("latin-1") + body


class JsonErrors:
    """ASGI middleware: every error answer in the API's JSON shape.

    Around the app it catches what Starlette answers in plain text by itself (a bad ``Range``);
    around Serve's proxy what the proxy answers (a request dropped or timed out; a replica that
    died, where nothing answers and uvicorn would send a bare 500). An error in JSON already,
    and every success, passes as it is, streamed as it comes.
    """

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive,
                       send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        held: Message | None = None  # the start of a plain-text error, until its body is in
        text = b""

        async def send_json(message: Message) -> None:
            nonlocal started, held, text
            if message["type"] == "http.response.start":
                started = True
                if message["status"] >= 400 and not _is_json(message.get("headers", [])):
                    held = message
                    return
            elif message["type"] == "http.response.body" and held is not None:
                text += message.get("body", b"")
                if message.get("more_body", False):
                    return
                await _send_error(send, held["status"], text, held.get("headers", []))
                return
            await send(message)

        try:
            await self.app(scope, receive, send_json)
        except Exception:
            if not started:  # and re-raised: the server logs it, and sends nothing more
                await _send_error(send, 500, b"", [])
            raise
        if not started:
            await _send_error(send, 500, b"", [])


def _is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name.lower() == b"content-type" and b"json" in value.lower()
               for name, value in headers)


async def _send_error(send: Send, status: int, text: bytes,
                      headers: list[tuple[bytes, bytes]]) -> None:
    """The error as JSON, with the headers it had (``retry-after``, ``content-range``...)."""
    body = from_text(status, text)
    kept = [(n, v) for n, v in headers if n.lower() not in (b"content-type", b"content-length")]
    await send({"type": "http.response.start", "status": status,
                "headers": [*kept, (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
