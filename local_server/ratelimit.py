"""The server's side of rate limiting: the referee the client's limiter is measured against.

Written independently of ``actors.limiter`` on purpose: a shared bug would hide itself. Like
OpenAI's, a per-minute limit is enforced over short windows: each bucket holds ``burst_s`` seconds
of quota and refills continuously; a request is admitted only if every bucket holds enough, and a
refused request consumes nothing.

A request costing more tokens than a bucket can ever hold (a 2,000-token prompt against 60,000 TPM
with a one-second burst, i.e. 1,000 tokens) would otherwise be refused forever; it is admitted
once the bucket is full and leaves the bucket in debt, so the cost is still paid in time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]
EPSILON = 1e-9


class Bucket:
    """A token bucket of ``per_minute`` units a minute, holding ``burst_s`` seconds of them (at
    least one unit, so a limit under one a second still admits something)."""

    def __init__(self, per_minute: float, burst_s: float, clock: Clock = time.monotonic) -> None:
        if per_minute <= 0 or burst_s <= 0:
            raise ValueError("a bucket needs a positive rate and burst")
        self.limit = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self._clock = clock
        self._level = self.capacity
        self._at = clock()

    def level(self) -> float:
        """Units available now (negative while a too-big request's debt is being paid)."""
        now = self._clock()
        if now > self._at:
            self._level = min(self.capacity, self._level + (now - self._at) * self.rate)
            self._at = now
        return self._level

    def shortfall_s(self, amount: float) -> float:
        """Seconds until ``amount`` fits; an amount over capacity fits a full bucket. A shortfall
        within float error counts as none: a client that waits exactly the time it was told
        must be admitted."""
        missing = min(amount, self.capacity) - self.level()
        if missing <= EPSILON * max(1.0, self.capacity):
            return 0.0
        return missing / self.rate

    def take(self, amount: float) -> None:
        self._level = self.level() - amount

    def reset_s(self) -> float:
        """Seconds until the bucket is full again (the ``x-ratelimit-reset-*`` header)."""
        return max(0.0, (self.capacity - self.level()) / self.rate)


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    retry_after_s: float = 0.0  # when refused: the time until the request would fit
    kind: str = ""  # when refused: "requests" or "tokens", the limit that waits longest
    limit: float = 0.0  # that limit, per minute
    requested: float = 0.0  # what the request asked of it


ADMITTED = Decision(True)


class EndpointLimits:
    """The request and token buckets of one endpoint; either may be absent (no limit)."""

    def __init__(self, rpm: float | None, tpm: float | None, burst_s: float,
                 clock: Clock = time.monotonic) -> None:
        self.requests = Bucket(rpm, burst_s, clock) if rpm else None
        self.tokens = Bucket(tpm, burst_s, clock) if tpm else None

    def admit(self, tokens: int) -> Decision:
        """Take one request and ``tokens`` tokens if both fit; otherwise take nothing."""
        worst: Decision | None = None
        for kind, bucket, amount in (("requests", self.requests, 1), ("tokens", self.tokens,
                                                                      tokens)):
            if bucket is None:
                continue
            wait = bucket.shortfall_s(amount)
            if wait > 0 and (worst is None or wait > worst.retry_after_s):
                worst = Decision(False, wait, kind, bucket.limit, amount)
        if worst is not None:
            return worst
        if self.requests is not None:
            self.requests.take(1)
        if self.tokens is not None:
            self.tokens.take(tokens)
        return ADMITTED

    def headers(self) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers of the limits that are set (none when unlimited)."""
        out: dict[str, str] = {}
        for name, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is None:
                continue
            out[f"x-ratelimit-limit-{name}"] = f"{bucket.limit:.0f}"
            out[f"x-ratelimit-remaining-{name}"] = str(max(0, math.floor(bucket.level())))
            out[f"x-ratelimit-reset-{name}"] = format_duration(bucket.reset_s())
        return out


def format_duration(seconds: float) -> str:
    """OpenAI's style: ``250ms`` under a second, else ``1s``, ``1.5s``, ``6m0s``, ``1h2m3s``.

    Rounded up to the millisecond, so a client that waits this long finds the bucket refilled.
    """
    millis = max(0, math.ceil(seconds * 1000 - 1e-6))
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    text = f"{secs}s"
    if minutes or hours:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return text
