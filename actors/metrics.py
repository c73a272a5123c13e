"""The metrics Showrunner records for cluster dashboards, and where they go. No Ray here.

A provider actor's ``stats()`` answers for one actor, now. Dashboards need every provider, over
time, beside Ray's own metrics, so the same events also go to a *sink*: the plain classes record
into whatever sink they are given — a no-op by default (unit tests, the classes used without
Ray) — and the actor factory gives them ``actors.ray_metrics``'s, which records Ray application
metrics that each node's metrics agent serves on its Prometheus endpoint.

Ray exports a metric ``showrunner_x`` as ``ray_showrunner_x``; a counter as
``ray_showrunner_x_total``; a histogram as ``ray_showrunner_x_bucket``, ``_sum`` and ``_count``.
:meth:`Spec.exported` says which, so the dashboard test can check every query names one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from pipelines.planner import NodeKind

# Seconds, from a 10 ms local call to a 20-minute video job.
SECONDS_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200,
)
PROVIDER = ("provider", "deployment")  # provider: llm/tts/image/video; deployment: scheme://host:port


class MetricType(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True)
class Spec:
    """One metric: what it is called, its type, its tags and what it means."""

    name: str
    type: MetricType
    description: str
    tags: tuple[str, ...] = ()

    def exported(self) -> tuple[str, ...]:
        """The names Ray's Prometheus endpoint shows for it (checked by the integration test)."""
        base = f"ray_{self.name}"
        if self.type is MetricType.COUNTER:
            return (f"{base}_total",)
        if self.type is MetricType.HISTOGRAM:
            return (f"{base}_bucket", f"{base}_sum", f"{base}_count")
        return (base,)


CALLS = Spec("showrunner_provider_calls", MetricType.COUNTER,
             "Provider calls finished, by outcome (ok, or error after the last attempt).",
             (*PROVIDER, "outcome"))
RATE_LIMITED = Spec("showrunner_provider_rate_limited", MetricType.COUNTER,
                    "429 answers received from the provider.", PROVIDER)
RETRIES = Spec("showrunner_provider_retries", MetricType.COUNTER,
               "Attempts made again after a retryable failure.", PROVIDER)
TOKENS = Spec("showrunner_provider_tokens", MetricType.COUNTER,
              "Tokens the provider reported, by direction (prompt or completion).",
              (*PROVIDER, "direction"))
COST = Spec("showrunner_provider_cost_usd", MetricType.COUNTER,
            "Cost of successful calls in US dollars, from the configured prices.", PROVIDER)
LATENCY = Spec("showrunner_provider_latency_seconds", MetricType.HISTOGRAM,
               "Time of each successful attempt, from send to parsed answer.", PROVIDER)
LIMITER_WAIT = Spec("showrunner_provider_limiter_wait_seconds", MetricType.HISTOGRAM,
                    "Time each attempt waited for the deployment's limiter.", PROVIDER)
JOB_SECONDS = Spec("showrunner_provider_job_seconds", MetricType.COUNTER,
                   "Seconds provider jobs (video clips) were seen running; its rate is the "
                   "average number of jobs in progress.", PROVIDER)
CACHE_HITS = Spec("showrunner_provider_cache_hits", MetricType.COUNTER,
                  "Calls answered by the call cache: not sent, not paid.", ("provider",))
SAVED = Spec("showrunner_provider_saved_usd", MetricType.COUNTER,
             "What the calls the cache answered would have cost, in US dollars.", ("provider",))
EPISODES_QUEUED = Spec("showrunner_episodes_queued", MetricType.GAUGE,
                       "Episodes accepted by the coordinator and not started yet.")
EPISODES_RUNNING = Spec("showrunner_episodes_running", MetricType.GAUGE,
                        "Episodes the coordinator is running.")
NODES_IN_FLIGHT = Spec("showrunner_nodes_in_flight", MetricType.GAUGE,
                       "Episode graph nodes (model calls, media tasks) in flight.")
STAGE = Spec("showrunner_stage_seconds", MetricType.HISTOGRAM,
             "Duration of each episode graph node, by stage.", ("stage",))

SPECS: tuple[Spec, ...] = (
    CALLS, RATE_LIMITED, RETRIES, TOKENS, COST, LATENCY, LIMITER_WAIT, JOB_SECONDS, CACHE_HITS,
    SAVED, EPISODES_QUEUED, EPISODES_RUNNING, NODES_IN_FLIGHT, STAGE,
)


class ProviderMetrics(Protocol):
    """Where a provider's events go, each tagged with the deployment (scheme, host, port)."""

    def succeeded(self, deployment: str, latency_s: float, tokens_in: int, tokens_out: int,
                  cost_usd: float) -> None: ...

    def gave_up(self, deployment: str) -> None: ...

    def rate_limited(self, deployment: str) -> None: ...

    def retried(self, deployment: str) -> None: ...

    def waited(self, deployment: str, seconds: float) -> None: ...

    def job_ended(self, deployment: str, seconds: float) -> None: ...

    def cache_hit(self, saved_usd: float) -> None: ...


class CoordinatorMetrics(Protocol):
    """Where the coordinator's load and its nodes' durations go."""

    def episodes(self, queued: int, running: int, nodes_in_flight: int) -> None: ...

    def stage(self, kind: NodeKind, seconds: float) -> None: ...


class NoMetrics:
    """The default sink: records nothing."""

    def succeeded(self, deployment: str, latency_s: float, tokens_in: int, tokens_out: int,
                  cost_usd: float) -> None:
        pass

    def gave_up(self, deployment: str) -> None:
        pass

    def rate_limited(self, deployment: str) -> None:
        pass

    def retried(self, deployment: str) -> None:
        pass

    def waited(self, deployment: str, seconds: float) -> None:
        pass

    def job_ended(self, deployment: str, seconds: float) -> None:
        pass

    def cache_hit(self, saved_usd: float) -> None:
        pass

    def episodes(self, queued: int, running: int, nodes_in_flight: int) -> None:
        pass

    def stage(self, kind: NodeKind, seconds: float) -> None:
        pass


NO_METRICS = NoMetrics()
