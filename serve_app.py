"""The HTTP API: a Ray Serve deployment with a FastAPI ingress in front of the coordinator actor.

``serve run serve_app:app`` (settings from ``SHOWRUNNER_*`` variables) or ``showrunner serve``.
Replicas hold no episode state: the coordinator and the provider actors are detached, named
actors that every replica shares, so limits and tenancy hold however many replicas run.

Every ``/v1`` route: authentication (401) → the tenant's request rate (429) → the actors it
needs answering (503) → the route's own checks (404, 408, 413, 422, 429 quota). Errors share one
JSON shape, ``{"error": {"status", "code", "message", "fields"?}}``; none carries a secret or a
server path. Errors are mapped to it at the edges, not in routes: exception handlers (an actor
down or restarting: 503), the ``JsonErrors`` middleware (plain-text answers of Starlette, and in
``showrunner serve`` of Serve's proxy) and ``JsonErrorHTTP`` (uvicorn's own 400s, in the proxy).

No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations at run
time, on methods that Serve wraps, where postponed (string) annotations do not resolve.
"""

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from enum import StrEnum
from typing import Annotated, Any

import ray
import uvicorn.config
from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from ray import serve
from ray.exceptions import RayActorError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from actors.remote import (
    NAMESPACE,
    ActorProxy,
    bundled_server_actor,
    tenant_desk_actor,
)
from pipelines.access import (
    LOCAL_TENANT,
    ApiKeys,
    TenantRateLimiter,
    check_idempotency_key,
    retry_after_header,
)
from pipelines.episode_folder import Artifact, EpisodeFolder
from pipelines.episode_view import EpisodeView
from pipelines.error_shape import JsonErrors, code_for, error_body, raw_response
from pipelines.errors import storage_error
from pipelines.models import EpisodeRequest, EpisodeStatus, ListOrder
from pipelines.outages import Health, Outages
from pipelines.request_numbers import NumberTooLong, exceeds, load_json, parse_counter
from pipelines.settings import ProviderKind, Settings, load_settings
from pipelines.storage import Storage
from pipelines.stream_tokens import StreamTokens, TokenRefused
from pipelines.tenancy import DailyBudgetSpent, IdempotencyConflict, QuotaExceeded
from pipelines.timeline import build_timeline
from showrunner import studio
from showrunner.launcher import (
    Run,
    dashboard_line,
    dashboard_url,
    local_server_options,
    needs_local_server,
    start_run,
)
from showrunner.stored_files import stored_file

log = logging.getLogger("showrunner.serve")

EVENT_POLL_S = 15.0  # one long poll of the coordinator; a keep-alive comment between them
EVENT_POLL_GRACE_S = 5.0  # a long poll not back this long after its time: the coordinator hangs
PROBE_TIMEOUT_S = 2.0  # an actor that does not answer a ping in this long is down
PROBE_EVERY_S = 1.0  # how often a replica probes the actors it needs
UNAVAILABLE_RETRY_S = 2  # an actor restarts in about a second
NEWEST = sys.maxsize  # "changes after this": none ever are
FOLLOW_BATCH_S = 0.1  # changes are gathered this long between pulls: views lag by about this
FOLLOW_RETRY_S = 1.0
QUOTA_RETRY_S = 30  # when a tenant has too many episodes running: about a scene's time
ACTOR_ROLES = ("tenants", "coordinator", *ProviderKind, "local-server")
# Serve's proxy calls the function this names at its start (in the proxy's own process).
PROXY_CALLBACK_VARIABLE = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"


class EpisodeBatch(BaseModel):
    """Several episodes in one request, all queued or none."""

    model_config = ConfigDict(extra="forbid")

    episodes: list[EpisodeRequest] = Field(min_length=1, description="The episodes to make.")


Submission = EpisodeBatch | EpisodeRequest
SUBMISSION = TypeAdapter(Submission)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *,
                 headers: dict[str, str] | None = None,
                 fields: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers, self.fields = headers, fields


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(error_body(err.status, err.code, err.message, err.fields),
                        status_code=err.status, headers=err.headers)


def field_errors(errors: list[Any]) -> list[dict[str, str]]:
    """Pydantic's errors as ``{"field": "episodes.0.scenes", "message": ...}``."""
    return [{"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
            for e in errors]


def describe(fields: list[dict[str, str]]) -> str:
    shown = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
    return shown + (f"; and {len(fields) - 5} more" if len(fields) > 5 else "")


api = FastAPI(
    title="Showrunner",
    version="0.1.0",
    description="Story premises to finished episodes. Authenticate with `Authorization: Bearer "
    "KEY`; every key is a tenant that sees only its own episodes.",
)


@api.exception_handler(ApiError)
async def _api_error(_: Request, err: ApiError) -> JSONResponse:
    return error_response(err)


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
    fields = field_errors(list(err.errors()))
    return error_response(ApiError(422, "invalid_request", describe(fields), fields=fields))


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
    return error_response(ApiError(err.status_code, code_for(err.status_code), str(err.detail),
                                   headers=dict(err.headers or {})))


@api.exception_handler(RayActorError)
async def _actor_down(_: Request, err: RayActorError) -> JSONResponse:
    """An actor died or is restarting under a call (``ActorDiedError``,
    ``ActorUnavailableError``): whichever route made it, the client may retry shortly."""
    log.warning("an actor call failed: %s", type(err).__name__)
    return error_response(unavailable(f"a part of the service stopped answering "
                                      f"({type(err).__name__})"))


def unavailable(what: str) -> ApiError:
    return ApiError(503, "unavailable", f"{what}; retry in a few seconds",
                    headers={"retry-after": str(UNAVAILABLE_RETRY_S)})


# Starlette's own plain-text answers (a bad ``Range``) in the API's shape too.
api.add_middleware(JsonErrors)


class JsonErrorHTTP(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's HTTP/1.1 protocol (httptools', or h11's), answering a request it cannot parse in
    the API's JSON shape. uvicorn writes that answer to the socket itself, before any ASGI app
    runs, so no middleware can see it: only its protocol class can."""

    def send_400_response(self, msg: str) -> None:
        # Called while the parser's error is being handled: it says what was wrong.
        reason = str(sys.exception() or "")
        message = msg.rstrip(".") + (f": {reason}" if reason else ".")
        self.transport.write(raw_response(400, message))
        self.transport.close()


def proxy_middlewares() -> list[Middleware]:
    """Serve's proxy hook, named by ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` (which
    ``showrunner serve`` sets for the Ray it starts): run once in the proxy's process before its
    uvicorn starts, so uvicorn's and the proxy's own errors come out as JSON too."""
    uvicorn.config.HTTP_PROTOCOLS["auto"] = f"{__name__}:{JsonErrorHTTP.__qualname__}"
    return [Middleware(JsonErrors)]


def _openapi() -> dict[str, Any]:
    """FastAPI's schema plus the submission body, which the route parses itself (for the size
    cap and its own error messages)."""
    if api.openapi_schema is None:
        schema = get_openapi(title=api.title, version=api.version,
                             description=api.description, routes=api.routes)
        body = SUBMISSION.json_schema(ref_template="#/components/schemas/{model}")
        schema.setdefault("components", {}).setdefault("schemas", {}).update(
            body.pop("$defs", {}))
        post = schema["paths"]["/v1/episodes"]["post"]
        post["requestBody"] = {"required": True,
                               "content": {"application/json": {"schema": body}}}
        api.openapi_schema = schema
    return api.openapi_schema


api.openapi = _openapi  # type: ignore[method-assign]


async def read_body(request: Request, cap: int, timeout_s: float) -> bytes:
    """The body, refused with 413 past ``cap`` bytes, whether or not it declared its length;
    408 if it is not all in after ``timeout_s``, its connection closed: a client that stalls
    must not hold a request, and a connection, for ever."""
    declared = request.headers.get("content-length")
    if declared is not None and is_number(declared) and exceeds(declared, cap):
        shown = declared if len(declared) <= 20 else f"{len(declared)}-digit"
        raise ApiError(413, "body_too_large", f"the body is {shown} bytes; the limit is {cap}")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > cap:
                    raise ApiError(413, "body_too_large", f"the body is over the {cap}-byte "
                                   "limit")
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, "body_timeout", f"the body did not arrive within {timeout_s:g} s "
                       f"({size} bytes came)", headers={"connection": "close"}) from None
    return b"".join(chunks)


def parse_submission(body: bytes, max_batch: int) -> tuple[list[EpisodeRequest], bool]:
    """The episodes a body asks for, and whether it was a batch."""
    if not body.strip():
        raise ApiError(400, "invalid_json", "the body is empty; send an episode request as JSON")
    try:
        data = load_json(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {err}") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the body is nested too deeply") from None
    except NumberTooLong as err:
        fields = [{"field": f, "message": "a number too large for any field"}
                  for f in err.fields]
        raise ApiError(422, "invalid_request", describe(fields), fields=fields) from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object: an episode "
                       "request, or {\"episodes\": [...]}")
    try:
        if "episodes" in data:
            batch = EpisodeBatch.model_validate(data)
            if len(batch.episodes) > max_batch:
                fields = [{"field": "episodes", "message": f"at most {max_batch} episodes in "
                           "one request"}]
                raise ApiError(422, "invalid_request", describe(fields), fields=fields)
            return batch.episodes, True
        return [EpisodeRequest.model_validate(data)], False
    except ValidationError as err:
        fields = field_errors(list(err.errors()))
        raise ApiError(422, "invalid_request", describe(fields), fields=fields) from None


def links(episode_id: str) -> dict[str, str]:
    base = f"/v1/episodes/{episode_id}"
    return {"self": base, "events": f"{base}/events", "artifacts": f"{base}/artifacts"}


def public(view: EpisodeView) -> dict[str, Any]:
    """An episode as the API shows it: without its owner, with links, errors scrubbed."""
    shown = view.model_dump(mode="json", exclude={"owner", "artifacts", "figures"})
    shown["error"] = scrub(view.error)
    shown["missing"] = [{"what": m.what, "why": scrub(m.why)} for m in view.missing]
    shown["report"] = {"id": view.id, "status": view.status.value,
                       **view.figures.model_dump(mode="json"), "error": shown["error"]}
    shown["links"] = links(view.id)
    shown["artifacts"] = {a.value: f"/v1/episodes/{view.id}/artifacts/{a.value}"
                          for a in Artifact if a in view.artifacts}
    return shown


def is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()  # "²".isdigit() is true, and int() refuses it


URL = re.compile(r"https?://[^\s'\",)]*[^\s'\",):.]")
ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:[\w.+-]+/)+[\w.+-]*")


def scrub(text: str | None) -> str | None:
    """An error as a tenant may see it: provider URLs and server paths taken out (a provider's
    or ffmpeg's message names them); the full text stays in the server's own logs and report."""
    if not text:
        return text
    text = URL.sub("<provider>", text)
    return ABSOLUTE_PATH.sub(lambda m: m.group().rstrip("/").rsplit("/", 1)[-1], text)


def sse(event: dict[str, Any]) -> str:
    event = {**event, "message": scrub(event.get("message"))}
    return f"id: {event['seq']}\nevent: {event['kind']}\ndata: {json.dumps(event)}\n\n"


class Interruption(StrEnum):
    """Why an event stream ended before its episode did."""

    COORDINATOR_UNAVAILABLE = "coordinator_unavailable"
    EPISODE_LOST = "episode_lost"


INTERRUPTION_MESSAGES = {
    Interruption.COORDINATOR_UNAVAILABLE: "the coordinator stopped answering; reconnect with "
    "Last-Event-ID to go on once it is back",
    Interruption.EPISODE_LOST: "the episode was lost when the coordinator restarted",
}


def interrupted(reason: Interruption) -> str:
    """A stream's last event when it cannot go on. No ``id:``, so a client that reconnects
    (``EventSource`` does) resumes after the last real event."""
    event = {"kind": "interrupted", "reason": reason.value,
             "message": INTERRUPTION_MESSAGES[reason], "retry_after_s": UNAVAILABLE_RETRY_S}
    return f"event: interrupted\ndata: {json.dumps(event)}\n\n"


@contextlib.contextmanager
def episodes_lost(message: str) -> Iterator[None]:
    """The desk's book names an episode the coordinator no longer has: it restarted, and lost
    it. The desk passes on the coordinator's ``KeyError``, which would be a 500; 410, since
    waiting does not bring it back."""
    try:
        yield
    except KeyError:
        raise ApiError(410, "episodes_lost", message) from None


def is_loopback(host: str | None) -> bool:
    """Whether an address is this machine's own; unknown (``None``) is not."""
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback  # type: ignore[arg-type]
    except ValueError:
        return False


def start_service(settings: Settings, prefix: str) -> tuple[Run, Any]:
    """The shared actors (got if they exist): the bundled server if needed, the providers, the
    coordinator and the tenants' desk, all detached so that replicas can come and go."""
    storage = settings.open_storage()
    if storage.local:
        storage.path("").mkdir(parents=True, exist_ok=True)
    local_url = None
    if needs_local_server(settings):
        server = bundled_server_actor(
            local_server_options(settings, settings.service.local_latency_scale),
            name=f"{prefix}:local-server")
        local_url = ray.get(server.base_url.remote())
    run = start_run(settings, storage, local_url, prefix=prefix, detached=True)
    return run, tenant_desk_actor(f"{prefix}:coordinator", name=f"{prefix}:tenants")


def stop_service(prefix: str = "showrunner") -> None:
    """Kill the service's detached actors (and the bundled server's process)."""
    for role in ACTOR_ROLES:
        try:
            handle = ray.get_actor(f"{prefix}:{role}", namespace=NAMESPACE)
        except ValueError:
            continue
        if role == "local-server":
            ray.get(handle.stop.remote())
        ray.kill(handle)


@serve.deployment(
    ray_actor_options={"num_cpus": 0},  # it waits on the coordinator; CPUs go to media tasks
    max_ongoing_requests=2000,  # event streams hold a request each for minutes
)
@serve.ingress(api)
class ShowrunnerAPI:
    def __init__(self, settings: Settings | None = None, prefix: str = "showrunner") -> None:
        self.settings = settings or load_settings()
        self.keys = ApiKeys.from_settings(self.settings)
        self.limiter = TenantRateLimiter(self.settings.service.requests_per_minute)
        self.run, desk = start_service(self.settings, prefix)
        self.run.wait_ready()  # Serve sends no request here before this replica is up
        ray.get(desk.ping.remote(), timeout=60)
        self.coordinator = ActorProxy(self.run.coordinator)
        self.desk = ActorProxy(desk)
        secret = self.settings.service.token_secret
        self.tokens = StreamTokens(
            secret.get_secret_value().encode() if secret is not None
            else ray.get(desk.token_secret.remote()), self.settings.service.stream_token_ttl_s)
        # Episode files are served from where the coordinator writes them, as it opened it: a
        # replica on another node reads object storage, never a path of the coordinator's node.
        self.files: Storage = ray.get(self.run.coordinator.episodes_storage.remote())
        # Every episode's latest view, kept current by following the coordinator's changes:
        # status polls, the most frequent request, are answered from here.
        self.views: dict[str, EpisodeView] = {}
        self._follower: asyncio.Task[None] | None = None
        # Which actors failed their latest probe, since when: /v1 answers 503 while any has,
        # /healthz fails once one has for ``unhealthy_after_s``.
        self.outages = Outages()
        self._watcher: asyncio.Task[None] | None = None
        self._coordinator_version = 0  # its newest change number, as the last probe saw it
        if not self.keys.enabled:
            log.warning("no API keys configured (SHOWRUNNER_API_KEYS): only loopback clients "
                        "are served, all as one tenant")

    # -- checks shared by the routes ------------------------------------------------------------

    def _admit(self, request: Request, episode_id: str | None = None) -> str:
        """The caller's tenant, if it may be served now: a key (401, 403), within its rate (429),
        while every actor the service needs answers (503). For a route of one episode that a
        browser fetches by itself, a ``token`` for that episode stands for the key."""
        token = request.query_params.get("token") if episode_id is not None else None
        if token is not None and episode_id is not None:
            try:
                tenant: str | None = self.tokens.tenant(token, episode_id, time.time())
            except TokenRefused as err:
                raise ApiError(401, "unauthorized", f"{err} (POST /v1/episodes/{episode_id}"
                               "/token with your API key)",
                               headers={"WWW-Authenticate": "Bearer"}) from None
        else:
            tenant = self.keys.tenant(request.headers.get("authorization"))
        if tenant is None:
            raise ApiError(401, "unauthorized", "a valid API key is required: send "
                           "`Authorization: Bearer KEY`", headers={"WWW-Authenticate": "Bearer"})
        if tenant == LOCAL_TENANT and not is_loopback(request.client.host
                                                      if request.client else None):
            raise ApiError(403, "forbidden", "this server has no API keys and serves only "
                           "clients on its own machine")
        wait = self.limiter.take(tenant)
        if wait > 0:
            raise ApiError(429, "rate_limited", "too many requests for this API key: at most "
                           f"{self.settings.service.requests_per_minute} a minute",
                           headers={"retry-after": retry_after_header(wait)})
        down = self._down_now()
        if down:
            raise unavailable("not answering: " + ", ".join(
                f"{part} (for {seconds:.0f} s)" for part, seconds in down.items()))
        return tenant

    def _down_now(self) -> dict[str, float]:
        """The actors down now (the watcher, started here, probes them in the background)."""
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch())
        return self.outages.down()

    async def _watch(self) -> None:
        while True:
            try:
                answers = await self._probe()
                if not isinstance(answers["coordinator"], BaseException):
                    self._check_coordinator(answers["coordinator"][0])
            except Exception:  # a watcher that died would leave the last verdict for ever
                log.warning("probing the actors failed", exc_info=True)
            await asyncio.sleep(PROBE_EVERY_S)

    async def _probe(self) -> dict[str, Any]:
        """Ask every actor the service needs to answer, all at once, each within
        ``PROBE_TIMEOUT_S``; record which did. Returns each one's answer, or its error.

        The coordinator is asked for its newest change number (changes after a number above
        any: none, so nothing else comes back), which also tells a restart (below)."""
        calls = {"coordinator": self.coordinator.changes(NEWEST, 0.0),
                 "tenants": self.desk.ping(),
                 **{kind.value: ActorProxy(actor).stats()
                    for kind, actor in self.run.providers.items()}}
        results = await asyncio.gather(
            *(asyncio.wait_for(call, PROBE_TIMEOUT_S) for call in calls.values()),
            return_exceptions=True)
        answers = dict(zip(calls, results, strict=True))
        self.outages.record({part: not isinstance(answer, BaseException)
                             for part, answer in answers.items()})
        return answers

    def _check_coordinator(self, version: int) -> None:
        """Change numbers only grow within one coordinator; a lower one than the last probe saw
        is a new coordinator, restarted with empty memory. Every view kept is dropped then: it
        may be of an episode the new one does not have (a restart between two calls fails none
        of them, so the follower may not have noticed)."""
        if version < self._coordinator_version:
            log.warning("the coordinator restarted: dropping every episode view kept")
            self.views.clear()
        self._coordinator_version = version

    async def _view(self, tenant: str, episode_id: str, fresh: bool = False) -> EpisodeView:
        """The tenant's episode (404 for anyone else's: it does not exist for them): from the
        followed views, or from the coordinator when ``fresh`` or not seen yet."""
        if self._follower is None or self._follower.done():
            self._follower = asyncio.create_task(self._follow_changes())
        view = None if fresh else self.views.get(episode_id)
        if view is None:
            view = await self.coordinator.view(episode_id)
            if view is not None:
                self._keep(view)
        if view is None or view.owner != tenant:
            raise ApiError(404, "not_found", f"no episode {episode_id!r}")
        return view

    def _keep(self, view: EpisodeView) -> None:
        old = self.views.get(view.id)
        if old is None or view.last_event_id >= old.last_event_id:  # never step back
            self.views[view.id] = view

    async def _follow_changes(self) -> None:
        since = 0
        while True:
            try:
                version, views = await self.coordinator.changes(since, 30.0)
            except Exception:  # the coordinator unreachable: serve no view that may be stale
                log.warning("following the coordinator's changes failed; retrying",
                            exc_info=True)
                self.views.clear()  # polls read the coordinator (and say so) until this works
                since = 0
                await asyncio.sleep(FOLLOW_RETRY_S)
                continue
            if version < since:  # numbers went back: a restarted coordinator (see the watcher)
                self.views.clear()
                since = 0
                continue
            since = version
            for view in views:
                self._keep(view)
            await asyncio.sleep(FOLLOW_BATCH_S)

    # -- the studio page ------------------------------------------------------------------------

    @api.get("/", include_in_schema=False)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(studio.page_html(), headers=studio.PAGE_HEADERS)

    @api.get("/studio/{name}", include_in_schema=False)
    async def studio_file(self, name: str) -> FileResponse:
        found = studio.asset(name)  # looked up: a path is never built from the request
        if found is None:
            raise ApiError(404, "not_found", f"the studio has no file {name!r}")
        path, media_type = found
        return FileResponse(path, media_type=media_type, headers=studio.PAGE_HEADERS)

    @api.get("/v1/whoami", summary="Your tenant, and what this server offers the studio page")
    async def whoami(self, request: Request) -> dict[str, Any]:
        tenant = self._admit(request)
        service = self.settings.service
        keyless = not self.keys.enabled
        # Ray's dashboard runs code on request: linked for the one local user of a keyless
        # server, or where the operator publishes an address (SHOWRUNNER_SERVICE__DASHBOARD_URL).
        dashboard = service.dashboard_url or (dashboard_url() if keyless else None)
        return {"tenant": tenant, "keyless": keyless, "read_only": False,
                "dashboard_url": dashboard,
                "limits": {"max_batch": service.max_batch,
                           "max_scenes_per_request": service.max_scenes_per_request}}

    @api.post("/v1/episodes/{episode_id}/token",
              summary="A short-lived token for one episode's event stream and files")
    async def token(self, request: Request, episode_id: str) -> dict[str, Any]:
        """For URLs a browser fetches by itself (`EventSource`, `<video src>`, a download link),
        which cannot send the key: `?token=TOKEN` there stands for it, for this episode only."""
        tenant = self._admit(request)
        await self._view(tenant, episode_id)
        ttl = self.settings.service.stream_token_ttl_s
        return {"token": self.tokens.issue(tenant, episode_id, time.time()),
                "expires_in_s": ttl}

    @api.get("/v1/episodes/{episode_id}/timeline",
             summary="The episode's timeline: each node's bar, provider load, critical path")
    async def timeline(self, request: Request, episode_id: str) -> dict[str, Any]:
        tenant = self._admit(request)
        await self._view(tenant, episode_id)
        records = await self.coordinator.records_of([episode_id])
        return build_timeline(records, self.settings, now=time.time())

    # -- routes ---------------------------------------------------------------------------------

    @api.post("/v1/episodes", status_code=202, summary="Submit an episode or a batch")
    async def submit(self, request: Request,
                     idempotency_key: Annotated[str | None, Header()] = None) -> JSONResponse:
        """One `EpisodeRequest`, or `{"episodes": [...]}`. With an `Idempotency-Key`, a
        repeated request returns the episodes the first one made."""
        tenant = self._admit(request)
        service = self.settings.service
        if idempotency_key is not None:
            try:
                check_idempotency_key(idempotency_key)
            except ValueError as err:
                fields = [{"field": "Idempotency-Key", "message": str(err)}]
                raise ApiError(422, "invalid_request", str(err), fields=fields) from None
        body = await read_body(request, service.max_body_bytes, service.body_timeout_s)
        requests, batch = parse_submission(body, service.max_batch)
        scenes = sum(r.scenes for r in requests)
        if scenes > service.max_scenes_per_request:
            raise ApiError(429, "quota_exceeded", f"the request asks for {scenes} scenes; this "
                           f"key may ask for {service.max_scenes_per_request} in one request — "
                           "split it", headers={"retry-after": str(QUOTA_RETRY_S)})
        try:
            with episodes_lost("the episodes this Idempotency-Key made were lost when the "
                               "coordinator restarted; send the request with a new key"):
                views: list[EpisodeView] = await self.desk.submit(
                    tenant, requests, idempotency_key=idempotency_key,
                    max_active=service.max_active_episodes)
        except QuotaExceeded as err:
            raise ApiError(429, "quota_exceeded", f"{err}; wait for some to finish",
                           headers={"retry-after": str(QUOTA_RETRY_S)}) from None
        except DailyBudgetSpent as err:
            raise ApiError(429, "daily_budget_exceeded", str(err), headers={
                "retry-after": retry_after_header(max(1.0, err.resets_at - time.time()))},
            ) from None
        except IdempotencyConflict:
            raise ApiError(422, "idempotency_key_reused", "this Idempotency-Key was used with "
                           "a different request; use a new key") from None
        for view in views:
            self._keep(view)
        shown = [{"id": v.id, "status": v.status.value, "links": links(v.id)} for v in views]
        if batch:
            return JSONResponse({"episodes": shown}, status_code=202)
        return JSONResponse(shown[0], status_code=202,
                            headers={"Location": shown[0]["links"]["self"]})

    @api.get("/v1/episodes", summary="List your episodes")
    async def list_episodes(
        self, request: Request,
        status: Annotated[EpisodeStatus | None,
                          Query(description="Only episodes in this state.")] = None,
        limit: Annotated[int, Query(ge=1, le=100, description="Episodes per page.")] = 20,
        cursor: Annotated[str | None, Query(max_length=20, description="`next_cursor` of the "
                                            "previous page.")] = None,
        order: Annotated[ListOrder, Query(description="`oldest` first (submission order) or "
                                          "`newest` first.")] = ListOrder.OLDEST,
    ) -> dict[str, Any]:
        tenant = self._admit(request)
        try:
            since = parse_counter(cursor) if cursor is not None else 0
        except ValueError:
            fields = [{"field": "cursor", "message": "not a cursor this server gave"}]
            raise ApiError(422, "invalid_request", "cursor: not a cursor this server gave",
                           fields=fields) from None
        page, after = await self.desk.page(tenant, status, limit, since,
                                           order is ListOrder.NEWEST)
        return {"episodes": [public(v) for v in page],
                "next_cursor": str(after) if after is not None else None}

    @api.get("/v1/episodes/{episode_id}", summary="An episode's status, scenes, cost and report")
    async def get_episode(self, request: Request, episode_id: str) -> dict[str, Any]:
        return public(await self._view(self._admit(request), episode_id))

    @api.delete("/v1/episodes/{episode_id}", summary="Cancel an episode (idempotent)")
    async def cancel(self, request: Request, episode_id: str) -> dict[str, Any]:
        tenant = self._admit(request)
        await self._view(tenant, episode_id)
        status: EpisodeStatus = await self.coordinator.cancel(episode_id)
        await self._view(tenant, episode_id, fresh=True)  # polls here see it cancelled at once
        return {"id": episode_id, "status": status.value, "links": links(episode_id)}

    @api.get("/v1/episodes/{episode_id}/events", summary="Progress as Server-Sent Events")
    async def events(self, request: Request, episode_id: str,
                     last_event_id: Annotated[str | None, Header()] = None,
                     after: Annotated[str | None, Query(
                         max_length=20, description="Resume after this event, where no "
                         "`Last-Event-ID` can be sent (a new `EventSource`).")] = None,
                     ) -> StreamingResponse:
        """Events until the episode ends; reconnect with `Last-Event-ID` to resume. A browser's
        `EventSource` sends no key: `?token=` (see `POST .../token`) stands for it."""
        tenant = self._admit(request, episode_id)
        last_event_id = last_event_id if last_event_id is not None else after
        try:
            after_seq = parse_counter(last_event_id) if last_event_id is not None else 0
        except ValueError as err:
            fields = [{"field": "Last-Event-ID", "message": f"an event id {err}"}]
            raise ApiError(422, "invalid_request", describe(fields), fields=fields) from None
        await self._view(tenant, episode_id)
        return StreamingResponse(self._stream(tenant, episode_id, after_seq),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})

    async def _stream(self, tenant: str, episode_id: str, after: int) -> AsyncIterator[str]:
        """The episode's events; a stream that cannot go on ends with an ``interrupted`` event
        saying why, never silently (the headers are sent: no error status can say it)."""
        yield f"retry: {UNAVAILABLE_RETRY_S * 1000}\n\n"
        try:
            while True:
                events = await asyncio.wait_for(
                    self.coordinator.events(episode_id, after, EVENT_POLL_S),
                    EVENT_POLL_S + EVENT_POLL_GRACE_S)
                for event in events:
                    after = event.seq
                    yield sse(event.model_dump(mode="json"))
                if not events:
                    view = await self.coordinator.view(episode_id)
                    if view is None:
                        yield interrupted(Interruption.EPISODE_LOST)
                        return
                    if view.finished:
                        return
                    yield ": keep-alive\n\n"
                elif events[-1].kind.ends_episode:
                    # A watcher that saw the end and asks for the status must not see it running
                    # (if the coordinator is gone meanwhile, the copy is dropped anyway).
                    with contextlib.suppress(RayActorError, ApiError):
                        await self._view(tenant, episode_id, fresh=True)
                    return
        except (RayActorError, TimeoutError):
            yield interrupted(Interruption.COORDINATOR_UNAVAILABLE)
        except KeyError:  # the coordinator has no such episode (any more): it restarted
            yield interrupted(Interruption.EPISODE_LOST)

    @api.get("/v1/episodes/{episode_id}/artifacts/{name}",
             summary="Download a file: script, screenplay, subtitles, poster, video")
    @api.head("/v1/episodes/{episode_id}/artifacts/{name}", include_in_schema=False)
    async def artifact(self, request: Request, episode_id: str, name: str) -> Response:
        """`script.json`, `script.md`, `episode.srt`, `poster.png`, `episode.mp4` (Range
        requests supported). With object storage and `presigned_urls_s` set, a redirect (307)
        to a signed URL of the file instead. `?token=` (see `POST .../token`) stands for the
        key, for links and players that cannot send it."""
        tenant = self._admit(request, episode_id)
        view = await self._view(tenant, episode_id)
        artifact = Artifact.named(name)  # looked up: a path is never built from the request
        if artifact is not None and artifact not in view.artifacts:  # made since last followed?
            view = await self._view(tenant, episode_id, fresh=True)
        if artifact is not None and artifact in view.artifacts:
            key = EpisodeFolder(episode_id).artifact(artifact)
            with contextlib.suppress(FileNotFoundError):
                return await self._file(request, key, artifact.media_type)
        have = [a.value for a in view.artifacts] or "none yet"
        raise ApiError(404, "not_found", f"episode {episode_id!r} has no artifact {name!r}; "
                       f"it has {have}")

    async def _file(self, request: Request, key: str, media_type: str) -> Response:
        files = self.files
        if files.local:
            path = files.path(key)
            if not path.is_file():
                raise FileNotFoundError(key)
            return FileResponse(path, media_type=media_type)
        seconds = self.settings.service.presigned_urls_s
        if seconds is not None:
            signed = await asyncio.to_thread(files.sign, key, seconds)
            if signed is not None:
                return RedirectResponse(signed, status_code=307)
        try:
            return await stored_file(files, key, media_type, request.headers.get("range"),
                                     head=request.method == "HEAD")
        except OSError as err:
            if isinstance(err, FileNotFoundError):
                raise
            raise ApiError(503, "storage_unavailable",
                           f"the file could not be read from storage: {storage_error(err)}",
                           headers={"Retry-After": "5"}) from None

    @api.get("/healthz", summary="The replica is up, and no actor it needs has been down long")
    async def healthz(self) -> JSONResponse:
        """200 while every actor answers (`ok`) and while one has been down for less than
        `unhealthy_after_s` (`degraded`: a restart); then 503 (`unhealthy`), so that an
        orchestrator restarts the replica."""
        down = self._down_now()
        health = self.outages.health(self.settings.service.unhealthy_after_s)
        shown: dict[str, Any] = {"status": health.value}
        if down:
            shown["down_s"] = {part: round(seconds, 1) for part, seconds in down.items()}
        return JSONResponse(shown, status_code=503 if health is Health.UNHEALTHY else 200)

    @api.get("/readyz", summary="The coordinator, the desk and the provider actors answer")
    async def readyz(self) -> JSONResponse:
        self._down_now()
        checks = {part: f"unavailable: {type(answer).__name__}"
                  if isinstance(answer, BaseException) else "ok"
                  for part, answer in (await self._probe()).items()}
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ready" if ready else "unavailable", "checks": checks},
                            status_code=200 if ready else 503)


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve_forever(settings: Settings, keyed: bool) -> int:
    """``showrunner serve``: Ray (joined or started), Serve on the settings' address, the app;
    until Ctrl-C or SIGTERM (how Kubernetes and ``ray job stop`` end it), then Serve drains and
    everything it started is stopped, Ray's own processes too if it started Ray."""
    from showrunner.launcher import ensure_ray

    host, port = settings.service.host, settings.service.port
    # Inherited by a Ray started here, whose Serve proxy then answers uvicorn's own errors in
    # JSON too; a joined cluster's nodes need it in their own environment (docs/service.md).
    os.environ.setdefault(PROXY_CALLBACK_VARIABLE, f"{__name__}:{proxy_middlewares.__name__}")
    dashboard = ensure_ray(dashboard=True)
    # After ray.init, whose SIGTERM handler would kill Ray's processes under Serve and exit.
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(settings), name="showrunner", route_prefix="/")
        print(f"Showrunner API on http://{host}:{port}  (studio: http://{host}:{port}/, "
              f"API docs: http://{host}:{port}/docs)", flush=True)
        if dashboard:
            print(dashboard_line(dashboard), flush=True)
        if not keyed:
            print("no API keys configured: serving this machine's clients only, as one tenant",
                  flush=True)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        print("stopping", flush=True)
        return 0
    finally:
        # A second signal must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            serve.shutdown()
            stop_service()
            ray.shutdown()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous)


def build_app(settings: Settings | None = None, prefix: str = "showrunner") -> Any:
    """The Serve application. Given settings (``showrunner serve``), with their number of
    replicas and placement; without (``serve run``, a Serve config file, where those are the
    config's ``num_replicas`` and ``ray_actor_options``), each replica reads the environment."""
    if settings is None:
        return ShowrunnerAPI.bind(settings, prefix)
    return ShowrunnerAPI.options(
        num_replicas=settings.service.replicas,
        ray_actor_options={"num_cpus": 0, "resources": dict(settings.placement.replicas)},
    ).bind(settings, prefix)


app = build_app()
