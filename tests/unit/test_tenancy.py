"""The service's book of tenants' episodes, and its desk: order, idempotency keys, quotas."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from actors.tenant_desk import TenantDesk
from pipelines.models import EpisodeRequest, EpisodeStatus
from pipelines.tenancy import IdempotencyConflict, QuotaExceeded, TenantBook


def requests(*premises: str) -> list[EpisodeRequest]:
    return [EpisodeRequest(premise=p) for p in premises]


def test_a_key_gives_back_what_it_made_and_refuses_other_episodes() -> None:
    book = TenantBook()
    assert book.replay("k1", requests("a")) is None  # not used yet
    book.add("t1", ["e1", "e2"], "k1", requests("a", "b"))
    assert book.replay("k1", requests("a", "b")) == ["e1", "e2"]
    for other in (requests("a"), requests("a", "c"), requests("a", "b", "c")):
        with pytest.raises(IdempotencyConflict):
            book.replay("k1", other)
    assert book.replay(None, requests("a")) is None  # no key: always a new request


def test_quotas_count_only_what_has_not_finished() -> None:
    book = TenantBook()
    book.add("t1", ["e1", "e2"], None, requests("a", "b"))
    book.check_quota("t1", 1, max_active=3)
    with pytest.raises(QuotaExceeded, match="2 episodes are queued or running"):
        book.check_quota("t1", 2, max_active=3)
    book.check_quota("t2", 3, max_active=3)  # another tenant counts its own
    book.finished("t1", ["e1"])
    assert book.unfinished("t1") == ["e2"]
    book.check_quota("t1", 2, max_active=3)
    book.check_quota("t1", 100, max_active=None)


def test_pages_follow_submission_order_per_tenant() -> None:
    book = TenantBook()
    book.add("t1", ["a1"], None, requests("a"))
    book.add("t2", ["b1"], None, requests("b"))
    book.add("t1", ["a2", "a3"], None, requests("c", "d"))
    mine = book.after("t1", 0)
    assert [i for _, i in mine] == ["a1", "a2", "a3"]
    assert [i for _, i in book.after("t1", mine[0][0])] == ["a2", "a3"]
    assert book.after("t3", 0) == []


class RoundTrip:
    """The coordinator as the desk sees it across Ray: it takes the episodes at once, and its
    answer arrives a moment later (a stand-in for the network, which a unit test has none of)."""

    def __init__(self) -> None:
        self.taken: list[list[str]] = []
        self.arrived = asyncio.Event()

    async def submit_many(self, requests: list[EpisodeRequest], *, ids: list[str] | None = None,
                          owner: str = "") -> list[SimpleNamespace]:
        made = ids or [f"e{len(self.taken)}-{i}" for i in range(len(requests))]
        self.taken.append(made)
        self.arrived.set()
        await asyncio.sleep(0.05)
        return await self.views(made)

    async def statuses(self, episode_ids: list[str]) -> list[EpisodeStatus | None]:
        return [EpisodeStatus.RUNNING for _ in episode_ids]

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
