"""The server's side of rate limiting: the referee the client's limiter is measured against.

Written independently of ``actors.limiter`` on purpose: a shared bug would hide itself. Like
OpenAI's, a per-minute limit is enforced per second: each bucket holds ``burst_s`` seconds of
quota and refills continuously; a request is admitted only if every bucket holds enough, and a
refused request consumes nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


class Bucket:
    def __init__(self, per_minute: float, burst_s: float, clock: Callable[[], float]) -> None:
        self.limit = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self._clock = clock
        self._level = self.capacity
        self._at = clock()

    def level(self) -> float:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._at) * self.rate)
        self._at = now
        return self._level

    def shortfall_s(self, amount: float) -> float:
        """Seconds until ``amount`` fits (an amount over capacity needs a full bucket)."""
        missing = min(amount, self.capacity) - self.level()
        return max(0.0, missing / self.rate)

    def take(self, amount: float) -> None:
        self._level = self.level() - amount

    def reset_s(self) -> float:
        """Seconds until the bucket is full again (the x-ratelimit-reset-* header)."""
        return max(0.0, (self.capacity - self.level()) / self.rate)


@dataclass(frozen=True)
class Decision:
    admitted: bool
    retry_after_s: float = 0.0
    kind: str = ""  # "requests" or "tokens": which limit refused


class EndpointLimits:
    """The request and token buckets of one endpoint (either may be absent)."""

    def __init__(self, rpm: float | None, tpm: float | None, burst_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.requests = Bucket(rpm, burst_s, clock) if rpm else None
        self.tokens = Bucket(tpm, burst_s, clock) if tpm else None

    def admit(self, tokens: int) -> Decision:
        waits = []
        if self.requests is not None:
            waits.append(("requests", self.requests.shortfall_s(1)))
        if self.tokens is not None:
            waits.append(("tokens", self.tokens.shortfall_s(tokens)))
        blocking = [(kind, wait) for kind, wait in waits if wait > 0]
        if blocking:
            kind, wait = max(blocking, key=lambda kw: kw[1])
            return Decision(False, max(wait for _, wait in blocking), kind)
        if self.requests is not None:
            self.requests.take(1)
        if self.tokens is not None:
            self.tokens.take(tokens)
        return Decision(True)

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is None:
                continue
            out[f"x-ratelimit-limit-{name}"] = str(int(bucket.limit))
            out[f"x-ratelimit-remaining-{name}"] = str(max(0, math.floor(bucket.level())))
            out[f"x-ratelimit-reset-{name}"] = format_duration(bucket.reset_s())
        return out


def format_duration(seconds: float) -> str:
    """OpenAI's style: ``250ms`` under a second, else ``1s``, ``6m0s``, ``1h2m3s``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    seconds = round(seconds, 3)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if minutes or hours:
        text = f"{int(minutes)}m" + text
    if hours:
        text = f"{int(hours)}h" + text
    return text
