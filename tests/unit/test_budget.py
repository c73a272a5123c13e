"""Budgets that hold: calls in flight hold what they may cost, so spend never passes the limit;
an owner's day starts from what the ledger says it spent; the same request draws the same
seeds."""

from __future__ import annotations

import pytest

from actors.spending import DAY_S, Spending, day_start
from pipelines import budget
from pipelines.budget import Budget
from pipelines.episode_state import EpisodeRecord
from pipelines.errors import BudgetExceeded
from pipelines.models import EpisodeRequest, with_seeds
from pipelines.settings import Prices

PRICES = Prices(input_per_1m_tokens=1_000, output_per_1m_tokens=2_000, per_image=0.04,
                per_1m_speech_chars=15, per_video_second=0.1)


def test_calls_in_flight_hold_their_ceiling_so_spend_never_passes_the_limit() -> None:
    episode = Budget(1.0)
    budget.hold_all([episode], 0.4)
    budget.hold_all([episode], 0.4)
    with pytest.raises(BudgetExceeded) as refused:  # 0.8 held: a third could pass 1.0
        budget.hold_all([episode], 0.4)
    assert refused.value.code == "budget_exceeded"
    message = str(refused.value)
    assert message.startswith("budget_exceeded:") and "$1.0000" in message
    assert "$0.8000 held" in message
    budget.settle_all([episode], 0.4, 0.1)  # it cost less than it held
    budget.hold_all([episode], 0.4)
    assert episode.spent_usd == pytest.approx(0.1) and episode.held_usd == pytest.approx(0.8)
    budget.settle_all([episode], 0.4, 0.0)  # a failed call costs nothing
    budget.settle_all([episode], 0.4, 0.4)
    assert episode.spent_usd == pytest.approx(0.5) and episode.held_usd == pytest.approx(0.0)


def test_a_call_is_held_in_every_budget_or_in_none() -> None:
    episode, daily = Budget(5.0), Budget(1.0, 0.9, code="daily_budget_exceeded")
    with pytest.raises(BudgetExceeded) as refused:
        budget.hold_all([episode, daily], 0.2)
    assert refused.value.code == "daily_budget_exceeded"
    assert episode.held_usd == 0.0  # the episode's budget holds nothing for a call not sent


def test_ceilings_bound_what_a_call_can_cost() -> None:
    messages = [{"role": "user", "content": "héllo"}]
    # A token is at least one byte of the prompt; the answer at most max_tokens.
    prompt_bytes = len(b'[{"role": "user", "content": "h\xc3\xa9llo"}]')
    assert budget.chat_ceiling(PRICES, messages, 100) == pytest.approx(
        (prompt_bytes * 1_000 + 100 * 2_000) / 1e6)
    assert budget.chat_ceiling(PRICES, messages, None) > budget.chat_ceiling(PRICES, messages,
                                                                             100)
    assert budget.speech_ceiling(PRICES, "x" * 1000) == pytest.approx(0.015)
    assert budget.image_ceiling(PRICES) == 0.04
    assert budget.clip_ceiling(PRICES, "4") == pytest.approx(0.4)


async def test_an_owners_day_starts_from_the_ledger_and_a_new_day_starts_again() -> None:
    now = [day_start(1_800_000_000.0) + 3600]
    asked: list[tuple[str, float]] = []

    async def spent_since(owner: str, since: float) -> float:
        asked.append((owner, since))
        return 0.75

    spending = Spending(1.0, spent_since, clock=lambda: now[0])
    today = await spending.today("t1")
    assert today is not None and today.spent_usd == 0.75 and today.code == "daily_budget_exceeded"
    assert await spending.today("t1") is today and len(asked) == 1  # read once a day
    assert asked == [("t1", day_start(now[0]))]
    assert spending.resets_at() == day_start(now[0]) + DAY_S
    now[0] += DAY_S
    assert await spending.today("t1") is not today and len(asked) == 2
    record = EpisodeRecord(id="e", owner="t1", arrival=1, submitted_at=0.0,
                           request=EpisodeRequest(premise="A premise.", budget_usd=2.0))
    episode, daily = await spending.budgets(record)
    assert episode.limit_usd == 2.0 and daily.limit_usd == 1.0
    assert [b.limit_usd for b in await Spending(None, spent_since).budgets(record)] == [2.0]
    assert await Spending(None, spent_since).today("t1") is None


def test_the_same_request_draws_the_same_seeds_and_alike_ones_in_a_batch_differ() -> None:
    a, b = EpisodeRequest(premise="A heist."), EpisodeRequest(premise="A wedding.")
    first = with_seeds([a, a, b])
    assert [r.seed for r in first] == [r.seed for r in with_seeds([a, a, b])]
    assert first[0].seed != first[1].seed  # two alike in one run stay two episodes
    assert with_seeds([a])[0].seed == first[0].seed  # asked alone again: the same seed
    given = EpisodeRequest(premise="A heist.", seed=7)
    assert with_seeds([given]) == [given]
    assert all(r.model_copy(update={"seed": None}) == o for r, o in zip(first, [a, a, b],
                                                                        strict=True))
