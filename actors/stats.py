"""Counters of one provider, so a run can say where the time and the money went.

Each event is one method that updates the counters here and the metrics sink (``actors.metrics``)
together, so ``stats()`` and the dashboards never disagree.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from actors.metrics import NO_METRICS, ProviderMetrics

# Upper bounds in milliseconds; wide enough for a 5 ms local call and a 10-minute video job.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000, math.inf,
)


@dataclass
class Histogram:
    """Counts per latency bucket; quantiles are read off the bucket bounds."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS_MS
    counts: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS_MS))
    total: int = 0
    sum_ms: float = 0.0

    def observe(self, ms: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, ms)] += 1
        self.total += 1
        self.sum_ms += ms

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding the q-th observation (None when empty)."""
        if self.total == 0:
            return None
        rank = math.ceil(q * self.total)
        seen = 0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            seen += count
            if seen >= rank:
                return bound
        return self.bounds[-1]

    def snapshot(self) -> dict[str, Any]:
        return {
            "buckets_ms": [b if math.isfinite(b) else "inf" for b in self.bounds],
            "counts": list(self.counts),
            "count": self.total,
            "mean_ms": self.sum_ms / self.total if self.total else None,
            "p50_ms": self.quantile(0.5),
            "p99_ms": self.quantile(0.99),
        }


@dataclass
class TierFigures:
    """One processing tier's answered calls, their cost, and (flex) what they saved."""

    calls: int = 0
    cost_usd: float = 0.0
    saved_usd: float = 0.0

    def snapshot(self) -> dict[str, Any]:
        return {"calls": self.calls, "cost_usd": round(self.cost_usd, 6),
                "saved_usd": round(self.saved_usd, 6)}


@dataclass
class ProviderStats:
    """What one provider actor did. ``errors`` counts failed attempts by error class.

    ``deployment`` arguments are deployment labels (scheme, host, port: never a key); the
    counters here add them up, the metrics keep them apart."""

    calls: int = 0
    ok: int = 0
    failed: int = 0
    rate_limited: int = 0
    retries: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    tokens_in: int = 0
    tokens_out: int = 0
    units: float = 0.0  # images, speech characters or video seconds, by the provider's kind
    cost_usd: float = 0.0
    limiter_wait_s: float = 0.0
    cache_hits: int = 0  # calls answered by the call cache: not sent, not in ``calls``
    saved_usd: float = 0.0  # what those would have cost
    # Seconds the provider's jobs (video clips) were seen running, each from its create until
    # the last poll that found it not yet over: what its cap of jobs at once surely cost a run
    # (the report's lower bound), whatever the provider's progress figures mean.
    job_s: float = 0.0
    # Answered calls and their cost per processing tier, what flex saved against standard,
    # flex's busy answers, and the calls that went on at standard after waiting them out.
    tiers: dict[str, TierFigures] = field(default_factory=dict)
    flex_busy_answers: int = 0
    flex_fell_back: int = 0
    latency: Histogram = field(default_factory=Histogram)
    metrics: ProviderMetrics = field(default=NO_METRICS, repr=False, compare=False)

    # -- events, in the order a call meets them -------------------------------------------------

    def started(self) -> None:
        self.calls += 1

    def waited(self, deployment: str, seconds: float) -> None:
        """An attempt got its limiter permit after ``seconds``."""
        self.limiter_wait_s += seconds
        self.metrics.waited(deployment, seconds)

    def attempt_failed(self, deployment: str, error: str, *, rate_limited: bool = False) -> None:
        """An attempt failed with the error class ``error``; a 429 when ``rate_limited``."""
        self.errors[error] += 1
        if rate_limited:
            self.rate_limited += 1
            self.metrics.rate_limited(deployment)

    def retried(self, deployment: str) -> None:
        """Another attempt follows one that failed at ``deployment``."""
        self.retries += 1
        self.metrics.retried(deployment)

    def gave_up(self, deployment: str) -> None:
        """The call failed for good (its last attempt was at ``deployment``)."""
        self.failed += 1
        self.metrics.gave_up(deployment)

    def flex_busy(self, *, fell_back: bool) -> None:
        """The flex tier had no capacity for a call; it waits, or goes on at standard."""
        self.flex_busy_answers += 1
        self.flex_fell_back += fell_back

    def succeeded(self, deployment: str, *, latency_s: float, tokens_in: int, tokens_out: int,
                  units: float, cost_usd: float, tier: str = "standard",
                  flex_saved_usd: float = 0.0) -> None:
        figures = self.tiers.setdefault(tier, TierFigures())
        figures.calls += 1
        figures.cost_usd += cost_usd
        figures.saved_usd += flex_saved_usd
        self.ok += 1
        self.tokens_in += tokens_in
        self.tokens_out += tokens_out
        self.units += units
        self.cost_usd += cost_usd
        self.latency.observe(latency_s * 1000)
        self.metrics.succeeded(deployment, latency_s, tokens_in, tokens_out, cost_usd)

    def cache_hit(self, saved_usd: float) -> None:
        """A call was answered from the cache, saving ``saved_usd``."""
        self.cache_hits += 1
        self.saved_usd += saved_usd
        self.metrics.cache_hit(saved_usd)

    def job_ended(self, deployment: str, ran_s: float) -> None:
        """A provider job is over (done or failed), seen running for ``ran_s``."""
        self.job_s += ran_s
        self.metrics.job_ended(deployment, ran_s)

    def snapshot(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "ok": self.ok,
            "failed": self.failed,
            "rate_limited": self.rate_limited,
            "retries": self.retries,
            "errors": dict(self.errors),
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "units": self.units,
            "cost_usd": round(self.cost_usd, 6),
            "limiter_wait_s": round(self.limiter_wait_s, 6),
            "cache_hits": self.cache_hits,
            "saved_usd": round(self.saved_usd, 6),
            "job_s": round(self.job_s, 6),
            "tiers": {tier: f.snapshot() for tier, f in self.tiers.items()},
            "flex_busy": self.flex_busy_answers,
            "flex_fell_back": self.flex_fell_back,
            "latency": self.latency.snapshot(),
        }
