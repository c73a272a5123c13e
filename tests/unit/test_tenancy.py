"""The service's rules for tenants, and its desk: idempotency keys and quotas."""

from __future__ import annotations

import asyncio
import pickle
from types import SimpleNamespace

import pytest

from actors.tenant_desk import TenantDesk
from pipelines.models import EpisodeRequest
from pipelines.tenancy import (
    Claim,
    DailyBudget,
    DailyBudgetSpent,
    IdempotencyConflict,
    QuotaExceeded,
    check_quota,
    fingerprint,
)


def requests(*premises: str) -> list[EpisodeRequest]:
    return [EpisodeRequest(premise=p) for p in premises]


def test_a_key_gives_back_what_it_made_and_refuses_other_episodes() -> None:
    claim = Claim(fingerprint(requests("a", "b")), ("e1", "e2"))
    assert claim.replay(requests("a", "b")) == ["e1", "e2"]
    for other in (requests("a"), requests("a", "c"), requests("a", "b", "c")):
        with pytest.raises(IdempotencyConflict):
            claim.replay(other)


def test_quotas_count_what_is_unfinished_and_what_is_added() -> None:
    check_quota(2, 1, max_active=3)
    with pytest.raises(QuotaExceeded, match="2 episodes are queued or running"):
        check_quota(2, 2, max_active=3)
    check_quota(0, 3, max_active=3)
    check_quota(100, 100, max_active=None)
    check_quota(5, 0, max_active=3)  # a replay adds nothing


class RoundTrip:
    """The coordinator as the desk sees it across Ray: it takes the episodes at once, and its
    answer arrives a moment later (a stand-in for the network, which a unit test has none of).
    It keeps owners and claims as the real one does in its store."""

    def __init__(self) -> None:
        self.taken: list[list[str]] = []
        self.owners: dict[str, str] = {}
        self.claims: dict[str, Claim] = {}
        self.arrived = asyncio.Event()
        self.budgets: dict[str, DailyBudget] = {}

    async def submit_many(self, requests: list[EpisodeRequest], *, ids: list[str] | None = None,
                          owner: str = "", claim_key: str | None = None
                          ) -> list[SimpleNamespace]:
        if owner in self.budgets:  # as the coordinator checks its owner's day
            self.budgets[owner].check()
        made = ids or [f"e{len(self.taken)}-{i}" for i in range(len(requests))]
        self.taken.append(made)
        self.owners.update(dict.fromkeys(made, owner))
        if claim_key is not None:
            self.claims[claim_key] = Claim(fingerprint(requests), tuple(made))
        self.arrived.set()
        await asyncio.sleep(0.05)
        return await self.views(made)

    async def claimed(self, claim_key: str) -> Claim | None:
        return self.claims.get(claim_key)

    async def unfinished_count(self, owner: str) -> int:
        return sum(1 for o in self.owners.values() if o == owner)

    async def views(self, episode_ids: list[str]) -> list[SimpleNamespace]:
        return [SimpleNamespace(id=i) for i in episode_ids]  # all the desk reads of a view


async def test_a_submission_whose_caller_went_away_is_still_booked() -> None:
    coordinator = RoundTrip()
    desk = TenantDesk(coordinator)  # type: ignore[arg-type]
    first = asyncio.create_task(desk.submit("t1", requests("a"), idempotency_key="k",
                                            max_active=5))
    await coordinator.arrived.wait()
    first.cancel()  # the client timed out while the answer was on its way
    with pytest.raises(asyncio.CancelledError):
        await first
    again = await desk.submit("t1", requests("a"), idempotency_key="k", max_active=5)
    assert coordinator.taken == [[v.id for v in again]]  # the retry got the episode made once
    with pytest.raises(QuotaExceeded):  # and it counts against the quota
        await desk.submit("t1", requests(*"bcdef"), max_active=5)


async def test_a_spent_daily_budget_refuses_new_work_until_it_resets_but_replays_a_key() -> None:
    coordinator = RoundTrip()
    desk = TenantDesk(coordinator)  # type: ignore[arg-type]
    await desk.submit("t1", requests("a"), idempotency_key="k")
    resets = 1_800_000_000.0
    coordinator.budgets["t1"] = DailyBudget(limit_usd=1.0, spent_usd=0.75, held_usd=0.25,
                                            resets_at=resets)
    with pytest.raises(DailyBudgetSpent) as spent:
        await desk.submit("t1", requests("b"))
    assert spent.value.resets_at == resets
    assert "$1.00" in str(spent.value) and "2027-01-15T08:00:00Z" in str(spent.value)
    assert pickle.loads(pickle.dumps(spent.value)).resets_at == resets  # it crosses Ray
    again = await desk.submit("t1", requests("a"), idempotency_key="k")  # a replay costs nothing
    assert [v.id for v in again] == coordinator.taken[0]
    coordinator.budgets["t1"] = DailyBudget(1.0, 0.5, 0.25, resets)  # some left: taken
    await desk.submit("t1", requests("c"))
    assert len(coordinator.taken) == 2
