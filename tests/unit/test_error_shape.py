"""The API's error shape for answers made from a status and a text alone, and the middleware that
puts other layers' plain-text errors in it: pure rules, and ASGI apps driven by hand."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipelines.error_shape import (
    MAX_MESSAGE,
    JsonErrors,
    Message,
    Receive,
    Send,
    code_for,
    error_body,
    from_text,
    raw_response,
)


def test_error_body_has_fields_only_when_there_are_some() -> None:
    assert error_body(404, "not_found", "no episode 'x'") == {
        "error": {"status": 404, "code": "not_found", "message": "no episode 'x'"}}
    fields = [{"field": "scenes", "message": "too many"}]
    assert error_body(422, "invalid_request", "scenes: too many", fields)["error"][
        "fields"] == fields


@pytest.mark.parametrize(("status", "code"), [
    (400, "bad_request"), (408, "request_timeout"), (500, "internal_error"),
    (503, "unavailable"), (418, "http_error"), (599, "http_error"),
])
def test_codes_from_statuses(status: int, code: str) -> None:
    assert code_for(status) == code


def test_a_plain_text_answer_becomes_json() -> None:
    shown = json.loads(from_text(408, b"Request abc timed out after 5.0s.\n"))
    assert shown == {"error": {"status": 408, "code": "request_timeout",
                               "message": "Request abc timed out after 5.0s."}}
    assert json.loads(from_text(416, b""))["error"]["message"] == "Requested Range Not Satisfiable"
    assert json.loads(from_text(599, b""))["error"]["message"] == "Error"
    assert len(json.loads(from_text(500, b"x" * 10_000))["error"]["message"]) == MAX_MESSAGE
    assert "\ufffd" in json.loads(from_text(400, b"bad \xff byte"))["error"]["message"]


def test_a_raw_answer_is_whole_http_and_closes() -> None:
    raw = raw_response(400, "Invalid HTTP request received: Invalid header token")
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 400 Bad Request"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers == {"content-type": "application/json", "content-length": str(len(body)),
                       "connection": "close"}
    assert json.loads(body)["error"]["message"].endswith("Invalid header token")


def answering(*messages: Message, raises: Exception | None = None) -> Any:
    """An ASGI app that sends these messages, then raises ``raises`` if given."""
    async def app(scope: Any, receive: Receive, send: Send) -> None:
        for message in messages:
            await send(message)
        if raises is not None:
            raise raises
    return app


def start(status: int, *headers: tuple[bytes, bytes]) -> Message:
    return {"type": "http.response.start", "status": status, "headers": list(headers)}


def body(data: bytes, more: bool = False) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more}


async def through(app: Any, scope_type: str = "http") -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await JsonErrors(app)({"type": scope_type}, receive, send)
    return sent


def answer(sent: list[Message]) -> tuple[int, dict[bytes, bytes], dict[str, Any]]:
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    headers = dict(sent[0]["headers"])
    assert headers[b"content-type"] == b"application/json"
    assert int(headers[b"content-length"]) == len(sent[1]["body"])
    return sent[0]["status"], headers, json.loads(sent[1]["body"])


async def test_a_plain_text_error_is_sent_as_json_with_its_headers() -> None:
    sent = await through(answering(
        start(416, (b"content-type", b"text/plain; charset=utf-8"),
              (b"content-range", b"bytes */2048"), (b"content-length", b"0")),
        body(b"")))
    status, headers, shown = answer(sent)
    assert status == 416 and headers[b"content-range"] == b"bytes */2048"
    assert shown["error"] == {"status": 416, "code": "range_not_satisfiable",
                              "message": "Requested Range Not Satisfiable"}


async def test_a_streamed_plain_text_error_is_gathered_first() -> None:
    sent = await through(answering(start(503, (b"retry-after", b"5")),
                                   body(b"Request dropped ", more=True),
                                   body(b"due to backpressure.")))
    status, headers, shown = answer(sent)
    assert status == 503 and headers[b"retry-after"] == b"5"
    assert shown["error"]["message"] == "Request dropped due to backpressure."


@pytest.mark.parametrize("messages", [
    (start(404, (b"content-type", b"application/json")), body(b'{"error": {}}')),
    (start(200, (b"content-type", b"text/plain")), body(b"a", more=True), body(b"b")),
    (start(206, (b"content-type", b"video/mp4")), body(b"\x00" * 10)),
])
async def test_json_errors_and_successes_pass_as_they_are(messages: tuple[Message, ...]) -> None:
    assert await through(answering(*messages)) == list(messages)


async def test_nothing_answered_is_a_json_500() -> None:
    status, _, shown = answer(await through(answering()))
    assert status == 500 and shown["error"]["code"] == "internal_error"


async def test_an_error_before_the_answer_is_a_json_500_and_still_raised() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    app = JsonErrors(answering(raises=RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        await app({"type": "http"}, None, send)  # type: ignore[arg-type]
    status, _, shown = answer(sent)
    assert status == 500 and "boom" not in json.dumps(shown)  # the log says why, not the answer


async def test_an_error_after_the_answer_started_is_only_raised() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    app = JsonErrors(answering(start(200), body(b"a", more=True), raises=RuntimeError("late")))
    with pytest.raises(RuntimeError, match="late"):
        await app({"type": "http"}, None, send)  # type: ignore[arg-type]
    assert sent == [start(200), body(b"a", more=True)]


async def test_other_protocols_pass_untouched() -> None:
    messages = (start(403), body(b"no"))
    assert await through(answering(*messages), scope_type="websocket") == list(messages)
