"""The provider gateway: the one place a model provider is called. A plain class, no Ray.

``actors.remote`` makes it a Ray actor, one per provider, so its limiters hold for every episode
on every node. Each call:

1. picks the least-loaded healthy deployment (a key or base URL of the provider),
2. waits for that deployment's limiter (round-robin across episodes),
3. sends the request with the ``openai`` SDK (``max_retries=0``: this loop is the only retry),
4. tightens the limiter from the ``x-ratelimit-*`` headers and settles the token estimate,
5. on failure: a 429 pauses every caller of the deployment; timeouts, connection errors, 408, 409
   and 5xx back off with jitter and try again, elsewhere if another deployment is healthy;
   anything else fails at once with a message that says what to do.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import httpx2
import openai

from actors.clip_polling import JobDurations, remaining_s
from actors.errors import (
    GenerationFailed,
    MalformedResponse,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    provider_errors,
)
from actors.limiter import Clock, Limits, LoopClock, Permit, RateLimiter
from actors.retry import RateLimitHeaders, RetryPolicy, backoff_s, pause_for, should_retry
from actors.stats import ProviderStats
from pipelines.screenplay import write_atomic
from pipelines.settings import DeploymentSettings, Prices, ProviderSettings

T = TypeVar("T")

# Calls per deployment in a row that fail before it is cooled down, and its longest cool-down.
COOLDOWN_AFTER_FAILURES = 3
MAX_COOLDOWN_S = 30.0
# Output tokens assumed for a chat call that sets no max_tokens.
DEFAULT_OUTPUT_TOKENS = 512
# Share of each bucket's burst held back: requests granted in order may reach the server out of
# order (connections differ in speed), and at the limit the server's bucket is nearly empty.
ARRIVAL_RESERVE = 0.1


@dataclass(frozen=True)
class Usage:
    """What one successful call consumed, for the limiter and the bill."""

    tokens_in: int = 0
    tokens_out: int = 0
    units: float = 0.0  # images, speech characters or video seconds


@dataclass(frozen=True)
class Answer(Generic[T]):
    """One successful attempt: the value, what it consumed, and the headers it came with."""

    value: T
    usage: Usage
    headers: Mapping[str, str]


@dataclass(frozen=True)
class Attempts:
    """How a call went: where it landed, how many tries, how long it waited and ran. Every
    result carries these, so callers account for any call the same way."""

    deployment: str
    attempts: int
    rate_limited: int  # 429s met on the way, so callers can back off their own concurrency
    latency_s: float  # of the successful attempt, from send to parsed answer
    wait_s: float  # spent waiting for the limiter, all attempts together
    cost_usd: float


@dataclass(frozen=True)
class MediaResult(Attempts):
    """A generated file, written to ``path``: the bytes stay on disk, not in actor messages."""

    path: str
    size_bytes: int
    units: float  # speech characters, images, or video seconds
    request_id: str | None

    @classmethod
    def of(cls, path: Path, data: bytes, answer: Answer[Any], how: Attempts) -> MediaResult:
        return cls(**vars(how), path=str(path), size_bytes=len(data), units=answer.usage.units,
                   request_id=answer.headers.get("x-request-id"))


@dataclass(frozen=True)
class ChatResult(Attempts):
    """A chat completion, reduced to what the pipeline uses (cheap to send between actors)."""

    text: str
    finish_reason: str | None
    tokens_in: int
    tokens_out: int
    request_id: str | None


def deployment_label(base_url: str) -> str:
    """A name for a deployment that is safe to log: scheme, host and port, never a key."""
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


class TokenEstimator:
    """Estimates a chat call's tokens before it is sent, and learns from what usage reports.

    It starts conservative — about three characters a prompt token, plus the whole ``max_tokens``
    — so the first calls cannot burst past a token limit. Then it moves toward the provider's
    own counts (a running average, with a 25% margin, never above the conservative figure): the
    cap on output is usually far above what a model writes, and charging it in full would leave
    most of a token limit unused. A provider that charges ``max_tokens`` up front (as OpenAI
    does) shows it in ``x-ratelimit-remaining-tokens``, which tightens the limiter regardless.
    """

    MARGIN = 1.25
    WEIGHT = 0.1  # of each new observation in the running average

    def __init__(self) -> None:
        self.prompt_ratio = 1.0  # real prompt tokens / (characters / 3)
        self.output_ratio = 1.0  # real completion tokens / max_tokens

    @staticmethod
    def _rough_prompt(messages: list[dict[str, Any]]) -> float:
        chars = sum(len(str(m.get("content", ""))) for m in messages)
        return chars / 3 + 4 * len(messages)

    def estimate(self, messages: list[dict[str, Any]], max_output: int) -> int:
        prompt = self._rough_prompt(messages) * min(1.0, self.prompt_ratio * self.MARGIN)
        output = max_output * min(1.0, self.output_ratio * self.MARGIN)
        return math.ceil(prompt + output)

    def learn(self, messages: list[dict[str, Any]], max_output: int, usage: Usage) -> None:
        rough = self._rough_prompt(messages)
        if rough > 0 and usage.tokens_in > 0:
            self.prompt_ratio += self.WEIGHT * (usage.tokens_in / rough - self.prompt_ratio)
        if max_output > 0 and usage.tokens_out > 0:
            self.output_ratio += self.WEIGHT * (usage.tokens_out / max_output - self.output_ratio)


def cost_usd(prices: Prices, usage: Usage, kind: str) -> float:
    unit_price = {
        "tts": prices.per_1m_speech_chars / 1e6,
        "image": prices.per_image,
        "video": prices.per_video_second,
    }.get(kind, 0.0)
    return (
        usage.tokens_in * prices.input_per_1m_tokens / 1e6
        + usage.tokens_out * prices.output_per_1m_tokens / 1e6
        + usage.units * unit_price
    )


class Deployment:
    """One endpoint and key of a provider, with its own limiter and health."""

    def __init__(
        self, settings: DeploymentSettings, provider: ProviderSettings, clock: Clock,
        client_factory: Callable[..., openai.AsyncOpenAI],
    ) -> None:
        assert settings.base_url is not None, "resolve the local server's URL before this"
        base_url = str(settings.base_url)
        self.label = deployment_label(base_url)
        self.client = client_factory(
            base_url=base_url,
            # The bundled server needs no key; the SDK insists on one, so send a placeholder.
            api_key=settings.api_key.get_secret_value() if settings.api_key else "local",
            max_retries=0,
            timeout=provider.timeout_s,
            # The SDK's aiohttp transport: httpx's pool scans every connection per request,
            # which at hundreds of calls a second costs more CPU than the calls themselves.
            http_client=openai.DefaultAioHttpClient(timeout=provider.timeout_s),
        )
        self.limiter = RateLimiter(
            Limits(
                rpm=settings.rpm, tpm=settings.tpm, max_inflight=settings.max_inflight,
                burst_s=provider.burst_s, reserve=ARRIVAL_RESERVE,
            ),
            clock,
        )
        self.max_inflight = settings.max_inflight or 1
        self.failures_in_a_row = 0
        self.cooldown_until = 0.0

    def load(self) -> float:
        return (self.limiter.inflight + self.limiter.waiting) / self.max_inflight

    def record(self, ok: bool, now: float) -> None:
        if ok:
            self.failures_in_a_row = 0
            return
        self.failures_in_a_row += 1
        if self.failures_in_a_row >= COOLDOWN_AFTER_FAILURES:
            extra = self.failures_in_a_row - COOLDOWN_AFTER_FAILURES
            self.cooldown_until = now + min(2.0**extra, MAX_COOLDOWN_S)


class ProviderGateway:
    """Calls one provider for every episode: limits, retries, routing, counters."""

    def __init__(
        self,
        kind: str,
        settings: ProviderSettings,
        *,
        local_base_url: str | None = None,
        clock: Clock | None = None,
        client_factory: Callable[..., openai.AsyncOpenAI] = openai.AsyncOpenAI,
        rng: random.Random | None = None,
    ) -> None:
        self.kind = kind
        self.settings = settings
        self.policy = RetryPolicy(max_attempts=settings.max_attempts)
        self.stats = ProviderStats(kind)
        self.estimator = TokenEstimator()
        # A clip job holds a slot from its create request until a poll sees it end: a provider
        # caps jobs in progress, not requests.
        self._job_slots = asyncio.Semaphore(getattr(settings, "max_jobs", 1_000_000))
        self.job_durations = JobDurations()
        self._clock = clock or LoopClock()
        self._rng = rng or random.Random()
        deployments = settings.resolved_deployments()
        if any(d.base_url is None for d in deployments) and local_base_url is None:
            raise ValueError(f"{kind}: no base_url set and no local server to fall back on")
        self.deployments = [
            Deployment(
                d if d.base_url is not None else d.model_copy(update={"base_url": local_base_url}),
                settings, self._clock, client_factory,
            )
            for d in deployments
        ]

    # -- operations -----------------------------------------------------------------------------

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        episode_id: str = "",
        response_format: dict[str, Any] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
    ) -> ChatResult:
        """One chat completion. ``episode_id`` is the caller's turn key in the limiter."""
        params: dict[str, Any] = {"model": self.settings.model, "messages": messages}
        for name, value in (
            ("response_format", response_format), ("max_tokens", max_tokens),
            ("temperature", temperature), ("seed", seed),
        ):
            if value is not None:
                params[name] = value
        max_output = max_tokens or DEFAULT_OUTPUT_TOKENS
        estimate = self.estimator.estimate(messages, max_output)

        async def attempt(client: openai.AsyncOpenAI) -> Answer[dict[str, Any]]:
            # The SDK's generic ``post`` (its documented route to any endpoint) rather than
            # ``chat.completions.create``: the same auth, timeouts and typed errors, without
            # re-walking the messages through the SDK's TypedDict transform and building a
            # pydantic model of the answer — a third of the CPU of a call, on the hot path.
            response = await client.post("/chat/completions", body=params,
                                         cast_to=httpx2.Response)
            completion = _parse_chat(response)
            return Answer(completion, _chat_usage(completion), response.headers)

        answer, how = await self._call(episode_id, estimate, attempt)
        self.estimator.learn(messages, max_output, answer.usage)
        choice = answer.value["choices"][0]
        return ChatResult(
            **vars(how),
            text=choice["message"].get("content") or "",
            finish_reason=choice.get("finish_reason"),
            tokens_in=answer.usage.tokens_in,
            tokens_out=answer.usage.tokens_out,
            request_id=answer.headers.get("x-request-id"),
        )

    async def speech(
        self, text: str, *, voice: str, out_path: str, episode_id: str = "",
        response_format: str = "wav",
    ) -> MediaResult:
        """Speak ``text`` into the file ``out_path``."""
        params = {"model": self.settings.model, "input": text, "voice": voice,
                  "response_format": response_format}

        async def attempt(client: openai.AsyncOpenAI) -> Answer[bytes]:
            raw = await client.audio.speech.with_raw_response.create(**params)
            return Answer(raw.content, Usage(units=len(text)), raw.headers)

        answer, how = await self._call(episode_id, 0, attempt)
        path = Path(out_path)
        write_atomic(path, answer.value)
        return MediaResult.of(path, answer.value, answer, how)

    async def image(
        self, prompt: str, *, out_path: str, size: str = "1536x1024", episode_id: str = ""
    ) -> MediaResult:
        """Draw ``prompt`` into the PNG file ``out_path``."""
        params = {"model": self.settings.model, "prompt": prompt, "size": size, "n": 1}

        async def attempt(client: openai.AsyncOpenAI) -> Answer[bytes]:
            raw = await client.images.with_raw_response.generate(**params)
            try:
                png = base64.b64decode(json.loads(raw.content)["data"][0]["b64_json"])
            except (ValueError, KeyError, IndexError, TypeError) as err:
                raise MalformedResponse(
                    "the answer holds no b64_json image (a provider that only returns URLs is "
                    "not supported)", status=raw.status_code,
                    request_id=raw.headers.get("x-request-id"),
                ) from err
            return Answer(png, Usage(units=1), raw.headers)

        answer, how = await self._call(episode_id, 0, attempt)
        path = Path(out_path)
        write_atomic(path, answer.value)
        return MediaResult.of(path, answer.value, answer, how)

    async def clip(
        self, prompt: str, *, out_path: str, image_path: str | None = None, seconds: str = "4",
        size: str = "1280x720", episode_id: str = "",
    ) -> MediaResult:
        """A clip job: create, poll (each poll through the limiter, the interval growing), then
        download into ``out_path``. A job that ends ``failed`` is started again while attempts
        remain; one that outlives ``clip_timeout_s`` has failed."""
        video = self.settings
        for job_attempt in range(1, self.policy.max_attempts + 1):
            try:
                return await self._one_clip(prompt, out_path, image_path, seconds, size,
                                            episode_id, video)
            except GenerationFailed as err:
                if job_attempt == self.policy.max_attempts:
                    self.stats.gave_up(err.deployment)
                    raise
                self.stats.retried(err.deployment)
        raise AssertionError("unreachable")

    async def _one_clip(self, prompt: str, out_path: str, image_path: str | None,
                        seconds: str, size: str, episode_id: str, video: Any) -> MediaResult:
        reference = Path(image_path).read_bytes() if image_path else None
        params: dict[str, Any] = {"model": video.model, "prompt": prompt, "seconds": seconds,
                                  "size": size}
        if reference is not None:
            params["input_reference"] = ("reference.png", reference, "image/png")

        async def create(client: openai.AsyncOpenAI) -> Answer[dict[str, Any]]:
            raw = await client.videos.with_raw_response.create(**params)
            return Answer(json.loads(raw.content), Usage(), raw.headers)

        async with self._job_slots:  # held while the provider counts the job: until it ends
            job_id, status, how = await self._run_job(create, episode_id, video)
        if status["status"] == "failed":
            error = status.get("error") or {}
            self.stats.attempt_failed(how.deployment, GenerationFailed.__name__)
            raise GenerationFailed(f"clip job {job_id} failed: {error.get('message', '?')}",
                                   provider=self.kind, deployment=how.deployment)

        async def download(client: openai.AsyncOpenAI) -> Answer[bytes]:
            raw = await client.videos.with_raw_response.download_content(job_id)
            return Answer(raw.content, Usage(units=float(seconds)), raw.headers)

        answer, how = await self._call(episode_id, 0, download)
        path = Path(out_path)
        write_atomic(path, answer.value)
        return MediaResult.of(path, answer.value, answer, how)

    async def _run_job(self, create: Any, episode_id: str, video: Any
                       ) -> tuple[str, dict[str, Any], Any]:
        """Create a clip job and poll it until it ends; returns its id, last status and route."""
        job, how = await self._call(episode_id, 0, create)
        job_id = job.value["id"]
        created = time.monotonic()
        deadline = created + getattr(video, "clip_timeout_s", 1200.0)
        initial = getattr(video, "poll_initial_s", 2.0)
        longest = getattr(video, "poll_max_s", 10.0)
        # Polls spend the request limit: the first waits until a tenth of recent jobs had ended.
        wait, interval = max(initial, self.job_durations.first_poll_s()), initial
        status = job.value
        polled_at: float | None = None  # when the last poll went out, after the create
        length: float | None = None  # the job's whole length, from its last progress figure
        ran_s = 0.0  # how long the job was seen running: when the last poll found it not over
        while status["status"] not in ("completed", "failed"):
            if time.monotonic() > deadline:
                raise ProviderTimeout(f"clip job {job_id} took longer than the clip timeout",
                                      provider=self.kind)
            await asyncio.sleep(min(wait, max(0.0, deadline - time.monotonic())))
            wait, interval = interval, min(interval * 1.5, longest)

            async def poll(client: openai.AsyncOpenAI) -> Answer[dict[str, Any]]:
                nonlocal polled_at  # as it leaves: after any wait for the limiter or a retry
                polled_at = time.monotonic() - created
                raw = await client.videos.with_raw_response.retrieve(job_id)
                return Answer(json.loads(raw.content), Usage(), raw.headers)

            polled, how = await self._call(episode_id, 0, poll)
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
        self.stats.job_ended(how.deployment, ran_s)
        if status["status"] == "completed" and polled_at is not None:
            if length is not None:
                self.job_durations.add(length)
            else:  # over before any poll saw it running: only "no longer than this" is known
                self.job_durations.add_ended_by(polled_at)
        return job_id, status, how

    def snapshot(self) -> dict[str, Any]:
        """Counters, plus each deployment's live state (labels only: no keys)."""
        return {
            "provider": self.kind,
            "model": self.settings.model,
            **self.stats.snapshot(),
            "deployments": [
                {
                    "label": d.label,
                    "inflight": d.limiter.inflight,
                    "waiting": d.limiter.waiting,
                    "paused_for_s": round(d.limiter.paused_for, 3),
                    "cooling_down": d.cooldown_until > self._clock.now(),
                }
                for d in self.deployments
            ],
        }

    async def stats(self) -> dict[str, Any]:
        return self.snapshot()

    async def close(self) -> None:
        """Close every deployment's HTTP connections."""
        for deployment in self.deployments:
            await deployment.client.close()

    # -- the retry loop -------------------------------------------------------------------------

    async def _call(
        self,
        episode_id: str,
        estimate: int,
        attempt_fn: Callable[[openai.AsyncOpenAI], Awaitable[Answer[T]]],
    ) -> tuple[Answer[T], Attempts]:
        self.stats.started()
        wait_s = 0.0
        attempt = rate_limited = 0
        last: Deployment | None = None
        while True:
            attempt += 1
            deployment = self._pick(avoid=last)
            waited_from = time.perf_counter()
            permit = await deployment.limiter.acquire(episode_id, estimate)
            waited = time.perf_counter() - waited_from
            wait_s += waited
            self.stats.waited(deployment.label, waited)
            sent = time.perf_counter()
            used: int | None = 0  # nothing reached the server unless we learn otherwise
            try:
                with provider_errors(self.kind, deployment.label):
                    outcome = await attempt_fn(deployment.client)
            except ProviderError as err:
                # A 429 or a request that never arrived was not counted by the server.
                permit.release(used, counted=err.status is not None and err.status != 429)
                last = deployment
                self.stats.attempt_failed(deployment.label, type(err).__name__,
                                          rate_limited=isinstance(err, RateLimited))
                if isinstance(err, RateLimited):
                    rate_limited += 1
                    response = getattr(err.__cause__, "response", None)
                    if response is not None:
                        self._observe(deployment, permit, response.headers)
                    deployment.limiter.pause(pause_for(err, self.policy))
                else:
                    deployment.record(ok=False, now=self._clock.now())
                if not should_retry(err, attempt, self.policy):
                    self.stats.gave_up(deployment.label)
                    raise
                self.stats.retried(deployment.label)
                if not isinstance(err, RateLimited):  # a 429's wait is the limiter's pause
                    await asyncio.sleep(backoff_s(attempt, self.policy, self._rng.random()))
                continue
            except BaseException:
                permit.release(None)  # cancelled mid-flight: the server may have charged it
                raise
            latency = time.perf_counter() - sent
            used = outcome.usage.tokens_in + outcome.usage.tokens_out
            self._observe(deployment, permit, outcome.headers)
            permit.release(used if used else None)
            deployment.record(ok=True, now=self._clock.now())
            cost = cost_usd(self.settings.prices, outcome.usage, self.kind)
            self.stats.succeeded(
                deployment.label, latency_s=latency, tokens_in=outcome.usage.tokens_in,
                tokens_out=outcome.usage.tokens_out, units=outcome.usage.units, cost_usd=cost,
            )
            return outcome, Attempts(
                deployment.label, attempt, rate_limited, latency, wait_s, cost
            )

    def _pick(self, avoid: Deployment | None) -> Deployment:
        """The least-loaded deployment that is not cooling down (and not the one that just failed,
        when there is a choice)."""
        if len(self.deployments) == 1:
            return self.deployments[0]
        now = self._clock.now()
        healthy = [d for d in self.deployments if d.cooldown_until <= now] or self.deployments
        candidates = [d for d in healthy if d is not avoid] or healthy
        return min(candidates, key=Deployment.load)

    @staticmethod
    def _observe(deployment: Deployment, permit: Permit, headers: Mapping[str, str]) -> None:
        hints = RateLimitHeaders.parse(headers)
        deployment.limiter.observe(
            permit,
            limit_requests=hints.limit_requests, remaining_requests=hints.remaining_requests,
            limit_tokens=hints.limit_tokens, remaining_tokens=hints.remaining_tokens,
        )


def _parse_chat(response: httpx2.Response) -> dict[str, Any]:
    """The completion in a response; a body that is not a chat completion is malformed."""
    try:
        completion = json.loads(response.content)
        message = completion["choices"][0]["message"]
        if not isinstance(message, dict):
            raise TypeError("message is not an object")
    except (ValueError, TypeError, IndexError, KeyError) as err:
        raise MalformedResponse(
            f"the answer is not a chat completion ({type(err).__name__})",
            status=response.status_code,
            request_id=response.headers.get("x-request-id"),
        ) from err
    return completion


def _chat_usage(completion: dict[str, Any]) -> Usage:
    usage = completion.get("usage") or {}
    return Usage(
        tokens_in=int(usage.get("prompt_tokens") or 0),
        tokens_out=int(usage.get("completion_tokens") or 0),
    )
