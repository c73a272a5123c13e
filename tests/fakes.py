"""Test doubles shared by the unit tests: a clock that moves only when told."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable


class _Handle:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """``now()`` and ``call_later()`` for the limiter; ``advance()`` fires timers in order."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start
        self._timers: list[tuple[float, int, _Handle]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self.t

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Handle:
        handle = _Handle(self.t + max(delay, 0.0), callback)
        heapq.heappush(self._timers, (handle.when, next(self._seq), handle))
        return handle

    def next_timer(self) -> float | None:
        """When the earliest pending timer fires (None if there is none)."""
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def advance(self, seconds: float) -> None:
        target = self.t + seconds
        while self._timers and self._timers[0][0] <= target:
            when, _, handle = heapq.heappop(self._timers)
            if not handle.cancelled:
                self.t = max(self.t, when)
                handle.callback()
        self.t = target


async def settle(rounds: int = 5) -> None:
    """Let woken tasks run; they resume only when the loop gets control."""
    for _ in range(rounds):
        await asyncio.sleep(0)
