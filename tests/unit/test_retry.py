"""Pure retry decisions and header parsing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.retry import (
    RateLimitHeaders,
    RetryPolicy,
    backoff_s,
    parse_duration,
    pause_for,
    should_retry,
)
from pipelines.errors import AuthFailed, ProviderUnavailable, RateLimited


def test_only_retryable_errors_are_retried_and_only_while_attempts_remain() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert should_retry(ProviderUnavailable("x"), 1, policy)
    assert should_retry(RateLimited("x"), 2, policy)
    assert not should_retry(ProviderUnavailable("x"), 3, policy)
    assert not should_retry(AuthFailed("x"), 1, policy)


@given(attempt=st.integers(1, 50), jitter=st.floats(0, 1, exclude_max=True))
def test_backoff_grows_is_capped_and_jittered(attempt: int, jitter: float) -> None:
    policy = RetryPolicy(base_s=0.5, cap_s=8.0)
    step = min(0.5 * 2 ** (attempt - 1), 8.0)
    delay = backoff_s(attempt, policy, jitter)
    assert step * 0.5 <= delay <= step


def test_pause_uses_the_servers_value_or_a_default() -> None:
    policy = RetryPolicy(default_pause_s=1.0)
    assert pause_for(RateLimited("x", retry_after_s=0.2), policy) == 0.2
    assert pause_for(RateLimited("x"), policy) == 1.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("250ms", 0.25), ("1h2m3.5s", 3723.5), ("0s", 0.0),
     ("7.66s", 7.66), ("", None), ("soon", None), ("5x", None), ("1s 2s", None)],
)
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_rate_limit_headers() -> None:
    hints = RateLimitHeaders.parse(
        {
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-remaining-requests": "499",
            "x-ratelimit-reset-requests": "120ms",
            "x-ratelimit-remaining-tokens": "garbage",
        }
    )
    assert hints.limit_requests == 500 and hints.remaining_requests == 499
    assert hints.reset_requests_s == pytest.approx(0.12)
    assert hints.remaining_tokens is None and hints.limit_tokens is None
