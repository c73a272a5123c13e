"""Which budgets an episode's calls are held against: its own (``budget_usd`` of its request)
and its owner's for today (``service.daily_budget_usd``), of which the ledger says how much is
gone, so the daily budget holds across restarts.

A day is a UTC day. An owner's budget for today is read from the ledger once, then kept here as
calls settle; a new day starts a new one.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from pipelines.budget import Budget
from pipelines.episode_state import EpisodeRecord

DAY_S = 86_400


def day_start(now: float) -> float:
    """The start of the UTC day ``now`` (epoch seconds) is in."""
    return now - now % DAY_S


class Spending:
    def __init__(self, daily_usd: float | None,
                 spent_since: Callable[[str, float], Awaitable[float]] | None,
                 clock: Callable[[], float] = time.time) -> None:
        """``spent_since(owner, when)``: what the ledger says the owner spent since then
        (None: no ledger, so a day starts with nothing spent)."""
        self.daily_usd = daily_usd
        self._spent_since = spent_since
        self._clock = clock
        self._days: dict[str, tuple[float, Budget]] = {}  # owner: (its day's start, budget)

    async def budgets(self, record: EpisodeRecord) -> list[Budget]:
        """The budgets the episode's calls hold against; its own starts from what its nodes
        have cost so far (an episode taken up again has spent some)."""
        held: list[Budget] = []
        if record.request.budget_usd is not None:
            held.append(Budget(record.request.budget_usd, record.cost_usd))
        today = await self.today(record.owner)
        if today is not None:
            held.append(today)
        return held

    async def today(self, owner: str) -> Budget | None:
        """The owner's budget for today (None when there is no daily budget)."""
        if self.daily_usd is None:
            return None
        start = day_start(self._clock())
        kept = self._days.get(owner)
        if kept is None or kept[0] != start:
            spent = await self._spent_since(owner, start) if self._spent_since else 0.0
            kept = self._days.get(owner)
            if kept is None or kept[0] != start:  # (not made by another caller meanwhile)
                kept = self._days[owner] = (start, Budget(
                    self.daily_usd, spent, code="daily_budget_exceeded",
                    name="this API key's daily budget"))
        return kept[1]

    def resets_at(self) -> float:
        """When today's budgets start again: the next UTC midnight."""
        return day_start(self._clock()) + DAY_S
