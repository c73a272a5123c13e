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

With a state store, every answered call is written in its ledger, and a call its owner asked
before is answered from the call cache instead of being sent (``actors.call_cache``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx2
import openai

from actors import answer_checks, answer_download, audio_formats
from actors.call_cache import CallCache, CallKey, request_digest
from actors.call_results import Answer, Attempts, ChatResult, MediaResult, Usage, cost_usd
from actors.clip_jobs import ClipJobs
from actors.limiter import Clock, Limits, LoopClock, Permit, RateLimiter
from actors.metrics import NO_METRICS, ProviderMetrics
from actors.retry import (
    FlexLane,
    RateLimitHeaders,
    RetryPolicy,
    backoff_s,
    pause_for,
    should_retry,
)
from actors.sdk_errors import provider_errors
from actors.state_store import StateStore, StateStoreError
from actors.stats import ProviderStats
from actors.token_estimator import TokenEstimator
from pipelines.errors import FlexBusy, MalformedResponse, ProviderError, RateLimited
from pipelines.media_stages import CLIP_SECONDS
from pipelines.settings import (
    DeploymentSettings,
    LLMSettings,
    Prices,
    ProviderKind,
    ProviderSettings,
    Tier,
    VideoSettings,
)
from pipelines.storage import Storage

T = TypeVar("T")
R = TypeVar("R", ChatResult, MediaResult)
log = logging.getLogger("showrunner.gateway")

# Calls per deployment in a row that fail before it is cooled down, and its longest cool-down.
COOLDOWN_AFTER_FAILURES = 3
MAX_COOLDOWN_S = 30.0
# Output tokens assumed for a chat call that sets no max_tokens.
DEFAULT_OUTPUT_TOKENS = 512
# Share of each bucket's burst held back: requests granted in order may reach the server out of
# order (connections differ in speed, a busy node delays some), and at the limit the server's
# bucket is nearly empty. A quarter of a one-second burst absorbs 250 ms of such skew; a tenth
# drew 429s with other processes busy on the node. The steady rate is the same either way.
ARRIVAL_RESERVE = 0.25
STORE_RETRY_S = 10.0  # a state store that could not be opened is tried again after this long
# The largest picture downloaded from a URL answer: a 4K PNG is about 25 MB.
MAX_PICTURE_BYTES = 64 << 20


def deployment_label(base_url: str) -> str:
    """A name for a deployment that is safe to log: scheme, host and port, never a key."""
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


class Deployment:
    """One endpoint and key of a provider, with its own limiter and health."""

    def __init__(
        self, settings: DeploymentSettings, provider: ProviderSettings, clock: Clock,
        client_factory: Callable[..., openai.AsyncOpenAI], start_empty: bool = False,
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
                burst_s=provider.burst_s, reserve=ARRIVAL_RESERVE, start_empty=start_empty,
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
        kind: ProviderKind,
        settings: ProviderSettings,
        *,
        local_base_url: str | None = None,
        clock: Clock | None = None,
        client_factory: Callable[..., openai.AsyncOpenAI] = openai.AsyncOpenAI,
        rng: random.Random | None = None,
        metrics: ProviderMetrics = NO_METRICS,
        start_empty: bool = False,
        state_url: str | None = None,
        storage: Storage | None = None,
    ) -> None:
        """``start_empty``: the limiters start with empty buckets (see ``Limits``).
        ``state_url``: the state store whose ledger this provider's calls are written in (and
        its call cache read from); ``storage``: where its files go (media calls name them by
        key) and its cached files are kept."""
        self.kind = kind
        self.settings = settings
        # A chat model's settings (its flex tier, prices); its answer cap's field name, and its
        # reasoning effort (if it is sent).
        self._chat = settings if isinstance(settings, LLMSettings) else None
        self._cap_field = self._chat.max_tokens_field if self._chat else "max_completion_tokens"
        self._effort = self._chat.reasoning_effort if self._chat else None
        self.policy = RetryPolicy(max_attempts=settings.max_attempts)
        self.counters = ProviderStats(metrics=metrics)
        self.estimator = TokenEstimator()
        # A video provider's clips are jobs, with a cap of their own.
        self.storage = storage
        self.clips = (ClipJobs(settings, self.send, self.counters, settings.max_attempts,
                               self._files)
                      if isinstance(settings, VideoSettings) else None)
        self._clock = clock or LoopClock()
        self._rng = rng or random.Random()
        self._state_url = state_url
        self._store: StateStore | None = None
        self._store_tried_at: float | None = None
        self._store_lock = asyncio.Lock()
        self.cache = CallCache(kind, settings.model, self._open_store, storage)
        deployments = settings.resolved_deployments()
        if any(d.base_url is None for d in deployments) and local_base_url is None:
            raise ValueError(f"{kind}: no base_url set and no local server to fall back on")
        self.deployments = [
            Deployment(
                d if d.base_url is not None else d.model_copy(update={"base_url": local_base_url}),
                settings, self._clock, client_factory, start_empty,
            )
            for d in deployments
        ]

    # -- operations -----------------------------------------------------------------------------

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        episode_id: str = "",
        owner: str = "",
        cache: bool = False,
        response_format: dict[str, Any] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        tier: Tier = "standard",
        flex_wait_s: float | None = None,
        flex_fallback: bool | None = None,
    ) -> ChatResult:
        """One chat completion. ``episode_id`` is the caller's turn key in the limiter;
        ``owner`` whose call it is (the ledger's, the cache's scope); ``cache``: answer it from
        the owner's earlier identical call, if there was one. ``tier`` ``flex`` sends it on the
        flex tier, trying it for up to ``flex_wait_s`` while it is busy, then at standard if
        ``flex_fallback`` (unset: the settings')."""
        params: dict[str, Any] = {"model": self.settings.model, "messages": messages}
        for name, value in (
            ("response_format", response_format), (self._cap_field, max_tokens),
            ("temperature", temperature), ("seed", seed), ("reasoning_effort", self._effort),
        ):
            if value is not None:
                params[name] = value
        max_output = max_tokens or DEFAULT_OUTPUT_TOKENS
        estimate = self.estimator.estimate(messages, max_output)
        lane = self._flex_lane(tier, flex_wait_s, flex_fallback)

        async def attempt(client: openai.AsyncOpenAI) -> Answer[dict[str, Any]]:
            # The SDK's generic ``post`` (its documented route to any endpoint) rather than
            # ``chat.completions.create``: the same auth, timeouts and typed errors, without
            # re-walking the messages through the SDK's TypedDict transform and building a
            # pydantic model of the answer — a third of the CPU of a call, on the hot path.
            if lane is None or lane.tier == "standard":
                response = await client.post("/chat/completions", body=params,
                                             cast_to=httpx2.Response)
            else:
                response = await client.post(
                    "/chat/completions", body={**params, "service_tier": "flex"},
                    cast_to=httpx2.Response, options={"timeout": lane.timeout_s})
            completion = _parse_chat(response)
            return Answer(completion, _chat_usage(completion), response.headers)

        async def paid() -> ChatResult:
            answer, how = await self.send(episode_id, estimate, attempt, lane)
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

        if self._state_url is None:
            return await paid()
        key = CallKey(owner, request_digest(self.kind, params))
        return self._counted(await self.cache.chat(key, cache, episode_id, paid))

    async def speech(
        self, text: str, *, voice: str, out: str, episode_id: str = "", owner: str = "",
        cache: bool = False, response_format: str = "wav",
    ) -> MediaResult:
        """Speak ``text`` into the file ``out`` (a storage key)."""
        params = {"model": self.settings.model, "input": text, "voice": voice,
                  "response_format": response_format}

        async def attempt(client: openai.AsyncOpenAI) -> Answer[bytes]:
            raw = await client.audio.speech.with_raw_response.create(**params)
            # Some servers answer another format than the one asked: convert it (off the loop).
            spoken = await asyncio.to_thread(audio_formats.convert, raw.content, response_format,
                                             raw.headers, raw.status_code)
            answer_checks.audio(spoken, response_format, raw.headers, raw.status_code)
            return Answer(spoken, Usage(units=len(text)), raw.headers)

        return await self._media(params, out, episode_id, owner, cache, attempt)

    async def image(
        self, prompt: str, *, out: str, size: str = "1536x1024", episode_id: str = "",
        owner: str = "", cache: bool = False,
    ) -> MediaResult:
        """Draw ``prompt`` into the PNG file ``out`` (a storage key)."""
        params = {"model": self.settings.model, "prompt": prompt, "size": size, "n": 1}

        async def attempt(client: openai.AsyncOpenAI) -> Answer[bytes]:
            raw = await client.images.with_raw_response.generate(**params)
            try:
                drawn = json.loads(raw.content)["data"][0]
                encoded, url = drawn.get("b64_json"), drawn.get("url")
                if not isinstance(encoded, str) and not isinstance(url, str):
                    raise KeyError("b64_json")
            except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
                raise MalformedResponse(
                    "the answer holds no image (neither b64_json nor url): "
                    + answer_checks.described(raw.content, raw.headers),
                    status=raw.status_code, request_id=raw.headers.get("x-request-id"),
                ) from err
            if isinstance(encoded, str):
                picture = base64.b64decode(encoded)
            else:  # DALL·E's default, and some local servers': fetched with the permit held
                fetched = await answer_download.download(
                    url, provider_base_url=str(client.base_url),
                    timeout_s=self.settings.timeout_s, max_bytes=MAX_PICTURE_BYTES)
                picture = fetched.content
            answer_checks.image(picture, raw.headers, raw.status_code)
            return Answer(picture, Usage(units=1), raw.headers)

        return await self._media(params, out, episode_id, owner, cache, attempt)

    async def clip(
        self, prompt: str, *, out: str, image: str | None = None,
        seconds: str = CLIP_SECONDS,
        size: str = "1280x720", episode_id: str = "", owner: str = "", cache: bool = False,
    ) -> MediaResult:
        """A clip job (see ``ClipJobs.make``) from the picture ``image`` into ``out`` (storage
        keys): only a video provider makes them."""
        clips = self.clips
        if clips is None:
            raise TypeError(f"the {self.kind} provider makes no clips")

        # Read once: it is sent with every job attempt, and keys the call cache.
        reference = await asyncio.to_thread(self._files().read, image) if image else None

        async def paid() -> MediaResult:
            return await clips.make(prompt, out=out, reference=reference, seconds=seconds,
                                    size=size, episode_id=episode_id)

        if self._state_url is None:
            return await paid()
        body = {"model": self.settings.model, "prompt": prompt, "seconds": seconds, "size": size,
                "input_reference": reference}
        key = CallKey(owner, request_digest(self.kind, body))
        return self._counted(await self.cache.media(key, cache, episode_id, out, paid))

    async def _media(self, params: dict[str, Any], out: str, episode_id: str, owner: str,
                     cache: bool, attempt: Callable[[openai.AsyncOpenAI], Awaitable[Answer[bytes]]]
                     ) -> MediaResult:
        """A call whose answer is a file's bytes, written to the storage key ``out``."""
        async def paid() -> MediaResult:
            answer, how = await self.send(episode_id, 0, attempt)
            await asyncio.to_thread(self._files().write, out, answer.value)
            return MediaResult.of(out, answer.value, answer, how)

        if self._state_url is None:
            return await paid()
        key = CallKey(owner, request_digest(self.kind, params))
        return self._counted(await self.cache.media(key, cache, episode_id, out, paid))

    def _files(self) -> Storage:
        if self.storage is None:
            raise RuntimeError(f"the {self.kind} provider was given no storage for its files")
        return self.storage

    def _counted(self, result: R) -> R:
        if result.cache_hit:
            self.counters.cache_hit(result.saved_usd)
        return result

    async def _open_store(self) -> StateStore | None:
        """The state store, opened on first use; one that cannot be opened is said in the log
        and tried again later (the calls go on, unwritten meanwhile)."""
        async with self._store_lock:
            if self._store is None and self._state_url is not None and (
                    self._store_tried_at is None
                    or self._clock.now() - self._store_tried_at >= STORE_RETRY_S):
                self._store_tried_at = self._clock.now()
                try:
                    self._store = await StateStore.open(self._state_url)
                except StateStoreError as err:
                    log.warning("%s: no ledger and no call cache for now: %s", self.kind, err)
            return self._store

    def snapshot(self) -> dict[str, Any]:
        """Counters, plus each deployment's live state (labels only: no keys)."""
        return {
            "provider": self.kind,
            "model": self.settings.model,
            **self.counters.snapshot(),
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
        if self._store is not None:
            await self._store.close()

    # -- the retry loop -------------------------------------------------------------------------

    async def send(
        self,
        episode_id: str,
        estimate: int,
        attempt_fn: Callable[[openai.AsyncOpenAI], Awaitable[Answer[T]]],
        lane: FlexLane | None = None,
    ) -> tuple[Answer[T], Attempts]:
        """Make one call: ``attempt_fn`` against a deployment, through its limiter, until it
        succeeds or cannot. ``episode_id`` is the caller's turn key in the limiter; ``estimate``
        the call's tokens; ``lane``, a flex call's way through the flex tier's busy answers."""
        self.counters.started()
        wait_s = 0.0
        attempt = rate_limited = 0
        last: Deployment | None = None
        while True:
            attempt += 1
            deployment = self._pick(avoid=last)
            waited_from = time.perf_counter()
            try:
                async with deployment.limiter.permit(episode_id, estimate) as permit:
                    waited = time.perf_counter() - waited_from
                    wait_s += waited
                    self.counters.waited(deployment.label, waited)
                    sent = time.perf_counter()
                    outcome = await self._attempt(deployment, permit, attempt_fn)
            except ProviderError as err:  # the permit is back: now pause, if it was a 429
                if isinstance(err, FlexBusy) and lane is not None and not lane.fell_back:
                    attempt -= 1  # this call's alone: no pause, no cool-down, no attempt used
                    await self._flex_busy(deployment, lane, err)
                    continue
                last = deployment
                self._failed(deployment, permit, err)
                rate_limited += isinstance(err, RateLimited)
                if not should_retry(err, attempt, self.policy):
                    self.counters.gave_up(deployment.label)
                    raise
                self.counters.retried(deployment.label)
                if not isinstance(err, RateLimited):  # a 429's wait is the limiter's pause
                    await asyncio.sleep(backoff_s(attempt, self.policy, self._rng.random()))
                continue
            latency = time.perf_counter() - sent
            tier: Tier = lane.tier if lane is not None else "standard"
            cost = cost_usd(self._prices(tier), outcome.usage, self.kind)
            # What the call would have cost at standard, less what it did.
            cheaper = (cost_usd(self.settings.prices, outcome.usage, self.kind) - cost
                       if tier == "flex" else 0.0)
            self.counters.succeeded(
                deployment.label, latency_s=latency, tokens_in=outcome.usage.tokens_in,
                tokens_out=outcome.usage.tokens_out, units=outcome.usage.units, cost_usd=cost,
                tier=tier, flex_saved_usd=cheaper,
            )
            return outcome, Attempts(
                deployment.label, attempt, rate_limited, latency, wait_s, cost, tier=tier,
                flex_saved_usd=cheaper,
            )

    async def _flex_busy(self, deployment: Deployment, lane: FlexLane, err: FlexBusy) -> None:
        """The flex tier had no room for the call: back off and try flex again, or go on at
        standard once the lane's wait is over, or raise ``err`` if it may not."""
        self.counters.attempt_failed(deployment.label, type(err).__name__)
        pause = lane.on_busy(self._clock.now(), self._rng.random())
        if pause is None and not lane.fell_back:
            self.counters.gave_up(deployment.label)
            err.message += (f"; flex was tried for {lane.wait_s:g} s and the episode allows no "
                            f"fallback to standard (flex_fallback)")
            raise err
        self.counters.flex_busy(fell_back=pause is None)
        if pause is not None:
            await asyncio.sleep(pause)

    def _prices(self, tier: Tier) -> Prices:
        return self._chat.tier_prices(tier) if self._chat else self.settings.prices

    def _flex_lane(self, tier: Tier, wait_s: float | None, fallback: bool | None
                   ) -> FlexLane | None:
        """A flex call's lane (None for a standard one); only chat models have a flex tier."""
        if tier != "flex":
            return None
        if self._chat is None:
            raise TypeError(f"the {self.kind} provider has no flex tier")
        return FlexLane(self._chat.flex_wait_s if wait_s is None else wait_s,
                        self._chat.flex_fallback if fallback is None else fallback,
                        self._chat.flex_timeout_s)

    async def _attempt(self, deployment: Deployment, permit: Permit,
                       attempt_fn: Callable[[openai.AsyncOpenAI], Awaitable[Answer[T]]]
                       ) -> Answer[T]:
        """One attempt with ``permit`` held; the permit learns what the attempt used."""
        try:
            with provider_errors(self.kind, deployment.label):
                outcome = await attempt_fn(deployment.client)
        except ProviderError as err:
            # A 429, a busy flex tier's answer, or a request that never arrived was not counted
            # by the server.
            permit.failed(counted=err.status is not None and err.status != 429
                          and not isinstance(err, FlexBusy))
            raise
        used = outcome.usage.tokens_in + outcome.usage.tokens_out
        self._observe(deployment, permit, outcome.headers)
        permit.settle(used if used else None)
        deployment.record(ok=True, now=self._clock.now())
        return outcome

    def _failed(self, deployment: Deployment, permit: Permit, err: ProviderError) -> None:
        """An attempt failed: count it; a 429 pauses every caller of the deployment (from
        after its permit was given back, so the bucket is empty when the pause ends), anything
        else counts against the deployment's health."""
        self.counters.attempt_failed(deployment.label, type(err).__name__,
                                     rate_limited=isinstance(err, RateLimited))
        if isinstance(err, RateLimited):
            response = getattr(err.__cause__, "response", None)
            if response is not None:
                self._observe(deployment, permit, response.headers)
            deployment.limiter.pause(pause_for(err, self.policy))
        else:
            deployment.record(ok=False, now=self._clock.now())

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
