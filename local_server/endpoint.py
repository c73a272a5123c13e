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
from local_server.tiers import Tier

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# What an admitted request is answered: JSON-ready data, or a ready response (for bytes).
Reply = dict[str, Any] | web.StreamResponse
# An endpoint's own part: check the body (raise ``ApiError``), say what it costs and answers.
Work = Callable[[Any, "Call"], "Admission"]
MALFORMED_BODY = b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{"ind'


@dataclass(frozen=True, slots=True)
class Call:
    """What an endpoint's work knows of its request besides the body."""

    id: str  # the x-request-id
    # ``http://host:port`` of the socket the request came in on: where links in an answer point
    # (the server's own address, not the Host header a client chose).
    origin: str


@dataclass(slots=True)
class Admission:
    """What a checked request costs and answers: ``body`` when the answer is ready, else
    ``make``, run only once the request is admitted and during its latency. ``billed``, when
    given, is handed what takes the bill back, once the answer is billed (a video job refunds
    itself if it fails). ``tier``: the service tier it is served and billed at (chat)."""

    tokens: int = 0
    body: Reply | None = None
    make: Callable[[], Awaitable[Reply]] | None = None
    billed: Callable[[Refund], None] | None = None
    tier: Tier | None = None


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
            state.check_model(raw)
            admission = work(raw, Call(request_id, origin(request)))
            tier = admission.tier
            headers = state.admit(endpoint, admission.tokens, tier)
            headers["x-request-id"] = request_id
            fault = state.draw_fault()
            if fault == "server_error":
                raise state.server_error()
            delay = state.latency(endpoint, tier)
            if fault == "hang":
                stats.count("hang")
                delay += hang_s
            if fault == "malformed":
                await _sleep(delay)
                stats.count("malformed")
                return web.Response(body=MALFORMED_BODY, content_type="application/json",
                                    headers=headers)
            reply = await _reply_during(admission, delay)
            stats.answered(tier)
            if fault is None:  # a hang's answer comes after its client gave up: not billed
                refund = stats.bill(digest, tier)
                if admission.billed is not None:
                    admission.billed(refund)
            if isinstance(reply, web.StreamResponse):
                reply.headers.update(headers)
                return reply
            return web.json_response(reply, headers=headers)
        except ApiError as err:
            stats.count(err.counter)
            return err.response(request_id)
        except asyncio.CancelledError:  # the client left (aiohttp's handler cancellation)
            stats.count("left")
            raise
        finally:
            stats.leave()

    return handle


def origin(request: web.Request) -> str:
    """``http://host:port`` of the socket ``request`` came in on."""
    transport = request.transport
    address = transport.get_extra_info("sockname") if transport is not None else None
    if not isinstance(address, tuple):  # a Unix socket, or a closed transport
        return f"http://{request.host}"
    host, port = address[0], address[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


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
