"""The server's buckets on a fake clock: burst, refill, refusals that take nothing, headers."""

from __future__ import annotations

import pytest

from local_server.ratelimit import Bucket, EndpointLimits, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_the_burst_is_burst_s_of_quota(clock: FakeClock) -> None:
    limits = EndpointLimits(rpm=600, tpm=None, burst_s=1.0, clock=clock)  # 10 a second
    assert [limits.admit(1).admitted for _ in range(11)] == [True] * 10 + [False]
    wide = EndpointLimits(rpm=600, tpm=None, burst_s=3.0, clock=clock)
    assert sum(wide.admit(1).admitted for _ in range(40)) == 30


def test_60000_rpm_is_enforced_as_1000_a_second(clock: FakeClock) -> None:
    limits = EndpointLimits(rpm=60_000, tpm=None, burst_s=1.0, clock=clock)
    assert sum(limits.admit(1).admitted for _ in range(5000)) == 1000


def test_buckets_refill_continuously_up_to_capacity(clock: FakeClock) -> None:
    limits = EndpointLimits(rpm=600, tpm=None, burst_s=1.0, clock=clock)
    while limits.admit(1).admitted:
        pass
    clock.advance(0.25)  # 2.5 requests' worth
    assert [limits.admit(1).admitted for _ in range(3)] == [True, True, False]
    clock.advance(3600)  # an idle hour refills to the burst, not beyond
    assert sum(limits.admit(1).admitted for _ in range(50)) == 10


def test_a_refusal_consumes_nothing(clock: FakeClock) -> None:
    limits = EndpointLimits(rpm=600, tpm=6000, burst_s=1.0, clock=clock)  # 10 req, 100 tok
    assert limits.admit(95).admitted
    before = limits.headers()
    refused = limits.admit(50)  # the request bucket has room, the token bucket has not
    assert not refused.admitted and refused.kind == "tokens"
    assert limits.headers() == before  # neither bucket was charged
    assert before["x-ratelimit-remaining-requests"] == "9"
    assert before["x-ratelimit-remaining-tokens"] == "5"


def test_retry_after_is_the_time_until_the_request_fits(clock: FakeClock) -> None:
    limits = EndpointLimits(rpm=600, tpm=6000, burst_s=1.0, clock=clock)  # 100 tokens/s
    assert limits.admit(80).admitted
    refused = limits.admit(50)  # 20 left, 30 missing at 100 a second
    assert refused.retry_after_s == pytest.approx(0.3)
    assert (refused.kind, refused.limit, refused.requested) == ("tokens", 6000, 50)
    clock.advance(0.29)
    assert not limits.admit(50).admitted
    clock.advance(0.011)
    assert limits.admit(50).admitted


def test_the_longest_wait_decides_the_kind(clock: FakeClock) -> None:
    limits = EndpointLimits(rpm=60, tpm=600, burst_s=1.0, clock=clock)  # 1 req/s, 10 tok/s
    assert limits.admit(10).admitted
    refused = limits.admit(10)  # requests: 1 s away; tokens: 1 s away too -> either, 1 s
    assert refused.retry_after_s == pytest.approx(1.0)
    clock.advance(0.5)
    refused = limits.admit(10)  # requests 0.5 s away, tokens 0.5 s away
    assert refused.retry_after_s == pytest.approx(0.5)
    assert limits.admit(1).retry_after_s == pytest.approx(0.5)  # still the request bucket
    assert limits.admit(1).kind == "requests"


def test_a_request_over_capacity_waits_for_a_full_bucket_then_leaves_a_debt(
    clock: FakeClock,
) -> None:
    limits = EndpointLimits(rpm=None, tpm=600, burst_s=1.0, clock=clock)  # holds 10 tokens
    assert limits.admit(4).admitted
    refused = limits.admit(25)
    assert refused.retry_after_s == pytest.approx(0.4)  # until full, not until 25 fit
    clock.advance(0.4)
    assert limits.admit(25).admitted  # full: admitted, 15 in debt
    debt = limits.admit(1)
    assert not debt.admitted and debt.retry_after_s == pytest.approx(1.6)
    assert limits.headers()["x-ratelimit-remaining-tokens"] == "0"


def test_no_limit_no_headers(clock: FakeClock) -> None:
    limits = EndpointLimits(rpm=None, tpm=None, burst_s=1.0, clock=clock)
    assert all(limits.admit(10**9).admitted for _ in range(100))
    assert limits.headers() == {}
    only_requests = EndpointLimits(rpm=100, tpm=None, burst_s=1.0, clock=clock)
    assert set(only_requests.headers()) == {"x-ratelimit-limit-requests",
                                            "x-ratelimit-remaining-requests",
                                            "x-ratelimit-reset-requests"}


def test_headers_report_limit_remaining_and_time_to_full(clock: FakeClock) -> None:
    limits = EndpointLimits(rpm=600, tpm=360_000, burst_s=1.0, clock=clock)  # 6,000 tok/s
    assert limits.admit(1500).admitted
    headers = limits.headers()
    assert headers == {
        "x-ratelimit-limit-requests": "600",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "100ms",
        "x-ratelimit-limit-tokens": "360000",
        "x-ratelimit-remaining-tokens": "4500",
        "x-ratelimit-reset-tokens": "250ms",
    }


def test_a_slow_limit_still_admits_one(clock: FakeClock) -> None:
    bucket = Bucket(per_minute=6, burst_s=1.0, clock=clock)  # 0.1 a second
    assert bucket.capacity == 1.0 and bucket.shortfall_s(1) == 0
    bucket.take(1)
    assert bucket.shortfall_s(1) == pytest.approx(10.0)
    assert format_duration(bucket.reset_s()) == "10s"


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0ms"), (0.0004, "1ms"), (0.25, "250ms"), (0.9999, "1s"), (1, "1s"), (1.5, "1.5s"),
    (59.999, "59.999s"), (60, "1m0s"), (360, "6m0s"), (3723.5, "1h2m3.5s"), (7200, "2h0m0s"),
])
def test_reset_durations_look_like_openais(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
