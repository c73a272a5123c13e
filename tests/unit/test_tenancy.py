"""The service's book of tenants' episodes: order, idempotency keys and quotas."""

from __future__ import annotations

import pytest

from pipelines.models import EpisodeRequest
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
