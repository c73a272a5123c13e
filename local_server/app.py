"""The bundled OpenAI-compatible server: aiohttp, loopback only, cheap on the hot path.

Order of checks for every model endpoint, as a real provider does it: auth (401) → body (400) →
quota (429 ``insufficient_quota``) → rate limit (429 with ``retry-after-ms``) → injected fault
(5xx, a hang, or a malformed body) → latency → answer. Every response carries ``x-request-id``;
every 200 and 429 of a limited endpoint carries the ``x-ratelimit-*`` headers.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from local_server.buckets import EndpointLimits
from local_server.config import ServerConfig
from local_server.images import DEFAULT_SIZE, SIZES, scene_card
from local_server.speech import VOICES, speaker
from local_server.textgen import answer, count_tokens, prompt_text
from local_server.videos import SECONDS as VIDEO_SECONDS
from local_server.videos import SIZES as VIDEO_SIZES
from local_server.videos import Job, VideoJobs

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# An endpoint's own work, in two steps: checking the request and counting its tokens, at once;
# then making the answer (JSON-ready, or a ready response for bytes), only once it is admitted.
# Admission happens on arrival, as a provider's does: slow work before it would reorder requests.
Make = Callable[[], Awaitable[Any]]
Work = Callable[[Any, "EndpointStats", str], Awaitable[tuple[int, Make]]]
MAX_BODY_BYTES = 8 * 1024 * 1024


class EndpointStats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.accepted = 0
        self.rate_limited = 0
        self.quota_rejected = 0
        self.unauthorized = 0
        self.bad_request = 0
        self.faults = {"server_error": 0, "hang": 0, "malformed": 0}
        self.tokens = 0
        self.inflight = 0
        self.max_inflight = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "rate_limited": self.rate_limited,
            "quota_rejected": self.quota_rejected,
            "unauthorized": self.unauthorized,
            "bad_request": self.bad_request,
            "faults": dict(self.faults),
            "tokens": self.tokens,
            "inflight": self.inflight,
            "max_inflight": self.max_inflight,
        }


class ClientError(Exception):
    """A request we refuse; carries the OpenAI-shaped error."""

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 kind: str = "invalid_request_error", param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.kind, self.param = (
            status, message, code, kind, param)
        self.headers = headers or {}


class LocalServer:
    """State of one server: config, randomness, buckets and counters per endpoint."""

    def __init__(self, config: ServerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.random = random.Random(config.seed)
        self.limits = {
            name: EndpointLimits(e.rpm, e.tpm, config.burst_s, clock)
            for name, e in config.endpoints.items()
        }
        self.stats = {name: EndpointStats() for name in config.endpoints}
        self._ids = itertools.count(1)

    def request_id(self) -> str:
        return f"req_{self.config.seed:x}{next(self._ids):09d}"

    def latency(self, endpoint: str) -> float:
        e = self.config.endpoint(endpoint)
        sample = e.latency_s + self.random.uniform(-e.jitter_s, e.jitter_s)
        return max(0.0, sample) * self.config.latency_scale

    def check_auth(self, request: web.Request, stats: EndpointStats) -> None:
        expected = self.config.require_key
        if expected is None:
            return
        if request.headers.get("Authorization", "") != f"Bearer {expected}":
            stats.unauthorized += 1
            raise ClientError(401, "Incorrect API key provided.", code="invalid_api_key")

    def gate(self, endpoint: str, tokens: int, stats: EndpointStats) -> dict[str, str]:
        """Quota, then rate limits; returns the rate-limit headers for the answer."""
        if self.config.quota_exhausted:
            stats.quota_rejected += 1
            raise ClientError(
                429, "You exceeded your current quota, please check your plan and billing "
                "details.", code="insufficient_quota", kind="insufficient_quota")
        limits = self.limits[endpoint]
        decision = limits.admit(tokens)
        headers = limits.headers()
        if not decision.admitted:
            stats.rate_limited += 1
            wait = decision.retry_after_s
            headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
            headers["retry-after"] = str(max(1, math.ceil(wait)))
            raise ClientError(
                429, f"Rate limit reached for {decision.kind} on the local server. Please try "
                f"again in {wait * 1000:.0f}ms.", code="rate_limit_exceeded",
                kind=decision.kind, headers=headers)
        stats.tokens += tokens
        return headers

    async def maybe_fault(self, stats: EndpointStats) -> web.Response | None:
        draw = self.random.random()
        c = self.config
        if draw < c.fault_rate:
            stats.faults["server_error"] += 1
            status = self.random.choice((500, 502, 503))
            raise ClientError(status, "The server had an error while processing your request.",
                              kind="server_error")
        draw -= c.fault_rate
        if draw < c.hang_rate:
            stats.faults["hang"] += 1
            await asyncio.sleep(c.hang_s)
            raise ClientError(504, "Gateway timeout.", kind="server_error")
        draw -= c.hang_rate
        if draw < c.malformed_rate:
            stats.faults["malformed"] += 1
            return web.Response(status=200, text='{"id": "chatcmpl-broken", "choices": [',
                                content_type="application/json")
        return None


def _error_response(err: ClientError, request_id: str) -> web.Response:
    body = {"error": {"message": err.message, "type": err.kind, "param": err.param,
                      "code": err.code}}
    return web.json_response(body, status=err.status,
                             headers={**err.headers, "x-request-id": request_id})


def _chat_body(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ClientError(400, "The request body must be a JSON object.")
    if not isinstance(raw.get("model"), str) or not raw["model"]:
        raise ClientError(400, "You must provide a model parameter.", param="model")
    messages = raw.get("messages")
    if not isinstance(messages, list) or not messages or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages
    ):
        raise ClientError(400, "'messages' must be a non-empty array of {role, content} objects.",
                          param="messages")
    if raw.get("stream"):
        raise ClientError(400, "Streaming is not supported by the local server.", param="stream")
    for name in ("max_tokens", "max_completion_tokens"):
        value = raw.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 1):
            raise ClientError(400, f"'{name}' must be a positive integer.", param=name)
    fmt = raw.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") not in
                            ("text", "json_object", "json_schema")):
        raise ClientError(400, "Invalid 'response_format'.", param="response_format")
    return raw


def _speech_body(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ClientError(400, "The request body must be a JSON object.")
    if not isinstance(raw.get("model"), str) or not raw["model"]:
        raise ClientError(400, "You must provide a model parameter.", param="model")
    text = raw.get("input")
    if not isinstance(text, str) or not text.strip() or len(text) > 4096:
        raise ClientError(400, "'input' must be text of 1 to 4096 characters.", param="input")
    if raw.get("voice") is not None and raw["voice"] not in VOICES:
        raise ClientError(400, f"Unknown voice {raw['voice']!r}; use one of "
                          f"{', '.join(sorted(VOICES))}.", param="voice")
    if raw.get("response_format", "wav") not in ("wav", "pcm"):
        raise ClientError(400, "The local server speaks 'wav' or 'pcm' only.",
                          param="response_format")
    speed = raw.get("speed", 1.0)
    if not isinstance(speed, (int, float)) or isinstance(speed, bool) or not 0.25 <= speed <= 4:
        raise ClientError(400, "'speed' must be from 0.25 to 4.", param="speed")
    return raw


def _image_body(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ClientError(400, "The request body must be a JSON object.")
    prompt = raw.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > 32_000:
        raise ClientError(400, "'prompt' must be text of 1 to 32,000 characters.",
                          param="prompt")
    if raw.get("n", 1) != 1:
        raise ClientError(400, "The local server makes one image per request.", param="n")
    size = raw.get("size", DEFAULT_SIZE)
    if size == "auto":
        raw = {**raw, "size": DEFAULT_SIZE}
    elif size not in SIZES:
        raise ClientError(400, f"Unsupported size {size!r}; use one of {', '.join(SIZES)}.",
                          param="size")
    if raw.get("response_format", "b64_json") != "b64_json":
        raise ClientError(400, "The local server returns images as b64_json only.",
                          param="response_format")
    return raw


def _video_fields(raw: Any) -> dict[str, Any]:
    """The form fields of a video job; ``image`` holds the reference upload's bytes, if any."""
    prompt = raw.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > 32_000:
        raise ClientError(400, "'prompt' must be text of 1 to 32,000 characters.",
                          param="prompt")
    seconds = str(raw.get("seconds", "4"))
    if seconds not in VIDEO_SECONDS:
        raise ClientError(400, f"'seconds' must be one of {', '.join(VIDEO_SECONDS)}.",
                          param="seconds")
    size = str(raw.get("size", "1280x720"))
    if size not in VIDEO_SIZES:
        raise ClientError(400, f"'size' must be one of {', '.join(VIDEO_SIZES)}.",
                          param="size")
    reference = raw.get("input_reference")
    image = reference.file.read() if hasattr(reference, "file") else None
    return {"prompt": prompt, "seconds": seconds, "size": size, "image": image,
            "model": str(raw.get("model", "sora-2"))}


def build_app(config: ServerConfig, clock: Callable[[], float] = time.monotonic
              ) -> web.Application:
    server = LocalServer(config, clock)
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app["server"] = server

    def model_endpoint(endpoint: str, work: Work, form: bool = False) -> Handler:
        """Wrap an endpoint's work in the checks every model endpoint shares. ``form``: the
        body is multipart form data (uploads), not JSON."""

        async def handle(request: web.Request) -> web.StreamResponse:
            stats = server.stats[endpoint]
            request_id = server.request_id()
            stats.inflight += 1
            stats.max_inflight = max(stats.max_inflight, stats.inflight)
            try:
                server.check_auth(request, stats)
                try:
                    raw = await (request.post() if form else request.json())
                except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
                    stats.bad_request += 1
                    raise ClientError(400, "The request body is not valid "
                                      f"{'form data' if form else 'JSON'}.") from None
                try:
                    tokens, make = await work(raw, stats, request_id)
                except ClientError as err:
                    if err.status == 400:
                        stats.bad_request += 1
                    raise
                headers = server.gate(endpoint, tokens, stats)
                broken = await server.maybe_fault(stats)
                if broken is not None:
                    return broken
                # The answer is made during the latency, not after it.
                body, _ = await asyncio.gather(make(), asyncio.sleep(server.latency(endpoint)))
                stats.accepted += 1
                headers["x-request-id"] = request_id
                if isinstance(body, web.Response):
                    body.headers.update(headers)
                    return body
                return web.json_response(body, headers=headers)
            except ClientError as err:
                return _error_response(err, request_id)
            finally:
                stats.inflight -= 1

        return handle

    async def chat(raw: Any, stats: EndpointStats, request_id: str) -> tuple[int, Make]:
        body = _chat_body(raw)
        text = answer(body, config.seed)
        finish = "stop"
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        if cap is not None and count_tokens(text) > cap:
            text, finish = text[: cap * 4], "length"
        prompt_tokens = count_tokens(prompt_text(body["messages"]))
        completion_tokens = count_tokens(text)
        # The answer is cheap to write and its length is the token charge: write it now.
        completion = {
            "id": f"chatcmpl-{request_id[4:]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "finish_reason": finish,
                "logprobs": None,
            }],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

        async def made() -> dict[str, Any]:
            return completion

        return prompt_tokens + completion_tokens, made

    async def speech(raw: Any, stats: EndpointStats, request_id: str) -> tuple[int, Make]:
        body = _speech_body(raw)
        voice, speed, text = body.get("voice", "alloy"), body.get("speed", 1.0), body["input"]
        pcm = body.get("response_format", "wav") == "pcm"

        async def make() -> web.Response:
            voice_of = await asyncio.to_thread(speaker)  # loaded on first use
            audio = await asyncio.to_thread(voice_of.pcm if pcm else voice_of.wav, text, voice,
                                            speed)
            return web.Response(body=audio, content_type="audio/pcm" if pcm else "audio/wav")

        return 0, make

    async def image(raw: Any, stats: EndpointStats, request_id: str) -> tuple[int, Make]:
        body = _image_body(raw)

        async def make() -> dict[str, Any]:
            png = await asyncio.to_thread(scene_card, body["prompt"],
                                          body.get("size", DEFAULT_SIZE))
            return {
                "created": int(time.time()),
                "data": [{"b64_json": base64.b64encode(png).decode("ascii"),
                          "revised_prompt": body["prompt"]}],
            }

        return 0, make

    jobs = VideoJobs(random.Random(config.seed + 1), config.video_fail_rate)

    async def create_video(raw: Any, stats: EndpointStats, request_id: str
                           ) -> tuple[int, Make]:
        fields = _video_fields(raw)
        if jobs.running >= config.video_max_jobs:
            raise ClientError(429, f"{config.video_max_jobs} video jobs are already in "
                              "progress; try again when one finishes.", code="too_many_jobs",
                              kind="requests", headers={"retry-after": "1",
                                                        "retry-after-ms": "1000"})

        async def make() -> dict[str, Any]:  # the job exists only once the request is admitted
            duration = max(0.0, config.video_job_s + server.random.uniform(
                -config.video_job_jitter_s, config.video_job_jitter_s)) * config.latency_scale
            job = jobs.create(fields["model"], fields["prompt"], fields["seconds"],
                              fields["size"], fields["image"], duration)
            return job.view()

        return 0, make

    def _job(request: web.Request) -> Job:
        server.check_auth(request, server.stats["video"])
        job = jobs.jobs.get(request.match_info["video_id"])
        if job is None:
            raise ClientError(404, "No video job with that id.", code="not_found")
        return job

    async def retrieve_video(request: web.Request) -> web.Response:
        try:
            return web.json_response(_job(request).view(),
                                     headers={"x-request-id": server.request_id()})
        except ClientError as err:
            return _error_response(err, server.request_id())

    async def video_content(request: web.Request) -> web.StreamResponse:
        try:
            job = _job(request)
            if job.status != "completed" or job.path is None:
                raise ClientError(409, f"The video is {job.status}, not completed.",
                                  code="video_not_ready")
            return web.FileResponse(job.path, headers={"Content-Type": "video/mp4",
                                                       "x-request-id": server.request_id()})
        except ClientError as err:
            return _error_response(err, server.request_id())

    async def close_jobs(app: web.Application) -> None:
        await jobs.close()

    app.on_cleanup.append(close_jobs)

    async def models(request: web.Request) -> web.Response:
        data = [{"id": f"local-{name}", "object": "model", "created": 0, "owned_by": "showrunner"}
                for name in config.endpoints]
        return web.json_response({"object": "list", "data": data})

    async def stats(request: web.Request) -> web.Response:
        if request.method == "DELETE":
            for s in server.stats.values():
                inflight = s.inflight
                s.reset()
                s.inflight = inflight
        return web.json_response({name: s.snapshot() for name, s in server.stats.items()})

    app.router.add_post("/v1/chat/completions", model_endpoint("chat", chat))
    app.router.add_post("/v1/audio/speech", model_endpoint("speech", speech))
    app.router.add_post("/v1/images/generations", model_endpoint("image", image))
    app.router.add_post("/v1/videos", model_endpoint("video", create_video, form=True))
    app.router.add_get("/v1/videos/{video_id}", retrieve_video)
    app.router.add_get("/v1/videos/{video_id}/content", video_content)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/stats", stats)
    app.router.add_delete("/stats", stats)
    return app
