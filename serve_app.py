"""The HTTP API: a Ray Serve deployment with a FastAPI ingress in front of the coordinator actor.

``serve run serve_app:app`` (settings from ``SHOWRUNNER_*`` variables) or ``showrunner serve``.
Replicas hold no episode state: the coordinator and the provider actors are detached, named
actors that every replica shares, so limits and tenancy hold however many replicas run.

Every ``/v1`` route: authentication (401) → the tenant's request rate (429) → the route's own
checks (404, 413, 422, 429 quota). Errors share one JSON shape, ``{"error": {"status", "code",
"message", "fields"?}}``; none carries a secret or a server path.

No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations at run
time, on methods that Serve wraps, where postponed (string) annotations do not resolve.
"""

import asyncio
import ipaddress
import json
import logging
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import ray
from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

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
from pipelines.models import EpisodeRequest, EpisodeStatus
from pipelines.settings import ProviderKind, Settings, load_settings
from pipelines.tenancy import IdempotencyConflict, QuotaExceeded
from showrunner.launcher import Run, local_server_options, needs_local_server, start_run

log = logging.getLogger("showrunner.serve")

EVENT_POLL_S = 15.0  # one long poll of the coordinator; a keep-alive comment between them
READY_TIMEOUT_S = 2.0
FOLLOW_BATCH_S = 0.1  # changes are gathered this long between pulls: views lag by about this
FOLLOW_RETRY_S = 1.0
QUOTA_RETRY_S = 30  # when a tenant has too many episodes running: about a scene's time
ACTOR_ROLES = ("tenants", "coordinator", *ProviderKind, "local-server")


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
    body: dict[str, Any] = {"status": err.status, "code": err.code, "message": err.message}
    if err.fields:
        body["fields"] = err.fields
    return JSONResponse({"error": body}, status_code=err.status, headers=err.headers)


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
    code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
    return error_response(ApiError(err.status_code, code, str(err.detail),
                                   headers=dict(err.headers or {})))


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


async def read_body(request: Request, cap: int) -> bytes:
    """The body, refused with 413 past ``cap`` bytes, whether or not it declared its length."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise ApiError(413, "body_too_large", f"the body is {declared} bytes; the limit is {cap}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise ApiError(413, "body_too_large", f"the body is over the {cap}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_submission(body: bytes, max_batch: int) -> tuple[list[EpisodeRequest], bool]:
    """The episodes a body asks for, and whether it was a batch."""
    if not body.strip():
        raise ApiError(400, "invalid_json", "the body is empty; send an episode request as JSON")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {err}") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the body is nested too deeply") from None
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
    output_dir = settings.service.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    local_url = None
    if needs_local_server(settings):
        server = bundled_server_actor(
            local_server_options(settings, settings.service.local_latency_scale),
            name=f"{prefix}:local-server")
        local_url = ray.get(server.base_url.remote())
    run = start_run(settings, output_dir, local_url, prefix=prefix, detached=True)
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
        # Episode files are served from where the coordinator writes them, as it resolved it.
        self.folders = Path(ray.get(self.run.coordinator.episodes_root.remote()))
        # Every episode's latest view, kept current by following the coordinator's changes:
        # status polls, the most frequent request, are answered from here.
        self.views: dict[str, EpisodeView] = {}
        self._follower: asyncio.Task[None] | None = None
        if not self.keys.enabled:
            log.warning("no API keys configured (SHOWRUNNER_API_KEYS): only loopback clients "
                        "are served, all as one tenant")

    # -- checks shared by the routes ------------------------------------------------------------

    def _tenant(self, request: Request) -> str:
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
        return tenant

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
                since, views = await self.coordinator.changes(since, 30.0)
            except Exception:  # the coordinator unreachable: serve no view that may be stale
                log.warning("following the coordinator's changes failed; retrying",
                            exc_info=True)
                self.views.clear()  # polls read the coordinator (and say so) until this works
                since = 0
                await asyncio.sleep(FOLLOW_RETRY_S)
                continue
            for view in views:
                self._keep(view)
            await asyncio.sleep(FOLLOW_BATCH_S)

    # -- routes ---------------------------------------------------------------------------------

    @api.post("/v1/episodes", status_code=202, summary="Submit an episode or a batch")
    async def submit(self, request: Request,
                     idempotency_key: Annotated[str | None, Header()] = None) -> JSONResponse:
        """One `EpisodeRequest`, or `{"episodes": [...]}`. With an `Idempotency-Key`, a
        repeated request returns the episodes the first one made."""
        tenant = self._tenant(request)
        service = self.settings.service
        if idempotency_key is not None:
            try:
                check_idempotency_key(idempotency_key)
            except ValueError as err:
                fields = [{"field": "Idempotency-Key", "message": str(err)}]
                raise ApiError(422, "invalid_request", str(err), fields=fields) from None
        requests, batch = parse_submission(await read_body(request, service.max_body_bytes),
                                           service.max_batch)
        scenes = sum(r.scenes for r in requests)
        if scenes > service.max_scenes_per_request:
            raise ApiError(429, "quota_exceeded", f"the request asks for {scenes} scenes; this "
                           f"key may ask for {service.max_scenes_per_request} in one request — "
                           "split it", headers={"retry-after": str(QUOTA_RETRY_S)})
        try:
            views: list[EpisodeView] = await self.desk.submit(
                tenant, requests, idempotency_key=idempotency_key,
                max_active=service.max_active_episodes)
        except QuotaExceeded as err:
            raise ApiError(429, "quota_exceeded", f"{err}; wait for some to finish",
                           headers={"retry-after": str(QUOTA_RETRY_S)}) from None
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
    ) -> dict[str, Any]:
        tenant = self._tenant(request)
        if cursor is not None and not is_number(cursor):
            fields = [{"field": "cursor", "message": "not a cursor this server gave"}]
            raise ApiError(422, "invalid_request", "cursor: not a cursor this server gave",
                           fields=fields)
        page, after = await self.desk.page(tenant, status, limit, int(cursor or 0))
        return {"episodes": [public(v) for v in page],
                "next_cursor": str(after) if after is not None else None}

    @api.get("/v1/episodes/{episode_id}", summary="An episode's status, scenes, cost and report")
    async def get_episode(self, request: Request, episode_id: str) -> dict[str, Any]:
        return public(await self._view(self._tenant(request), episode_id))

    @api.delete("/v1/episodes/{episode_id}", summary="Cancel an episode (idempotent)")
    async def cancel(self, request: Request, episode_id: str) -> dict[str, Any]:
        tenant = self._tenant(request)
        await self._view(tenant, episode_id)
        status: EpisodeStatus = await self.coordinator.cancel(episode_id)
        await self._view(tenant, episode_id, fresh=True)  # polls here see it cancelled at once
        return {"id": episode_id, "status": status.value, "links": links(episode_id)}

    @api.get("/v1/episodes/{episode_id}/events", summary="Progress as Server-Sent Events")
    async def events(self, request: Request, episode_id: str,
                     last_event_id: Annotated[str | None, Header()] = None
                     ) -> StreamingResponse:
        """Events until the episode ends; reconnect with `Last-Event-ID` to resume."""
        tenant = self._tenant(request)
        if last_event_id is not None and not is_number(last_event_id):
            fields = [{"field": "Last-Event-ID", "message": "must be an event id (a number)"}]
            raise ApiError(422, "invalid_request", describe(fields), fields=fields)
        await self._view(tenant, episode_id)
        after = int(last_event_id or 0)
        return StreamingResponse(self._stream(tenant, episode_id, after),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})

    async def _stream(self, tenant: str, episode_id: str, after: int) -> AsyncIterator[str]:
        yield "retry: 2000\n\n"
        while True:
            events = await self.coordinator.events(episode_id, after, EVENT_POLL_S)
            for event in events:
                after = event.seq
                yield sse(event.model_dump(mode="json"))
            if not events:
                view = await self.coordinator.view(episode_id)
                if view is None or view.finished:
                    return
                yield ": keep-alive\n\n"
            elif events[-1].kind.ends_episode:
                # A watcher that saw the end and asks for the status must not see it running.
                await self._view(tenant, episode_id, fresh=True)
                return

    @api.get("/v1/episodes/{episode_id}/artifacts/{name}",
             summary="Download a file: script, screenplay, subtitles, poster, video")
    @api.head("/v1/episodes/{episode_id}/artifacts/{name}", include_in_schema=False)
    async def artifact(self, request: Request, episode_id: str, name: str) -> FileResponse:
        """`script.json`, `script.md`, `episode.srt`, `poster.png`, `episode.mp4` (Range
        requests supported)."""
        tenant = self._tenant(request)
        view = await self._view(tenant, episode_id)
        artifact = Artifact.named(name)  # looked up: a path is never built from the request
        if artifact is not None and artifact not in view.artifacts:  # made since last followed?
            view = await self._view(tenant, episode_id, fresh=True)
        path = None
        if artifact is not None and artifact in view.artifacts:
            path = EpisodeFolder(self.folders, episode_id).artifact(artifact)
        if path is None or not path.is_file():
            have = [a.value for a in view.artifacts] or "none yet"
            raise ApiError(404, "not_found", f"episode {episode_id!r} has no artifact {name!r}; "
                           f"it has {have}")
        return FileResponse(path, media_type=Artifact(path.name).media_type)

    @api.get("/healthz", summary="The HTTP server is up")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz", summary="The coordinator and provider actors answer")
    async def readyz(self) -> JSONResponse:
        calls = {"coordinator": self.coordinator.ping(), "tenants": self.desk.ping(),
                 **{kind.value: ActorProxy(actor).stats()
                    for kind, actor in self.run.providers.items()}}
        checks = {name: asyncio.ensure_future(call) for name, call in calls.items()}  # at once
        results = {}
        for name, check in checks.items():
            try:
                await asyncio.wait_for(check, READY_TIMEOUT_S)
                results[name] = "ok"
            except Exception as err:  # any failure means not ready; say which and why
                results[name] = f"unavailable: {type(err).__name__}"
        ready = all(v == "ok" for v in results.values())
        return JSONResponse({"status": "ready" if ready else "unavailable", "checks": results},
                            status_code=200 if ready else 503)


def serve_forever(settings: Settings, keyed: bool) -> int:
    """``showrunner serve``: Ray (joined or started), Serve on the settings' address, the app;
    until Ctrl-C, then everything it started is stopped."""
    from showrunner.launcher import ensure_ray

    host, port = settings.service.host, settings.service.port
    ensure_ray()
    serve.start(http_options={"host": host, "port": port})
    try:
        serve.run(build_app(settings), name="showrunner", route_prefix="/")
        print(f"Showrunner API on http://{host}:{port}  (docs: http://{host}:{port}/docs)",
              flush=True)
        if not keyed:
            print("no API keys configured: serving this machine's clients only, as one tenant",
                  flush=True)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        print("stopping", flush=True)
        return 0
    finally:
        serve.shutdown()
        stop_service()


def build_app(settings: Settings | None = None, prefix: str = "showrunner") -> Any:
    """The Serve application; without settings, each replica reads them from the environment."""
    return ShowrunnerAPI.bind(settings, prefix)


app = build_app()
