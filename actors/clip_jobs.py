"""A video provider's clip jobs: create, poll until the job ends, download.

Each of those is an ordinary call through the provider gateway's limiter and retries (the
``send`` it is given). A provider caps the jobs it runs at once, not just its requests, so a job
also holds one of ``max_jobs`` slots from its create request until a poll sees it end: the
gateway never draws ``too_many_jobs`` 429s. When to poll is ``actors.clip_polling``'s business.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import openai

from actors import answer_checks
from actors.call_results import Answer, Attempts, MediaResult, Usage
from actors.clip_polling import JobDurations, remaining_s
from actors.stats import ProviderStats
from pipelines.errors import GenerationFailed, ProviderTimeout
from pipelines.media_stages import CLIP_SECONDS
from pipelines.settings import ProviderKind, VideoSettings
from pipelines.storage import Storage

T = TypeVar("T")
Attempt = Callable[[openai.AsyncOpenAI], Awaitable[Answer[T]]]


class Send(Protocol):
    """The gateway's one retry loop: an attempt, made through the limiter until it succeeds."""

    async def __call__(self, episode_id: str, estimate: int, attempt: Attempt[T]
                       ) -> tuple[Answer[T], Attempts]: ...


class ClipJobs:
    """Makes clips as provider jobs for every episode, within the provider's cap of jobs."""

    def __init__(self, settings: VideoSettings, send: Send, counters: ProviderStats,
                 max_attempts: int, files: Callable[[], Storage]) -> None:
        """``files``: the storage the clips are written to."""
        self.settings = settings
        self._files = files
        self._send = send
        self._counters = counters
        self._max_attempts = max_attempts
        self._slots = asyncio.Semaphore(settings.max_jobs)
        self.durations = JobDurations()

    async def make(
        self, prompt: str, *, out: str, reference: bytes | None = None,
        seconds: str = CLIP_SECONDS,
        size: str = "1280x720", episode_id: str = "",
    ) -> MediaResult:
        """A clip of ``prompt`` (from the PNG ``reference``) in the storage key ``out``. A
        job that ends ``failed`` is started again while attempts remain; one that outlives
        ``clip_timeout_s`` has failed."""
        for job_attempt in range(1, self._max_attempts + 1):
            try:
                return await self._one(prompt, out, reference, seconds, size, episode_id)
            except GenerationFailed as err:
                if job_attempt == self._max_attempts:
                    self._counters.gave_up(err.deployment)
                    raise
                self._counters.retried(err.deployment)
        raise AssertionError("unreachable")

    async def _one(self, prompt: str, out: str, reference: bytes | None, seconds: str,
                   size: str, episode_id: str) -> MediaResult:
        params: dict[str, Any] = {"model": self.settings.model, "prompt": prompt,
                                  "seconds": seconds, "size": size}
        if reference is not None:
            params["input_reference"] = ("reference.png", reference, "image/png")

        async def create(client: openai.AsyncOpenAI) -> Answer[dict[str, Any]]:
            raw = await client.videos.with_raw_response.create(**params)
            return Answer(answer_checks.job(raw.content, raw.headers, raw.status_code), Usage(),
                          raw.headers)

        async with self._slots:  # held while the provider counts the job: until it ends
            job_id, status, how = await self._run(create, episode_id)
        if status["status"] == "failed":
            error = status.get("error") or {}
            self._counters.attempt_failed(how.deployment, GenerationFailed.__name__)
            raise GenerationFailed(f"clip job {job_id} failed: {error.get('message', '?')}",
                                   provider=ProviderKind.VIDEO, deployment=how.deployment)

        async def download(client: openai.AsyncOpenAI) -> Answer[bytes]:
            raw = await client.videos.with_raw_response.download_content(job_id)
            clip = answer_checks.video(raw.content, raw.headers, raw.status_code)
            return Answer(clip, Usage(units=float(seconds)), raw.headers)

        answer, how = await self._send(episode_id, 0, download)
        await asyncio.to_thread(self._files().write, out, answer.value)
        return MediaResult.of(out, answer.value, answer, how)

    async def _run(self, create: Attempt[dict[str, Any]], episode_id: str
                   ) -> tuple[str, dict[str, Any], Attempts]:
        """Create a clip job and poll it until it ends; returns its id, last status and route."""
        job, how = await self._send(episode_id, 0, create)
        job_id = job.value["id"]
        created = time.monotonic()
        deadline = created + self.settings.clip_timeout_s
        initial, longest = self.settings.poll_initial_s, self.settings.poll_max_s
        # Polls spend the request limit: the first waits until a tenth of recent jobs had ended.
        wait, interval = max(initial, self.durations.first_poll_s()), initial
        status = job.value
        polled_at: float | None = None  # when the last poll went out, after the create
        length: float | None = None  # the job's whole length, from its last progress figure
        ran_s = 0.0  # how long the job was seen running: when the last poll found it not over
        while status["status"] not in ("completed", "failed"):
            if time.monotonic() > deadline:
                raise ProviderTimeout(f"clip job {job_id} took longer than the clip timeout",
                                      provider=ProviderKind.VIDEO)
            await asyncio.sleep(min(wait, max(0.0, deadline - time.monotonic())))
            wait, interval = interval, min(interval * 1.5, longest)

            async def poll(client: openai.AsyncOpenAI) -> Answer[dict[str, Any]]:
                nonlocal polled_at  # as it leaves: after any wait for the limiter or a retry
                polled_at = time.monotonic() - created
                raw = await client.videos.with_raw_response.retrieve(job_id)
                return Answer(answer_checks.job(raw.content, raw.headers, raw.status_code),
                              Usage(), raw.headers)

            polled, how = await self._send(episode_id, 0, poll)
            assert polled_at is not None  # set by the attempt that answered
            status = polled.value
            if status["status"] not in ("completed", "failed"):
                ran_s = polled_at
            # The provider read its progress while answering: halfway through the round trip.
            elapsed = (polled_at + time.monotonic() - created) / 2
            remaining = remaining_s(status, elapsed)
            if remaining is not None:  # the job says how far it is: poll when it should end
                length = elapsed + remaining
                wait = min(max(initial / 4, created + length - time.monotonic()), longest)
        self._counters.job_ended(how.deployment, ran_s)
        if status["status"] == "completed" and polled_at is not None:
            if length is not None:
                self.durations.add(length)
            else:  # over before any poll saw it running: only "no longer than this" is known
                self.durations.add_ended_by(polled_at)
        return job_id, status, how
