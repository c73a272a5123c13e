"""Prometheus metrics through ``ray.util.metrics``, for cluster dashboards.

A provider actor's ``stats()`` answers for one actor, now. Dashboards need every provider, over
time, beside Ray's own metrics: so the same events are also recorded as Ray application metrics,
which each node's metrics agent serves on its Prometheus endpoint (``MetricsExportPort``).

Ray exports a metric ``showrunner_x`` as ``ray_showrunner_x``; a counter as
``ray_showrunner_x_total``; a histogram as ``ray_showrunner_x_bucket``, ``_sum`` and ``_count``.
:meth:`Spec.exported` says which, so the dashboard test can check every query names one of them.

Ray metric objects need a connected Ray worker. They are made lazily, once per process, on first
use; without Ray (``ray.is_initialized()`` is False, as in unit tests) every function here does
nothing. On the hot path the tag dicts are built once per provider deployment, not per call.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import ray
from ray.util.metrics import Counter, Gauge, Histogram, Metric

# Seconds, from a 10 ms local call to a 20-minute video job.
SECONDS_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200,
)
PROVIDER = ("provider", "deployment")  # provider: llm/tts/image/video; deployment: scheme://host:port


@dataclass(frozen=True)
class Spec:
    """One metric: what it is called, its type, its tags and what it means."""

    name: str
    kind: type[Metric]
    description: str
    tags: tuple[str, ...] = ()

    def exported(self) -> tuple[str, ...]:
        """The names Ray's Prometheus endpoint shows for it (checked by the integration test)."""
        base = f"ray_{self.name}"
        if self.kind is Counter:
            return (f"{base}_total",)
        if self.kind is Histogram:
            return (f"{base}_bucket", f"{base}_sum", f"{base}_count")
        return (base,)

    def make(self) -> Metric:
        if self.kind is Histogram:
            return Histogram(self.name, self.description, list(SECONDS_BUCKETS), self.tags)
        return self.kind(self.name, self.description, self.tags)


CALLS = Spec("showrunner_provider_calls", Counter,
             "Provider calls finished, by outcome (ok, or error after the last attempt).",
             (*PROVIDER, "outcome"))
RATE_LIMITED = Spec("showrunner_provider_rate_limited", Counter,
                    "429 answers received from the provider.", PROVIDER)
RETRIES = Spec("showrunner_provider_retries", Counter,
               "Attempts made again after a retryable failure.", PROVIDER)
TOKENS = Spec("showrunner_provider_tokens", Counter,
              "Tokens the provider reported, by direction (prompt or completion).",
              (*PROVIDER, "direction"))
COST = Spec("showrunner_provider_cost_usd", Counter,
            "Cost of successful calls in US dollars, from the configured prices.", PROVIDER)
LATENCY = Spec("showrunner_provider_latency_seconds", Histogram,
               "Time of each successful attempt, from send to parsed answer.", PROVIDER)
LIMITER_WAIT = Spec("showrunner_provider_limiter_wait_seconds", Histogram,
                    "Time each attempt waited for the deployment's limiter.", PROVIDER)
JOB_SECONDS = Spec("showrunner_provider_job_seconds", Counter,
                   "Seconds provider jobs (video clips) were seen running; its rate is the "
                   "average number of jobs in progress.", PROVIDER)
EPISODES_QUEUED = Spec("showrunner_episodes_queued", Gauge,
                       "Episodes accepted by the coordinator and not started yet.")
EPISODES_RUNNING = Spec("showrunner_episodes_running", Gauge,
                        "Episodes the coordinator is running.")
NODES_IN_FLIGHT = Spec("showrunner_nodes_in_flight", Gauge,
                       "Episode graph nodes (model calls, media tasks) in flight.")
STAGE = Spec("showrunner_stage_seconds", Histogram,
             "Duration of each episode graph node, by stage.", ("stage",))

SPECS: tuple[Spec, ...] = (
    CALLS, RATE_LIMITED, RETRIES, TOKENS, COST, LATENCY, LIMITER_WAIT, JOB_SECONDS,
    EPISODES_QUEUED, EPISODES_RUNNING, NODES_IN_FLIGHT, STAGE,
)

_made: dict[str, Metric] | None = None
_lock = threading.Lock()


def _metrics() -> dict[str, Metric] | None:
    """This process's metric objects by name, made on first use; None while Ray is not up."""
    global _made
    if _made is None and ray.is_initialized():
        with _lock:
            if _made is None:
                _made = {spec.name: spec.make() for spec in SPECS}
    return _made


class ProviderMetrics:
    """One provider actor's metrics. Which Ray metric objects, and the tag dicts of each
    deployment, are looked up once, so recording a call costs a few attribute reads."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        made = _metrics()
        self.enabled = made is not None
        if made is not None:
            self._calls = made[CALLS.name]
            self._rate_limited = made[RATE_LIMITED.name]
            self._retries = made[RETRIES.name]
            self._tokens = made[TOKENS.name]
            self._cost = made[COST.name]
            self._latency = made[LATENCY.name]
            self._wait = made[LIMITER_WAIT.name]
            self._job_s = made[JOB_SECONDS.name]
        self._tags: dict[str, _Tags] = {}

    def _for(self, deployment: str) -> _Tags:
        tags = self._tags.get(deployment)
        if tags is None:
            tags = self._tags[deployment] = _Tags.of(self.provider, deployment)
        return tags

    def succeeded(self, deployment: str, latency_s: float, tokens_in: int, tokens_out: int,
                  cost_usd: float) -> None:
        if not self.enabled:
            return
        tags = self._for(deployment)
        self._calls.inc(1, tags.ok)
        self._latency.observe(latency_s, tags.base)
        # Ray counters refuse increments of zero.
        if tokens_in > 0:
            self._tokens.inc(tokens_in, tags.prompt)
        if tokens_out > 0:
            self._tokens.inc(tokens_out, tags.completion)
        if cost_usd > 0:
            self._cost.inc(cost_usd, tags.base)

    def gave_up(self, deployment: str) -> None:
        if self.enabled:
            self._calls.inc(1, self._for(deployment).error)

    def rate_limited(self, deployment: str) -> None:
        if self.enabled:
            self._rate_limited.inc(1, self._for(deployment).base)

    def retried(self, deployment: str) -> None:
        if self.enabled:
            self._retries.inc(1, self._for(deployment).base)

    def waited(self, deployment: str, seconds: float) -> None:
        if self.enabled:
            self._wait.observe(seconds, self._for(deployment).base)

    def job_ended(self, deployment: str, seconds: float) -> None:
        if self.enabled and seconds > 0:  # Ray counters refuse increments of zero
            self._job_s.inc(seconds, self._for(deployment).base)


@dataclass(frozen=True)
class _Tags:
    base: dict[str, str]
    ok: dict[str, str]
    error: dict[str, str]
    prompt: dict[str, str]
    completion: dict[str, str]

    @classmethod
    def of(cls, provider: str, deployment: str) -> _Tags:
        base = {"provider": provider, "deployment": deployment}
        return cls(base, {**base, "outcome": "ok"}, {**base, "outcome": "error"},
                   {**base, "direction": "prompt"}, {**base, "direction": "completion"})


def set_episode_gauges(queued: int, running: int, nodes_in_flight: int) -> None:
    """The coordinator's load: episodes waiting, episodes running, graph nodes in flight."""
    made = _metrics()
    if made is None:
        return
    made[EPISODES_QUEUED.name].set(queued)
    made[EPISODES_RUNNING.name].set(running)
    made[NODES_IN_FLIGHT.name].set(nodes_in_flight)


def observe_stage(stage: str, seconds: float) -> None:
    """How long one graph node of ``stage`` (a ``NodeKind`` value) took."""
    made = _metrics()
    if made is not None:
        made[STAGE.name].observe(seconds, {"stage": stage})
