"""The limiter under a fake clock: rate, burst, fairness, cancellation, the shared pause."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.limiter import Limits, Permit, RateLimiter
from tests.fakes import FakeClock, settle


class Held:
    """A permit a task holds inside ``async with`` until the test lets go of it."""

    def __init__(self, permit: Permit) -> None:
        self.permit = permit
        self.gone = asyncio.Event()

    def let_go(self, used_tokens: int | None = None) -> None:
        self.permit.settle(used_tokens)
        self.gone.set()


class Recorder:
    """Starts acquirers as tasks and records (time, key, index) of each grant."""

    def __init__(self, limiter: RateLimiter, clock: FakeClock) -> None:
        self.limiter = limiter
        self.clock = clock
        self.grants: list[tuple[float, str, int]] = []
        self.held: list[Held] = []
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, key: str, index: int = 0, tokens: int = 0) -> asyncio.Task[None]:
        async def run() -> None:
            async with self.limiter.permit(key, tokens) as permit:
                self.grants.append((self.clock.now(), key, index))
                held = Held(permit)
                self.held.append(held)
                await held.gone.wait()

        task = asyncio.create_task(run())
        self.tasks.append(task)
        return task


async def test_burst_is_one_second_of_quota_then_steady_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Limits(rpm=600), clock)  # 10 per second
    rec = Recorder(limiter, clock)
    for i in range(30):
        rec.start("ep", i)
    await settle()
    assert len(rec.grants) == 10
    clock.advance(0.1)
    await settle()
    assert len(rec.grants) == 11
    clock.advance(0.95)
    await settle()
    assert len(rec.grants) == 20  # 10 per second after the burst, never a second burst
    assert [i for _, _, i in rec.grants] == list(range(20))  # FIFO within one key


async def test_a_limiter_started_empty_has_no_burst_only_the_rate() -> None:
    """What a restarted provider actor gets: the one before may have spent this second."""
    clock = FakeClock()
    limiter = RateLimiter(Limits(rpm=600, tpm=60_000, start_empty=True), clock)
    rec = Recorder(limiter, clock)
    for i in range(30):
        rec.start("ep", i, tokens=10)
    await settle()
    assert rec.grants == []
    clock.advance(0.1)
    await settle()
    assert len(rec.grants) == 1
    clock.advance(1.0)
    await settle()
    assert len(rec.grants) == 11  # 10 a second from the start, never a burst


async def test_a_larger_burst_setting_allows_a_larger_first_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Limits(rpm=600, burst_s=3.0), clock)
    rec = Recorder(limiter, clock)
    for i in range(50):
        rec.start("ep", i)
    await settle()
    assert len(rec.grants) == 30


async def test_a_reserve_keeps_part_of_the_burst_back_but_not_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Limits(rpm=6000, reserve=0.1), clock)  # 100/s, 90 of burst
    rec = Recorder(limiter, clock)
    for i in range(300):
        rec.start("ep", i)
    await settle()
    assert len(rec.grants) == 90
    for _ in range(10):
        clock.advance(0.1)
        await settle()
    assert len(rec.grants) == 190  # the full rate once the burst is spent


async def test_below_one_unit_per_burst_the_reserve_is_kept_in_time() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Limits(rpm=30, reserve=0.1), clock)  # 0.5/s: a bucket of one
    assert limiter._requests is not None
    assert limiter._requests.capacity == 1
    assert 1 / limiter._requests.rate == pytest.approx(2.0 + 0.1)  # 100 ms later each time


async def test_round_robin_across_episodes_so_a_short_one_is_not_starved() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Limits(rpm=60, burst_s=1.0), clock)  # one per second, capacity 1
    rec = Recorder(limiter, clock)
    for i in range(20):
        rec.start("long", i)
    await settle()
    for i in range(3):
        rec.start("short", i)
    await settle()
    for _ in range(8):
        clock.advance(1.0)
        await settle()
    order = [key for _, key, _ in rec.grants]
    # One "long" went at once and "long" had the next turn when "short" arrived; then they
    # alternate, so the short episode is done after six grants, not after twenty.
    assert order[:7] == ["long", "long", "short", "long", "short", "long", "short"]
    assert [i for _, k, i in rec.grants if k == "short"] == [0, 1, 2]


async def test_max_inflight_caps_concurrency_without_a_rate_limit() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Limits(max_inflight=2), clock)
    rec = Recorder(limiter, clock)
    for i in range(4):
        rec.start("ep", i)
    await settle()
    assert len(rec.grants) == 2 and limiter.inflight == 2
    rec.held[0].let_go()
    await settle()
    assert len(rec.grants) == 3 and limiter.inflight == 2
    rec.tasks[3].cancel()  # a waiter cancelled while waiting takes no slot
    await settle()
    rec.held[1].let_go()
    await settle()
    assert len(rec.grants) == 3 and limiter.inflight == 1


async def test_a_permit_is_given_back_however_its_block_is_left() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Limits(rpm=6000, tpm=6000, max_inflight=5), clock)  # 100 of each
    with pytest.raises(RuntimeError):
        async with limiter.permit("ep", 40):
            raise RuntimeError("the call broke")
    holder = Recorder(limiter, clock).start("ep", tokens=40)
    await settle()
    assert limiter.inflight == 1
    holder.cancel()  # cancelled mid-flight, with the slot held
    await settle()
    assert limiter.inflight == 0
    # Both left without a word kept their estimates; a failed attempt gives its tokens back.
    assert limiter._tokens is not None and limiter._tokens.level == pytest.approx(20)
    async with limiter.permit("ep", 10) as permit:
        permit.failed(counted=False)
    assert limiter._tokens.level == pytest.approx(20)
    assert limiter._requests is not None and limiter._requests.level == pytest.approx(98)


async def test_cancelled_waiter_leaves_the_queue_and_consumes_nothing() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Limits(rpm=60, tpm=6000), clock)  # 1 request/s, 100 tokens/s
    rec = Recorder(limiter, clock)
    rec.start("a", 0, tokens=10)
    await settle()
    assert len(rec.grants) == 1
    doomed = rec.start("b", 0, tokens=50)
    rec.start("c", 0, tokens=10)
    await settle()
    assert limiter.waiting == 2
    doomed.cancel()
    await settle()
    assert limiter.waiting == 1
    clock.advance(1.0)
    await settle()
    assert [k for _, k, _ in rec.grants] == ["a", "c"]
    # Only a's and c's tokens were taken: 100 capacity - 10 - 10 + 100 refill, capped at 100.
    assert limiter._tokens is not None and limiter._tokens.level == pytest.approx(90)


async def test_a_429_pauses_every_caller_then_resumes_at_rate_not_in_a_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Limits(rpm=600), clock)
    rec = Recorder(limiter, clock)
    limiter.pause(2.0)
    for i in range(5):
        rec.start(f"ep{i}", i)
    await settle()
    clock.advance(1.9)
    await settle()
    assert rec.grants == []
    clock.advance(0.1)
    await settle()
    assert len(rec.grants) <= 1
    clock.advance(0.3)
    await settle()
    assert len(rec.grants) == 3  # 10 per second after the pause, from an empty bucket
    assert limiter.paused_for == 0


async def test_pause_is_capped() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Limits(rpm=600, max_pause_s=5.0), clock)
    limiter.pause(3600)
    assert limiter.paused_for == pytest.approx(5.0)


async def test_settling_refunds_an_over_estimate_and_charges_an_under_estimate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Limits(tpm=6000), clock)  # capacity 100 tokens
    rec = Recorder(limiter, clock)
    rec.start("ep", 0, tokens=80)
    await settle()
    rec.start("ep", 1, tokens=60)
    await settle()
    assert len(rec.grants) == 1
    rec.held[0].let_go(used_tokens=30)  # 50 refunded: 70 now present
    await settle()
    assert len(rec.grants) == 2
    rec.held[1].let_go(used_tokens=100)  # 40 more than estimated: level goes to -30
    await settle()
    assert limiter._tokens is not None and limiter._tokens.level == pytest.approx(-30)


async def test_a_request_larger_than_the_bucket_waits_for_a_full_bucket_not_forever() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Limits(tpm=600), clock)  # 10 tokens/s, capacity 10
    async with limiter.permit("ep", 5):
        pass
    rec = Recorder(limiter, clock)
    rec.start("ep", 1, tokens=1000)
    await settle()
    assert rec.grants == []
    clock.advance(0.5)
    await settle()
    assert len(rec.grants) == 1


async def test_server_headers_only_tighten() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Limits(rpm=600, tpm=60_000), clock)
    limiter.observe(remaining_requests=8.5)  # within rounding and reordering of our 10: ignored
    assert limiter._requests is not None and limiter._requests.level == 10
    limiter.observe(remaining_requests=2, remaining_tokens=5000)  # someone else uses the key
    assert limiter._requests.level == 2
    limiter.observe(limit_requests=300)  # the server's limit is lower than configured
    assert limiter._requests.rate == pytest.approx(5)
    limiter.observe(limit_requests=10_000, remaining_tokens=50_000)  # never loosens
    assert limiter._requests.rate == pytest.approx(5)
    assert limiter._tokens is not None and limiter._tokens.level == pytest.approx(1000)


async def test_headers_are_carried_forward_from_when_the_request_was_sent() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Limits(rpm=600), clock)  # 10/s, capacity 10
    held = contextlib.AsyncExitStack()
    permits = [await held.enter_async_context(limiter.permit("ep")) for _ in range(10)]
    clock.advance(0.5)  # the answers come back half a second later; 5 refilled meanwhile
    assert limiter._requests is not None
    limiter.observe(permits[-1], remaining_requests=0)  # agrees with us at send time
    limiter.observe(permits[0], remaining_requests=9)  # so does the first (9 sent after it)
    assert limiter._requests.level == pytest.approx(5)
    limiter.observe(permits[0], remaining_requests=3)  # we thought 9: six taken by others
    assert limiter._requests.level == pytest.approx(3 + 5 - 9)
    # Replaying the same disagreement from a later answer does not count it twice.
    limiter.observe(permits[3], remaining_requests=0)
    assert limiter._requests.level == pytest.approx(-1)
    await held.aclose()


async def test_a_much_lower_server_limit_is_adopted_without_a_long_stall() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Limits(rpm=60_000), clock)  # we think 1000/s
    taken, refused = contextlib.AsyncExitStack(), contextlib.AsyncExitStack()
    permits = [await taken.enter_async_context(limiter.permit("ep")) for _ in range(10)]
    permits += [await refused.enter_async_context(limiter.permit("ep")) for _ in range(20)]
    # The server allows 10/s: it took 10 and refused 20, all answered with remaining 0.
    for permit in permits[10:]:
        permit.failed(counted=False)
    await refused.aclose()
    for permit in permits:
        limiter.observe(permit, limit_requests=600, remaining_requests=0)
    assert limiter._requests is not None and limiter._requests.rate == pytest.approx(10)
    # What the server counted is gone; no more: at most about one second at the real rate.
    assert limiter._requests.level >= -limiter._requests.capacity
    await taken.aclose()


@settings(max_examples=60, deadline=None)
@given(
    rpm=st.sampled_from([60, 120, 600, 3000]),
    tpm=st.sampled_from([None, 600, 6000]),
    burst_s=st.sampled_from([0.5, 1.0, 2.0]),
    arrivals=st.lists(
        st.tuples(
            st.floats(0, 5, allow_nan=False),
            st.sampled_from(["a", "b", "c"]),
            st.integers(1, 200),
        ),
        min_size=1,
        max_size=60,
    ),
)
def test_never_over_the_rate_in_any_window(
    rpm: int, tpm: int | None, burst_s: float, arrivals: list[tuple[float, str, int]]
) -> None:
    grants = asyncio.run(_simulate(rpm, tpm, burst_s, sorted(arrivals)))
    request_rate = rpm / 60
    capacity = max(1.0, request_rate * burst_s)
    times = [t for t, _ in grants]
    for i, start in enumerate(times):
        for window in (0.1, 0.5, 1.0, 3.0):
            count = sum(1 for t in times[i:] if t < start + window)
            assert count <= capacity + request_rate * window + 1e-6
            if tpm is not None:
                used = sum(tok for t, tok in grants[i:] if t < start + window)
                token_capacity = max(1.0, tpm / 60 * burst_s)
                # A single request larger than the bucket may go alone once it is full.
                biggest = max(tok for _, tok in grants)
                assert used <= max(token_capacity, biggest) + tpm / 60 * window + 1e-6


async def _simulate(
    rpm: int, tpm: int | None, burst_s: float, arrivals: list[tuple[float, str, int]]
) -> list[tuple[float, int]]:
    clock = FakeClock(start=0.0)
    limiter = RateLimiter(Limits(rpm=rpm, tpm=tpm, burst_s=burst_s), clock)
    grants: list[tuple[float, int]] = []

    async def call(key: str, tokens: int) -> None:
        async with limiter.permit(key, tokens):
            grants.append((clock.now(), tokens))

    async def run_timers_until(deadline: float) -> None:
        # One instant at a time, so each grant is recorded at the moment it was made.
        while (when := clock.next_timer()) is not None and when <= deadline:
            clock.advance(when - clock.now())
            await settle()

    tasks = []
    for at, key, tokens in arrivals:
        await run_timers_until(at)
        clock.advance(at - clock.now())
        tasks.append(asyncio.create_task(call(key, tokens)))
        await settle()
    await run_timers_until(float("inf"))
    assert all(t.done() for t in tasks), "every waiter is served eventually"
    return grants
