"""The metrics sink the actor factory gives its actors: Ray application metrics
(``ray.util.metrics``), which each node's metrics agent serves to Prometheus.

Ray metric objects need a connected Ray worker, so they are made on first use, once per process,
never at pickling time: a sink is made by the factory in the driver and used in the actor's
process. On the hot path the tag dicts are built once per provider deployment, not per call.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from ray.util.metrics import Counter, Gauge, Histogram, Metric

from actors.metrics import (
    CACHE_HITS,
    CALLS,
    COST,
    EPISODES_QUEUED,
    EPISODES_RUNNING,
    JOB_SECONDS,
    LATENCY,
    LIMITER_WAIT,
    NODES_IN_FLIGHT,
    RATE_LIMITED,
    RETRIES,
    SAVED,
    SECONDS_BUCKETS,
    SPECS,
    STAGE,
    TOKENS,
    MetricType,
    Spec,
)
from pipelines.planner import NodeKind

_made: dict[str, Metric] | None = None
_lock = threading.Lock()


def _make(spec: Spec) -> Metric:
    if spec.type is MetricType.HISTOGRAM:
        return Histogram(spec.name, spec.description, list(SECONDS_BUCKETS), spec.tags)
    kind = Counter if spec.type is MetricType.COUNTER else Gauge
    return kind(spec.name, spec.description, spec.tags)


def _metrics() -> dict[str, Metric]:
    """This process's metric objects by name, made on first use."""
    global _made
    if _made is None:
        with _lock:
            if _made is None:
                _made = {spec.name: _make(spec) for spec in SPECS}
    return _made


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


class RayProviderMetrics:
    """One provider actor's metrics."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self._tags: dict[str, _Tags] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"provider": self.provider, "_tags": {}}

    def _for(self, deployment: str) -> _Tags:
        tags = self._tags.get(deployment)
        if tags is None:
            tags = self._tags[deployment] = _Tags.of(self.provider, deployment)
        return tags

    def succeeded(self, deployment: str, latency_s: float, tokens_in: int, tokens_out: int,
                  cost_usd: float) -> None:
        made, tags = _metrics(), self._for(deployment)
        made[CALLS.name].inc(1, tags.ok)
        made[LATENCY.name].observe(latency_s, tags.base)
        # Ray counters refuse increments of zero.
        if tokens_in > 0:
            made[TOKENS.name].inc(tokens_in, tags.prompt)
        if tokens_out > 0:
            made[TOKENS.name].inc(tokens_out, tags.completion)
        if cost_usd > 0:
            made[COST.name].inc(cost_usd, tags.base)

    def gave_up(self, deployment: str) -> None:
        _metrics()[CALLS.name].inc(1, self._for(deployment).error)

    def rate_limited(self, deployment: str) -> None:
        _metrics()[RATE_LIMITED.name].inc(1, self._for(deployment).base)

    def retried(self, deployment: str) -> None:
        _metrics()[RETRIES.name].inc(1, self._for(deployment).base)

    def waited(self, deployment: str, seconds: float) -> None:
        _metrics()[LIMITER_WAIT.name].observe(seconds, self._for(deployment).base)

    def job_ended(self, deployment: str, seconds: float) -> None:
        if seconds > 0:  # Ray counters refuse increments of zero
            _metrics()[JOB_SECONDS.name].inc(seconds, self._for(deployment).base)

    def cache_hit(self, saved_usd: float) -> None:
        made, tags = _metrics(), {"provider": self.provider}
        made[CACHE_HITS.name].inc(1, tags)
        if saved_usd > 0:
            made[SAVED.name].inc(saved_usd, tags)


class RayCoordinatorMetrics:
    """The coordinator's load and its nodes' durations."""

    def episodes(self, queued: int, running: int, nodes_in_flight: int) -> None:
        made = _metrics()
        made[EPISODES_QUEUED.name].set(queued)
        made[EPISODES_RUNNING.name].set(running)
        made[NODES_IN_FLIGHT.name].set(nodes_in_flight)

    def stage(self, kind: NodeKind, seconds: float) -> None:
        _metrics()[STAGE.name].observe(seconds, {"stage": kind.value})
