"""The media endpoints: speech (eSpeak NG), images (Pillow) and video jobs (ffmpeg).

Each checks its body as OpenAI does and makes its bytes in a low-priority worker thread once
admitted (``local_server.background``), so the event loop keeps serving chat while a picture is
drawn. Two options make them answer as some other providers do: ``speech_format`` (speech in one
format whatever was asked) and ``image_answer`` (pictures as links when no format is asked).
"""

from __future__ import annotations

import asyncio
import base64
import math
import random
import time
from typing import Any

from aiohttp import web

from local_server.audio import CONTENT_TYPES
from local_server.background import in_background
from local_server.billing import Refund
from local_server.config import IMAGE_ANSWERS, SPEECH_FORMATS
from local_server.endpoint import MALFORMED_BODY, Admission, Call
from local_server.errors import ApiError, bad_request
from local_server.files import ImageFiles
from local_server.images import DEFAULT_SIZE, SIZES, scene_card
from local_server.speech import VOICES, speaker
from local_server.state import ServerState
from local_server.videos import SECONDS as VIDEO_SECONDS
from local_server.videos import SIZES as VIDEO_SIZES
from local_server.videos import Job, VideoJobs


def _model(raw: dict[str, Any]) -> None:
    if not isinstance(raw.get("model"), str) or not raw["model"]:
        raise bad_request("you must provide a model parameter", param="model")


def _prompt(raw: Any) -> str:
    prompt = raw.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > 32_000:
        raise bad_request("'prompt' must be text of 1 to 32,000 characters.", param="prompt")
    return prompt


def speech_admission(raw: Any, call: Call, speech_format: str | None = None) -> Admission:
    """``POST /v1/audio/speech``: the input, spoken, encoded as asked (WAV when nothing is asked,
    as this server always did); or as ``speech_format`` whatever was asked, when set."""
    if not isinstance(raw, dict):
        raise bad_request("The request body must be a JSON object.")
    _model(raw)
    text = raw.get("input")
    if not isinstance(text, str) or not text.strip() or len(text) > 4096:
        raise bad_request("'input' must be text of 1 to 4096 characters.", param="input")
    voice = raw.get("voice", "alloy")
    if voice not in VOICES:
        raise bad_request(f"Unknown voice {voice!r}; use one of {', '.join(sorted(VOICES))}.",
                          param="voice")
    fmt = raw.get("response_format", "wav")
    if fmt not in SPEECH_FORMATS:
        raise bad_request(f"Invalid value: {fmt!r}. Supported values are: "
                          f"{', '.join(map(repr, SPEECH_FORMATS))}.", param="response_format")
    fmt = speech_format or fmt
    speed = raw.get("speed", 1.0)
    if not isinstance(speed, int | float) or isinstance(speed, bool) or not 0.25 <= speed <= 4:
        raise bad_request("'speed' must be from 0.25 to 4.", param="speed")

    async def make() -> web.Response:
        voice_of = await in_background(speaker)  # loaded on first use
        audio = await in_background(voice_of.speak, text, voice, speed, fmt)
        return web.Response(body=audio, content_type=CONTENT_TYPES[fmt])

    return Admission(make=make)


class Images:
    """``POST /v1/images/generations``: one PNG scene card, as ``b64_json`` or as a link to it
    (``response_format="url"``, or ``image_answer`` when the request asks no format)."""

    def __init__(self, files: ImageFiles, image_answer: str = "b64_json") -> None:
        self.files = files
        self.image_answer = image_answer

    def admission(self, raw: Any, call: Call) -> Admission:
        if not isinstance(raw, dict):
            raise bad_request("The request body must be a JSON object.")
        prompt = _prompt(raw)
        if raw.get("n", 1) != 1:
            raise bad_request("The local server makes one image per request.", param="n")
        size = raw.get("size", DEFAULT_SIZE)
        size = DEFAULT_SIZE if size == "auto" else size
        if size not in SIZES:
            raise bad_request(f"Unsupported size {size!r}; use one of {', '.join(SIZES)}.",
                              param="size")
        answer = raw.get("response_format") or self.image_answer
        if answer not in IMAGE_ANSWERS:
            raise bad_request(f"Invalid value: {answer!r}. Supported values are: 'b64_json' "
                              "and 'url'.", param="response_format")

        async def make() -> dict[str, Any]:
            png = await in_background(scene_card, prompt, size)
            if answer == "url":
                image = {"url": self.files.url(call.origin, await self.files.add(png))}
            else:
                image = {"b64_json": base64.b64encode(png).decode("ascii")}
            return {"created": int(time.time()), "data": [{**image, "revised_prompt": prompt}]}

        return Admission(make=make)


JOB_CAP_RETRY_S = 1.0  # the wait a 429 for too many jobs asks for, before latency_scale


class Videos:
    """``POST /v1/videos`` (a job), ``GET /v1/videos/{id}`` and ``GET .../content``."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        config = state.config
        self.jobs = VideoJobs(random.Random(config.seed + 1), config.video_fail_rate,
                              config.video_render_size, config.video_render_fps)

    def admission(self, raw: Any, call: Call) -> Admission:
        config = self.state.config
        prompt = _prompt(raw)
        seconds = str(raw.get("seconds", "4"))
        if seconds not in VIDEO_SECONDS:
            raise bad_request(f"'seconds' must be one of {', '.join(VIDEO_SECONDS)}.",
                              param="seconds")
        size = str(raw.get("size", "1280x720"))
        if size not in VIDEO_SIZES:
            raise bad_request(f"'size' must be one of {', '.join(VIDEO_SIZES)}.", param="size")
        reference = raw.get("input_reference")
        image = reference.file.read() if hasattr(reference, "file") else None
        model = str(raw.get("model", "sora-2"))
        self._check_job_cap()  # on arrival, as a provider refuses at once

        made: list[Job] = []

        async def make() -> dict[str, Any]:  # the job exists only once the request is admitted
            # Again when the job is made: requests admitted together all passed the first check.
            self._check_job_cap()
            jitter = self.state.random.uniform(-config.video_job_jitter_s,
                                               config.video_job_jitter_s)
            duration = max(0.0, config.video_job_s + jitter) * config.latency_scale
            stats = self.state.stats["video"]
            stats.jobs_s.append(duration)
            created = time.monotonic()
            job = self.jobs.create(model, prompt, seconds, size, image, duration)
            assert job.task is not None
            job.task.add_done_callback(
                lambda _: stats.jobs_ran_s.append(time.monotonic() - created))
            made.append(job)
            return job.view()

        def billed(refund: Refund) -> None:
            """A job that fails is refunded: a provider charges for clips, not for failures."""
            [job] = made
            if job.task is not None:
                job.task.add_done_callback(
                    lambda _: refund() if job.status == "failed" else None)

        return Admission(make=make, billed=billed)

    def _check_job_cap(self) -> None:
        config = self.state.config
        if self.jobs.running >= config.video_max_jobs:
            # "Try again in about a second", on the server's clock like its latencies are.
            wait_ms = max(1, round(JOB_CAP_RETRY_S * 1000 * config.latency_scale))
            headers = {**self.state.limits["video"].headers(),
                       "retry-after": str(max(1, math.ceil(wait_ms / 1000))),
                       "retry-after-ms": str(wait_ms)}
            raise ApiError(429, f"{config.video_max_jobs} video jobs are already in progress; "
                           "try again when one finishes.", type="requests",
                           code="too_many_jobs", headers=headers, counter="rate_limited")

    def _job(self, request: web.Request) -> Job:
        try:
            self.state.check_auth(request.headers)
        except ApiError as err:
            self.state.stats["video"].count(err.counter)
            raise
        job = self.jobs.jobs.get(request.match_info["video_id"])
        if job is None:
            raise ApiError(404, "No video job with that id.", code="not_found")
        return job

    async def retrieve(self, request: web.Request) -> web.Response:
        request_id = self.state.request_id()
        try:
            view = self._job(request).view()
            return await self._fault(request_id) or web.json_response(
                view, headers={"x-request-id": request_id})
        except ApiError as err:
            return err.response(request_id)

    async def content(self, request: web.Request) -> web.StreamResponse:
        request_id = self.state.request_id()
        try:
            job = self._job(request)
            if job.status != "completed" or job.path is None:
                raise ApiError(409, f"The video is {job.status}, not completed.",
                               code="video_not_ready")
            return await self._fault(request_id) or web.FileResponse(
                job.path, headers={"Content-Type": "video/mp4", "x-request-id": request_id})
        except ApiError as err:
            return err.response(request_id)

    async def _fault(self, request_id: str) -> web.Response | None:
        """The configured faults hit a job's reads too: a 5xx, a hang, or a broken body. (No
        draw when none is configured, so fault-free runs replay as before.)"""
        config, stats = self.state.config, self.state.stats["video"]
        if not (config.fault_rate or config.hang_rate or config.malformed_rate):
            return None
        fault = self.state.draw_fault()
        if fault == "server_error":
            error = self.state.server_error()
            stats.count(error.counter)
            raise error
        if fault == "hang":
            stats.count("hang")
            await asyncio.sleep(config.hang_s)
        if fault == "malformed":
            stats.count("malformed")
            return web.Response(body=MALFORMED_BODY, content_type="application/json",
                                headers={"x-request-id": request_id})
        return None

    async def close(self, app: web.Application) -> None:
        """Stop running jobs (and their ffmpeg children) when the server stops."""
        await self.jobs.close()
