"""The client-side rate limiter of one provider deployment: pure asyncio, no Ray, any clock.

Why it is shaped this way:
- Two token buckets (requests, tokens), refilled continuously, each holding ``burst_s`` seconds of
  quota. Providers enforce per-minute limits over shorter windows (60,000 RPM as 1,000 per second),
  so a bucket that lets a whole minute's quota out at once earns 429s.
- A token cost is an estimate made before the call (prompt plus requested output); the permit is
  settled with the real usage afterwards, refunding or charging the difference.
- Headers from the server only ever tighten the buckets: the server knows about other clients of
  the same key, we do not.
- A 429 pauses *every* caller for the time the server asked, and empties the request bucket so
  traffic resumes at the steady rate rather than with a burst.
- Waiters are served round-robin across keys (episode ids), FIFO within a key, so a 200-scene
  episode cannot starve a 3-scene one. The head of the round-robin waits even when a smaller
  request behind it would fit: that is what keeps large requests from starving.
- A cancelled waiter leaves the queue and consumes nothing. A permit is only ever held inside
  ``async with limiter.permit(...)``, so no path can keep its slot.

The clock is the only outside dependency: ``now()`` and ``call_later()``; tests move a fake one.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

_EPSILON = 1e-9
_HEADER_TOLERANCE = 2.0


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Time for the limiter: monotonic seconds and a way to be called back later."""

    def now(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle: ...


class LoopClock:
    """The running event loop's monotonic clock."""

    def now(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(delay, callback)


@dataclass(frozen=True)
class Limits:
    """What one deployment allows. ``None`` means no limit of that kind."""

    rpm: float | None = None
    tpm: float | None = None
    max_inflight: int | None = None
    burst_s: float = 1.0
    max_pause_s: float = 120.0
    # A share of the burst never spent, so that requests reordered on their way to the server
    # (connections differ in speed) find its bucket holding the tokens they were granted here.
    reserve: float = 0.0
    # Start with empty buckets rather than a second's burst: a limiter that replaces one which
    # may have spent this second's quota just now (a restarted provider actor) must not spend
    # it again.
    start_empty: bool = False


class TokenBucket:
    """Continuously refilled; the level may go negative when a permit is settled above estimate."""

    def __init__(self, per_second: float, burst_s: float, now: float, reserve: float = 0.0,
                 empty: bool = False) -> None:
        self.reserve = reserve
        self.rate, self.capacity = self._shape(per_second, burst_s)
        self.level = 0.0 if empty else self.capacity
        self._updated = now
        # Net amount ever taken (takes minus refunds): lets a server's old answer be replayed
        # against what we sent after it (see ``RateLimiter.observe``).
        self.debited = 0.0

    def refill(self, now: float) -> None:
        if now > self._updated:
            self.level = min(self.capacity, self.level + (now - self._updated) * self.rate)
            self._updated = now

    def fits(self, amount: float) -> float:
        """The amount that must be present to admit ``amount`` (a huge one needs a full bucket)."""
        return min(amount, self.capacity)

    def seconds_until(self, amount: float, now: float) -> float:
        self.refill(now)
        missing = self.fits(amount) - self.level
        return 0.0 if missing <= _EPSILON else missing / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount
        self.debited += amount

    def give(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)
        self.debited -= amount

    def tighten_to(self, remaining: float, since: float, debited_since: float, now: float,
                   tolerance: float) -> None:
        """Lower the level to what the server implies: ``remaining`` as of ``since``, plus the
        refill from then, minus what we took after. Absolute, so replaying several answers
        never counts one disagreement twice."""
        self.refill(now)
        implied = min(self.capacity, remaining + (now - since) * self.rate - debited_since)
        if implied < self.level - tolerance:
            self.level = implied

    def retune(self, per_second: float, burst_s: float) -> None:
        self.rate, self.capacity = self._shape(per_second, burst_s)
        self.level = min(self.level, self.capacity)

    def _shape(self, per_second: float, burst_s: float) -> tuple[float, float]:
        """The refill rate and capacity that keep ``reserve`` of the burst back.

        A bucket holds at least one whole unit, or a limit under one per burst could never admit
        anything. Such a bucket cannot hold part of a unit back, so the reserve is kept in time
        instead: each unit comes ``reserve * burst_s`` seconds later than the limit allows.
        """
        capacity = per_second * burst_s * (1.0 - self.reserve)
        if capacity >= 1.0:
            return per_second, capacity
        return per_second / (1.0 + per_second * self.reserve * burst_s), 1.0


class Permit:
    """The right to send one request, held inside ``async with limiter.permit(...)``.

    Before leaving the block, say how the attempt went: ``settle`` with the real token usage
    after an answer, ``failed`` after an error. A block left without either (cancelled
    mid-flight) keeps the estimate: the server may have charged it.
    """

    __slots__ = ("key", "tokens", "granted_at", "debited", "used_tokens", "counted")

    def __init__(self, key: str, tokens: int, granted_at: float,
                 debited: tuple[float, float]) -> None:
        self.key = key
        self.tokens = tokens
        # When it was granted and the buckets' net debits just after: the server's answer to
        # this request describes the buckets as they were then.
        self.granted_at = granted_at
        self.debited = debited
        self.used_tokens: int | None = None  # None: as estimated
        self.counted = True

    def settle(self, used_tokens: int | None) -> None:
        """The answer came back; it used ``used_tokens`` (None: as estimated)."""
        self.used_tokens = used_tokens

    def failed(self, *, counted: bool) -> None:
        """The attempt failed, so it used no tokens. ``counted=False``: the server did not count
        the request either (it refused it with a 429, or never saw it), so its request unit is
        given back too."""
        self.used_tokens, self.counted = 0, counted


class _Waiter:
    __slots__ = ("key", "tokens", "future")

    def __init__(self, key: str, tokens: int, future: asyncio.Future[Permit]) -> None:
        self.key = key
        self.tokens = tokens
        self.future = future


class RateLimiter:
    """Paces calls to one deployment under its request, token and concurrency limits."""

    def __init__(self, limits: Limits, clock: Clock | None = None) -> None:
        self.limits = limits
        self._clock = clock or LoopClock()
        now = self._clock.now()
        self._requests = (
            TokenBucket(limits.rpm / 60, limits.burst_s, now, limits.reserve,
                        limits.start_empty) if limits.rpm else None
        )
        self._tokens = (
            TokenBucket(limits.tpm / 60, limits.burst_s, now, limits.reserve,
                        limits.start_empty) if limits.tpm else None
        )
        self._max_inflight = limits.max_inflight or math.inf
        self.inflight = 0
        self._paused_until = 0.0
        self._queues: dict[str, deque[_Waiter]] = {}
        self._turns: deque[str] = deque()  # keys with waiters, in round-robin order
        self._timer: TimerHandle | None = None
        self._timer_at = math.inf

    # -- public surface -------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def waiting_for(self, key: str) -> int:
        return len(self._queues.get(key, ()))

    @property
    def paused_for(self) -> float:
        return max(0.0, self._paused_until - self._clock.now())

    @contextlib.asynccontextmanager
    async def permit(self, key: str, tokens: int = 0) -> AsyncIterator[Permit]:
        """Wait for a turn to send one request of about ``tokens`` tokens; the slot is given
        back when the block is left, however it is left."""
        permit = await self._acquire(key, tokens)
        try:
            yield permit
        finally:
            self._release(permit)

    async def _acquire(self, key: str, tokens: int) -> Permit:
        if not self._turns and self._try_admit(tokens):
            return self._grant(key, tokens)
        future: asyncio.Future[Permit] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(key, tokens, future)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            self._turns.append(key)
        queue.append(waiter)
        self._dispatch()
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # Granted just as we were cancelled: nothing was sent, so give it all back.
                permit = future.result()
                permit.failed(counted=False)
                self._release(permit)
            else:
                self._forget(waiter)
            raise

    def pause(self, seconds: float) -> None:
        """The server said 429: nobody sends for ``seconds`` (capped), then resume at rate."""
        now = self._clock.now()
        seconds = min(max(seconds, 0.0), self.limits.max_pause_s)
        self._paused_until = max(self._paused_until, now + seconds)
        if self._requests is not None:
            # Empty when the pause ends, not now: what refills during the pause would otherwise
            # go out as one burst the moment it ends and earn the next 429.
            self._requests.refill(now)
            debt = -self._requests.rate * (self._paused_until - now)
            self._requests.level = min(self._requests.level, debt)
        self._dispatch()

    def observe(
        self,
        permit: Permit | None = None,
        *,
        limit_requests: float | None = None,
        remaining_requests: float | None = None,
        limit_tokens: float | None = None,
        remaining_tokens: float | None = None,
    ) -> None:
        """Tighten to what the server reports (``x-ratelimit-*``); never loosen.

        The server counted ``remaining`` when it took the request ``permit`` was granted for;
        the answer arrives a latency later, so it is carried forward: plus the refill since the
        grant, minus what we sent after it. Without a permit it is taken as of now.
        """
        now = self._clock.now()
        for index, (bucket, limit, remaining) in enumerate(
            ((self._requests, limit_requests, remaining_requests),
             (self._tokens, limit_tokens, remaining_tokens))
        ):
            if bucket is None:
                continue
            if limit is not None and 0 < limit / 60 < bucket.rate - _EPSILON:
                bucket.retune(limit / 60, self.limits.burst_s)
            if remaining is None:
                continue
            since, debited = (
                (permit.granted_at, bucket.debited - permit.debited[index])
                if permit is not None else (now, 0.0)
            )
            # The server rounds down and may see concurrent requests in another order: only a
            # gap beyond that means someone else is using the key.
            tolerance = max(_HEADER_TOLERANCE, 0.02 * bucket.capacity)
            bucket.tighten_to(remaining, since, debited, now, tolerance)

    # -- internals ------------------------------------------------------------------------------

    def _try_admit(self, tokens: int) -> bool:
        now = self._clock.now()
        if now < self._paused_until or self.inflight >= self._max_inflight:
            return False
        return self._wait_time(tokens, now) <= 0.0

    def _wait_time(self, tokens: int, now: float) -> float:
        wait = 0.0
        if self._requests is not None:
            wait = self._requests.seconds_until(1, now)
        if self._tokens is not None and tokens > 0:
            wait = max(wait, self._tokens.seconds_until(tokens, now))
        return wait

    def _grant(self, key: str, tokens: int) -> Permit:
        if self._requests is not None:
            self._requests.take(1)
        if self._tokens is not None:
            self._tokens.take(tokens)
        self.inflight += 1
        debited = (
            self._requests.debited if self._requests is not None else 0.0,
            self._tokens.debited if self._tokens is not None else 0.0,
        )
        return Permit(key, tokens, self._clock.now(), debited)

    def _release(self, permit: Permit) -> None:
        self.inflight -= 1
        if not permit.counted and self._requests is not None:
            self._requests.give(1)
        if self._tokens is not None and permit.used_tokens is not None:
            difference = permit.tokens - permit.used_tokens
            if difference > 0:
                self._tokens.give(difference)
            else:
                self._tokens.take(-difference)
        self._dispatch()

    def _forget(self, waiter: _Waiter, dispatch: bool = True) -> None:
        queue = self._queues.get(waiter.key)
        if queue is None:
            return
        try:
            queue.remove(waiter)
        except ValueError:
            return
        if not queue:
            del self._queues[waiter.key]
            self._turns.remove(waiter.key)
        if dispatch:
            self._dispatch()

    def _dispatch(self) -> None:
        """Grant turns in round-robin order while limits allow; else set a timer for the next."""
        while self._turns:
            if self.inflight >= self._max_inflight:
                return  # a release will call us again
            now = self._clock.now()
            if now < self._paused_until:
                self._wake_at(self._paused_until, now)
                return
            key = self._turns[0]
            queue = self._queues[key]
            waiter = queue[0]
            if waiter.future.done():
                # Cancelled, and its task has not yet run to take itself out: skip it.
                self._forget(waiter, dispatch=False)
                continue
            wait = self._wait_time(waiter.tokens, now)
            if wait > 0.0:
                self._wake_at(now + wait, now)
                return
            queue.popleft()
            self._turns.popleft()
            if queue:
                self._turns.append(key)
            else:
                del self._queues[key]
            waiter.future.set_result(self._grant(key, waiter.tokens))

    def _wake_at(self, when: float, now: float) -> None:
        if self._timer is not None and self._timer_at <= when + _EPSILON:
            return  # an earlier wake-up is already set; it will look again
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._clock.call_later(max(0.0, when - now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        self._dispatch()
