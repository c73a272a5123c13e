"""The retry policy of provider calls: pure decisions, so only the sleep is I/O.

The provider actor is the one retry loop (the SDK runs with ``max_retries=0``): retrying in two
layers multiplies attempts, and retrying per caller turns one 429 into a storm.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from pipelines.errors import ProviderError, RateLimited
from pipelines.settings import Tier


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to try again."""

    max_attempts: int = 5
    base_s: float = 0.5
    cap_s: float = 8.0
    # A 429 without a usable retry-after still pauses everyone for a moment.
    default_pause_s: float = 1.0


def should_retry(err: ProviderError, attempt: int, policy: RetryPolicy) -> bool:
    """Retry only what can succeed, and only while attempts remain (``attempt`` counts from 1)."""
    return err.retryable and attempt < policy.max_attempts


def backoff_s(attempt: int, policy: RetryPolicy, jitter: float) -> float:
    """Exponential backoff with jitter in [0.5, 1] of the step, so retries spread out.

    ``jitter`` is a number in [0, 1) from the caller's random source.
    """
    step = min(policy.base_s * 2 ** max(attempt - 1, 0), policy.cap_s)
    return step * (0.5 + 0.5 * jitter)


def pause_for(err: RateLimited, policy: RetryPolicy) -> float:
    """How long every caller of the key pauses after this 429."""
    if err.retry_after_s is not None and err.retry_after_s > 0:
        return err.retry_after_s
    return policy.default_pause_s


_DURATION = re.compile(r"(?P<value>\d+(?:\.\d+)?)(?P<unit>ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str) -> float | None:
    """OpenAI's reset durations: ``1s``, ``6m0s``, ``250ms``, ``1h2m3.5s``; None if unreadable."""
    text = text.strip()
    parts = list(_DURATION.finditer(text))
    if not parts or "".join(p.group(0) for p in parts) != text:
        return None
    return sum(float(p["value"]) * _UNIT_S[p["unit"]] for p in parts)


@dataclass(frozen=True)
class RateLimitHeaders:
    """What the server said about its limits in ``x-ratelimit-*`` headers."""

    limit_requests: float | None = None
    remaining_requests: float | None = None
    reset_requests_s: float | None = None
    limit_tokens: float | None = None
    remaining_tokens: float | None = None
    reset_tokens_s: float | None = None

    @classmethod
    def parse(cls, headers: Mapping[str, str]) -> RateLimitHeaders:
        def number(name: str) -> float | None:
            value = headers.get(name)
            try:
                return float(value) if value is not None else None
            except ValueError:
                return None

        def duration(name: str) -> float | None:
            value = headers.get(name)
            return parse_duration(value) if value is not None else None

        return cls(
            limit_requests=number("x-ratelimit-limit-requests"),
            remaining_requests=number("x-ratelimit-remaining-requests"),
            reset_requests_s=duration("x-ratelimit-reset-requests"),
            limit_tokens=number("x-ratelimit-limit-tokens"),
            remaining_tokens=number("x-ratelimit-remaining-tokens"),
            reset_tokens_s=duration("x-ratelimit-reset-tokens"),
        )


# A busy flex tier is waited out longer than a failing server: capacity comes back in seconds
# to minutes, and nothing is charged meanwhile.
FLEX_BACKOFF = RetryPolicy(base_s=1.0, cap_s=30.0)


@dataclass
class FlexLane:
    """One call's way through the flex tier: it tries flex while it has no capacity, backing
    off, for up to ``wait_s``; then it goes on at standard (``fallback``) or fails.

    Its busy answers are this call's alone: they pause no one else's calls on the key (a 429
    would), cool no deployment down, and use none of the call's ``max_attempts``."""

    wait_s: float
    fallback: bool
    timeout_s: float  # of one request on the flex tier, which queues
    tier: Tier = "flex"  # the tier the next attempt goes on
    busy: int = 0  # busy answers so far
    busy_since: float | None = None

    def on_busy(self, now: float, jitter: float) -> float | None:
        """Flex had no capacity at ``now``: seconds to back off before trying flex again, or
        None once the wait is over (then ``tier`` says whether the call goes on at standard).
        ``jitter`` is a number in [0, 1) from the caller's random source."""
        self.busy += 1
        if self.busy_since is None:
            self.busy_since = now
        left = self.busy_since + self.wait_s - now
        if left <= 0:
            if self.fallback:
                self.tier = "standard"
            return None
        return min(backoff_s(self.busy, FLEX_BACKOFF, jitter), left)

    @property
    def fell_back(self) -> bool:
        return self.tier == "standard"
