"""The bundled OpenAI-compatible server: an aiohttp application, its routes and its counters.

Every model endpoint runs the shared request path of ``endpoint.model_endpoint``: auth (401) →
model (404, with ``models`` set) → body (400) → quota (429 ``insufficient_quota``) → flex capacity
(429 ``resource_unavailable``) → rate limit (429 with ``retry-after-ms``) → injected fault (5xx,
a hang, or a malformed body) → latency → answer. Every response carries
``x-request-id``; every 200 and 429 of a rate-limited endpoint carries the ``x-ratelimit-*``
headers. Unknown paths and methods get OpenAI's 404 ``Invalid URL`` error, in its JSON shape.
"""

from __future__ import annotations

import functools
import time

from aiohttp import web

from local_server.chat import chat_admission
from local_server.config import ServerConfig
from local_server.endpoint import model_endpoint
from local_server.errors import ApiError
from local_server.files import ROUTE as IMAGE_FILES_ROUTE
from local_server.files import ImageFiles
from local_server.media import Images, Videos, speech_admission
from local_server.ratelimit import Clock
from local_server.state import ServerState

MAX_BODY_BYTES = 8 * 1024 * 1024
# The model id listed per endpoint kind; any model name is accepted in requests (unless the
# config names the models that exist: those are listed instead).
MODEL_IDS = {"chat": "local-llm", "speech": "local-tts", "image": "local-image",
             "video": "local-video"}
STATE_KEY = web.AppKey("state", ServerState)


def build_app(config: ServerConfig, clock: Clock = time.monotonic) -> web.Application:
    """The application for ``config``; ``clock`` drives the rate-limit buckets (tests pass a
    fake one). Its ``ServerState`` is ``app[STATE_KEY]``."""
    state = ServerState(config, clock)
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[STATE_KEY] = state
    videos = Videos(state)
    app.on_cleanup.append(videos.close)
    image_files = ImageFiles(state)
    app.on_cleanup.append(image_files.close)
    images = Images(image_files, config.image_answer)

    chat = functools.partial(chat_admission, config=config)
    speech = functools.partial(speech_admission, speech_format=config.speech_format)
    routes = app.router
    routes.add_post("/v1/chat/completions", model_endpoint(state, "chat", chat))
    routes.add_post("/v1/audio/speech", model_endpoint(state, "speech", speech))
    routes.add_post("/v1/images/generations", model_endpoint(state, "image", images.admission))
    routes.add_post("/v1/videos", model_endpoint(state, "video", videos.admission, form=True))
    routes.add_get("/v1/videos/{video_id}", videos.retrieve)
    routes.add_get("/v1/videos/{video_id}/content", videos.content)
    routes.add_get(IMAGE_FILES_ROUTE, image_files.serve)
    listed = config.models or [MODEL_IDS.get(name, f"local-{name}") for name in config.endpoints]

    async def models(request: web.Request) -> web.Response:
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "showrunner"}
                for name in listed]
        return web.json_response({"object": "list", "data": data},
                                 headers={"x-request-id": state.request_id()})

    async def stats(request: web.Request) -> web.Response:
        """``GET``: the counters per endpoint; ``DELETE``: zero them, then return them."""
        if request.method == "DELETE":
            state.reset_stats()
        return web.json_response({name: s.snapshot() for name, s in state.stats.items()},
                                 headers={"x-request-id": state.request_id()})

    async def invalid_url(request: web.Request) -> web.Response:
        return ApiError(404, f"Invalid URL ({request.method} {request.path})").response(
            state.request_id())

    routes.add_get("/v1/models", models)
    routes.add_get("/stats", stats)
    routes.add_delete("/stats", stats)
    routes.add_route("*", "/{path:.*}", invalid_url)  # last: anything no route above takes
    return app
