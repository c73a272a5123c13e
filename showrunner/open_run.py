"""``showrunner open DIR``: a finished run's folder in the studio page, read-only, on this
machine only.

No Ray and no state store: the run's ``report.json`` says which episodes there are and how they
ended, their folders hold the files. The API is the read-only part of the Serve app's, in the
same shapes, so the page needs nothing of its own: ``whoami`` says keyless and read-only (the
page then hides what would change something), episodes and their files (with ``Range``, so the
video seeks), and the run's timeline. Whatever would change state answers 405.

Nothing asks for a key, so nothing listens anywhere but loopback, and a request's ``Host`` must
name loopback too (a web page elsewhere cannot reach the files by DNS rebinding). A name from a
request is looked up (an episode among the report's, a file among ``Artifact``), never joined to
a path.
"""

from __future__ import annotations

import json
import re
import signal
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from pipelines.episode_folder import Artifact, EpisodeFolder
from pipelines.error_shape import JsonErrors, error_body
from pipelines.models import EpisodeStatus, ListOrder, SceneState
from pipelines.timeline import episode_part
from showrunner import studio

HOST = "127.0.0.1"  # never another: the files are served to anyone who can connect
LOOPBACK_NAMES = ["127.0.0.1", "localhost"]
REPORT_FILE = "report.json"  # as showrunner.launcher names it (which imports Ray)
TENANT = "local"
LIST_LIMIT, MAX_LIST_LIMIT = 20, 100  # as the Serve app's listing
READ_METHODS = ("GET", "HEAD")
BACKLOG = 128
# An episode folder's name, as the CLI and the coordinator make ids: never a path.
EPISODE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
FIGURES = ("scenes", "scenes_completed", "wall_s", "sequential_s", "critical_path_s",
           "cost_usd", "saved_usd", "cpu_s")


class NotARun(Exception):
    """The folder cannot be opened: the message is one line, naming what is wrong."""


@dataclass(frozen=True)
class RunFolder:
    """A finished run's folder, as ``report.json`` describes it."""

    root: Path
    report: Mapping[str, Any]
    entries: Mapping[str, Mapping[str, Any]]  # episode id -> its report entry, in run order

    @classmethod
    def open(cls, where: str) -> RunFolder:
        if "://" in where:
            raise NotARun(f"{where} is a URL: showrunner open serves a folder on this machine "
                          "(copy the run's folder here first)")
        root = Path(where).expanduser().resolve()
        if not root.is_dir():
            raise NotARun(f"{where}: no such folder")
        file = root / REPORT_FILE
        try:
            report = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NotARun(f"{file} does not exist: {where} is not the folder of a finished "
                          "run") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise NotARun(f"{file} cannot be read as a run report: {err}") from None
        if not isinstance(report, dict) or not isinstance(report.get("episodes"), list):
            raise NotARun(f"{file} is not a run report: it lists no episodes")
        entries = {}
        for entry in report["episodes"]:
            episode_id = entry.get("id") if isinstance(entry, dict) else None
            if not isinstance(episode_id, str) or not EPISODE_ID.fullmatch(episode_id):
                raise NotARun(f"{file} is not a run report: an episode has no valid id")
            entries[episode_id] = entry
        return cls(root, report, entries)

    def file(self, episode_id: str, artifact: Artifact) -> Path | None:
        """The episode's file, if it is there (``episode_id`` is one of the report's)."""
        if episode_id not in self.entries:
            return None
        path = self.root.joinpath(*EpisodeFolder(episode_id).artifact(artifact).split("/"))
        if not path.is_file() or not path.resolve().is_relative_to(self.root):
            return None
        return path

    def title(self, episode_id: str) -> str | None:
        path = self.file(episode_id, Artifact.SCRIPT_JSON)
        try:
            title = json.loads(path.read_text(encoding="utf-8")).get("title") if path else None
        except (OSError, ValueError, AttributeError):
            return None
        return title if isinstance(title, str) else None

    def view(self, episode_id: str) -> dict[str, Any]:
        """The episode as the Serve API shows it (``serve_app.public``), from its report entry
        and its folder."""
        entry = self.entries[episode_id]
        status = str(entry.get("status", EpisodeStatus.FAILED))
        scenes = int(entry.get("scenes") or 0)
        done = int(entry.get("scenes_completed") or 0)
        missing = [m for m in entry.get("missing") or [] if isinstance(m, dict)]
        base = f"/v1/episodes/{episode_id}"
        return {
            "id": episode_id,
            "status": status,
            "title": self.title(episode_id),
            "percent": 100.0 if status == EpisodeStatus.COMPLETED
            else round(100 * done / scenes, 1) if scenes else 0.0,
            "scenes": scene_states(status, scenes, {str(m.get("what")) for m in missing}),
            "cost_usd": entry.get("cost_usd", 0.0),
            "error": entry.get("error"),
            "missing": [{"what": m.get("what"), "why": m.get("why")} for m in missing],
            "report": {"id": episode_id, "status": status,
                       **{k: entry.get(k) for k in FIGURES}, "error": entry.get("error")},
            "links": {"self": base, "artifacts": f"{base}/artifacts",
                      "timeline": f"{base}/timeline"},
            "artifacts": {a.value: f"{base}/artifacts/{a.value}" for a in Artifact
                          if self.file(episode_id, a) is not None},
        }

    @property
    def timeline(self) -> Mapping[str, Any] | None:
        timeline = self.report.get("timeline")
        return timeline if isinstance(timeline, dict) else None


def scene_states(status: str, scenes: int, missing: set[str]) -> list[str]:
    """Each scene's state: done unless the report says it is missing (then failed in a failed
    episode, skipped in another)."""
    short = SceneState.FAILED if status == EpisodeStatus.FAILED else SceneState.SKIPPED
    return [str(short if f"scene {n}" in missing else SceneState.DONE)
            for n in range(1, scenes + 1)]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, code, message), status_code=status,
                        headers=dict(headers or {}))


class ReadOnly:
    """ASGI middleware: anything but a read answers 405, whatever its path (a finished run's
    folder has nothing to submit, cancel or sign)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in READ_METHODS:
            response = error_response(
                405, "method_not_allowed", f"{scope['method']} is not allowed: this is a "
                "finished run's folder, opened read-only (showrunner open); nothing can be "
                "submitted, cancelled or changed here", {"allow": ", ".join(READ_METHODS)})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def build_app(folder: RunFolder, limits: Mapping[str, int]) -> Starlette:
    """The read-only API and the page over ``folder``."""

    def episode_of(request: Request) -> str:
        episode_id = request.path_params["episode_id"]
        if episode_id not in folder.entries:  # looked up: never a path from the request
            raise ApiError(404, "not_found", f"no episode {episode_id!r} in this run")
        return episode_id

    async def page(request: Request) -> Response:
        return HTMLResponse(studio.page_html(), headers=studio.PAGE_HEADERS)

    async def studio_file(request: Request) -> Response:
        name = request.path_params["name"]
        found = studio.asset(name)
        if found is None:
            raise ApiError(404, "not_found", f"the studio has no file {name!r}")
        path, media_type = found
        return FileResponse(path, media_type=media_type, headers=studio.PAGE_HEADERS)

    async def whoami(request: Request) -> Response:
        return JSONResponse({"tenant": TENANT, "keyless": True, "read_only": True,
                             "dashboard_url": None, "limits": dict(limits)})

    async def list_episodes(request: Request) -> Response:
        query = request.query_params
        status = query.get("status")
        if status is not None and status not in set(EpisodeStatus):
            raise ApiError(422, "invalid_request", f"status: not one of "
                           f"{', '.join(EpisodeStatus)}")
        limit = _counter(query.get("limit"), "limit", LIST_LIMIT)
        start = _counter(query.get("cursor"), "cursor", 0)
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise ApiError(422, "invalid_request", f"limit: from 1 to {MAX_LIST_LIMIT}")
        order = query.get("order", ListOrder.OLDEST)
        if order not in set(ListOrder):
            raise ApiError(422, "invalid_request", f"order: not one of {', '.join(ListOrder)}")
        ids = [i for i, e in folder.entries.items() if status is None or e.get("status") == status]
        if order == ListOrder.NEWEST:  # the report lists them in the run's order
            ids.reverse()
        end = start + limit
        return JSONResponse({"episodes": [folder.view(i) for i in ids[start:end]],
                             "next_cursor": str(end) if end < len(ids) else None})

    async def get_episode(request: Request) -> Response:
        return JSONResponse(folder.view(episode_of(request)))

    async def events(request: Request) -> Response:
        episode_id = episode_of(request)
        raise ApiError(404, "not_found", f"episode {episode_id!r} ended: a run's folder keeps "
                       "no event stream (its report and timeline say how it went)")

    async def artifact(request: Request) -> Response:
        episode_id = episode_of(request)
        name = request.path_params["name"]
        found = Artifact.named(name)  # looked up: a path is never built from the request
        path = folder.file(episode_id, found) if found is not None else None
        if found is None or path is None:
            have = [a.value for a in Artifact if folder.file(episode_id, a)] or "none"
            raise ApiError(404, "not_found", f"episode {episode_id!r} has no artifact "
                           f"{name!r}; it has {have}")
        return FileResponse(path, media_type=found.media_type)  # answers Range with 206

    def run_timeline() -> Mapping[str, Any]:
        timeline = folder.timeline
        if timeline is None:
            raise ApiError(404, "not_found", f"this run's {REPORT_FILE} has no timeline (it "
                           "was written by an earlier Showrunner)")
        return timeline

    async def timeline(request: Request) -> Response:
        return JSONResponse(run_timeline())

    async def episode_timeline(request: Request) -> Response:
        episode_id = episode_of(request)
        return JSONResponse(episode_part(dict(run_timeline()), episode_id))

    async def api_error(request: Request, err: Exception) -> Response:
        assert isinstance(err, ApiError)
        return error_response(err.status, err.code, err.message)

    routes = [
        Route("/", page),
        Route("/studio/{name}", studio_file),
        Route("/v1/whoami", whoami),
        Route("/v1/timeline", timeline),
        Route("/v1/episodes", list_episodes),
        Route("/v1/episodes/{episode_id}", get_episode),
        Route("/v1/episodes/{episode_id}/events", events),
        Route("/v1/episodes/{episode_id}/timeline", episode_timeline),
        Route("/v1/episodes/{episode_id}/artifacts/{name}", artifact),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={ApiError: api_error},
        middleware=[
            # Outermost first: every error in the API's shape (Starlette's own 404s, a bad
            # Range, a wrong Host), then the host check, then nothing but reads.
            Middleware(JsonErrors),
            Middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_NAMES),
            Middleware(ReadOnly),
        ],
    )


def _counter(text: str | None, name: str, default: int) -> int:
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise ApiError(422, "invalid_request", f"{name}: not a whole number this server gave")
    return int(text)


def listen(port: int) -> socket.socket:
    """A socket listening on loopback before anything is printed: a port in use is said at
    once (``port`` 0: any free one), and whoever follows the printed address at once is
    answered (held in the backlog until the server starts)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve(folder: RunFolder, sock: socket.socket, limits: Mapping[str, int]) -> int:
    """Serve ``folder`` on ``sock`` until Ctrl-C or SIGTERM; 0 then."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(build_app(folder, limits), log_level="warning",
                                           access_log=False, lifespan="off"))
    port = sock.getsockname()[1]
    print(f"Showrunner studio (read-only) on http://{HOST}:{port}", flush=True)
    print(f"serving {folder.root} ({len(folder.entries)} episodes) until Ctrl-C", flush=True)
    # uvicorn stops gracefully on a signal, then raises it again: here, as KeyboardInterrupt.
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    return 0
