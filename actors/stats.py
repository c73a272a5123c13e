"""Counters of one provider, so a run can say where the time and the money went."""

from __future__ import annotations

import bisect
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

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
class ProviderStats:
    """What one provider actor did. ``errors`` counts failed attempts by error class."""

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
    latency: Histogram = field(default_factory=Histogram)

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
            "latency": self.latency.snapshot(),
        }
