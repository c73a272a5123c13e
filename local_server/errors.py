"""OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}`` with a status.

Raised anywhere in a request's handling and turned into the response in one place, so every
refusal looks the same to the SDK and is counted once in ``/stats``.
"""

from __future__ import annotations

from aiohttp import web


class ApiError(Exception):
    """A refusal: the status, OpenAI's error fields, extra headers, and the ``/stats`` counter
    it increments (``None``: none)."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None, counter: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.counter = counter

    def response(self, request_id: str) -> web.Response:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}
        return web.json_response(body, status=self.status,
                                 headers={**self.headers, "x-request-id": request_id})


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """A 400 ``invalid_request_error``, counted as ``bad_request``."""
    return ApiError(400, message, param=param, code=code, counter="bad_request")
