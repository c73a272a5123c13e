"""The request path every model endpoint shares; each endpoint only checks its body and says
what the request costs and what it answers (an ``Admission``).

Admission happens on arrival, as a provider's does: slow work (a picture, speech) is done during
the latency, after admission, since doing it first would let quick requests overtake slow ones
at the limits. The hot path is kept cheap (plain ``json``, no per-request task when there is no
latency): the server must outrun the clients it referees.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from local_server.billing import Refund, body_digest, form_digest
from local_server.errors import ApiError, bad_request
from local_server.state import ServerState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# What an admitted request is answered: JSON-ready data, or a ready response (for bytes).
Reply = dict[str, Any] | web.StreamResponse
# An endpoint's own part: check the body (raise ``ApiError``), say what it costs and answers.
Work = Callable[[Any, str], "Admission"]
MALFORMED_BODY = b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{"ind'


@dataclass(slots=True)
class Admission:
    """What a checked request costs and answers: ``body`` when the answer is ready, else
    ``make``, run only once the request is admitted and during its latency. ``billed``, when
    given, is handed what takes the bill back, once the answer is billed (a video job refunds
    itself if it fails)."""

    tokens: int = 0
    body: Reply | None = None
    make: Callable[[], Awaitable[Reply]] | None = None
    billed: Callable[[Refund], None] | None = None


def model_endpoint(state: ServerState, endpoint: str, work: Work, *, form: bool = False
                   ) -> Handler:
    """A handler applying auth, ``work``, quota, limits, faults and latency for ``endpoint``.
    ``form``: the body is multipart form data (uploads), not JSON."""
    stats = state.stats[endpoint]
    hang_s = state.config.hang_s

    async def handle(request: web.Request) -> web.StreamResponse:
        request_id = state.request_id()
        stats.enter()
        try:
            state.check_auth(request.headers)
            raw, digest = await read_body(request, form)
            admission = work(raw, request_id)
            headers = state.admit(endpoint, admission.tokens)
            headers["x-request-id"] = request_id
            fault = state.draw_fault()
            if fault == "server_error":
                raise state.server_error()
            delay = state.latency(endpoint)
            if fault == "hang":
                stats.count("hang")
                delay += hang_s
            if fault == "malformed":
                await _sleep(delay)
                stats.count("malformed")
                return web.Response(body=MALFORMED_BODY, content_type="application/json",
                                    headers=headers)
            reply = await _reply_during(admission, delay)
            stats.accepted += 1
            if fault is None:  # a hang's answer comes after its client gave up: not billed
                refund = stats.ledger.bill(digest)
                if admission.billed is not None:
                    admission.billed(refund)
            if isinstance(reply, web.StreamResponse):
                reply.headers.update(headers)
                return reply
            return web.json_response(reply, headers=headers)
        except ApiError as err:
            stats.count(err.counter)
            return err.response(request_id)
        finally:
            stats.leave()

    return handle


async def read_body(request: web.Request, form: bool) -> tuple[Any, bytes]:
    """The parsed body and its digest (what ``/stats`` bills it as); a 400 (or 413) in OpenAI's
    shape when it cannot be read."""
    try:
        if form:
            fields = await request.post()
            return fields, form_digest(fields)
        raw = await request.read()
        return json.loads(raw), body_digest(raw)
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "The request body is too large.", counter="bad_request") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, a broken multipart body
        kind = "form data" if form else "JSON"
        raise bad_request(f"We could not parse the {kind} body of your request. (HINT: This "
                          f"likely means you aren't using your HTTP library correctly.)"
                          ) from None


async def _sleep(delay: float) -> None:
    if delay > 0:
        await asyncio.sleep(delay)


async def _reply_during(admission: Admission, delay: float) -> Reply:
    """The admitted request's reply, made while its latency passes (no task when there is
    nothing to overlap)."""
    if admission.make is None:
        await _sleep(delay)
        return admission.body  # type: ignore[return-value]
    if delay <= 0:
        return await admission.make()
    task = asyncio.ensure_future(admission.make())
    try:
        await asyncio.sleep(delay)
    except asyncio.CancelledError:  # the client left: stop the work too
        task.cancel()
        raise
    return await task
