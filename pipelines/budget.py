"""Budgets that hold: what a call may cost is held before it is sent, and settled with what it
did cost once it is answered, so what is spent never passes the budget, however many calls run
at once (a card payment's authorise, then capture).

What a call may cost is bounded from above: a chat call's prompt by its bytes (a token is at
least one byte) and its answer by its ``max_tokens``; speech by its characters, a picture as
one, a clip by its seconds. A call that would pass the budget is not sent.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pipelines.errors import BudgetExceeded
from pipelines.settings import Prices

# Output tokens held for a chat call that sets no ``max_tokens`` (the runners always set one).
UNBOUNDED_OUTPUT_TOKENS = 4096


class Budget:
    """Money that may be spent: ``limit_usd``, of which ``spent_usd`` is gone and ``held_usd``
    is held by calls in flight. ``code`` and ``name`` say which budget, in the error."""

    def __init__(self, limit_usd: float, spent_usd: float = 0.0, *,
                 code: str = "budget_exceeded", name: str = "the episode's budget") -> None:
        self.limit_usd = limit_usd
        self.spent_usd = spent_usd
        self.held_usd = 0.0
        self.code = code
        self.name = name

    def check(self, usd: float) -> None:
        """Raise ``BudgetExceeded`` if ``usd`` more could pass the budget."""
        if self.spent_usd + self.held_usd + usd > self.limit_usd + 1e-12:
            raise BudgetExceeded(
                f"{self.code}: a call that may cost ${usd:.4f} would pass {self.name} of "
                f"${self.limit_usd:.4f}: ${self.spent_usd:.4f} spent, ${self.held_usd:.4f} "
                "held by calls in flight", code=self.code)

    def hold(self, usd: float) -> None:
        self.check(usd)
        self.held_usd += usd

    def settle(self, held_usd: float, cost_usd: float) -> None:
        """A call that held ``held_usd`` is over and cost ``cost_usd`` (0 if it failed)."""
        self.held_usd -= held_usd
        if self.held_usd < 1e-12:  # nothing held: not a float's remainder of it
            self.held_usd = 0.0
        self.spent_usd += cost_usd


def hold_all(budgets: Sequence[Budget], usd: float) -> None:
    """Hold ``usd`` in every budget, or in none (raising the first that refuses)."""
    for budget in budgets:
        budget.check(usd)
    for budget in budgets:
        budget.hold(usd)


def settle_all(budgets: Sequence[Budget], held_usd: float, cost_usd: float) -> None:
    for budget in budgets:
        budget.settle(held_usd, cost_usd)


# -- what a call may cost, at most -------------------------------------------------------------


def chat_ceiling(prices: Prices, messages: list[dict[str, Any]], max_tokens: int | None) -> float:
    prompt_tokens = len(json.dumps(messages, ensure_ascii=False).encode())
    output_tokens = max_tokens if max_tokens is not None else UNBOUNDED_OUTPUT_TOKENS
    return (prompt_tokens * prices.input_per_1m_tokens
            + output_tokens * prices.output_per_1m_tokens) / 1e6


def speech_ceiling(prices: Prices, text: str) -> float:
    return len(text) * prices.per_1m_speech_chars / 1e6


def image_ceiling(prices: Prices) -> float:
    return prices.per_image


def clip_ceiling(prices: Prices, seconds: str) -> float:
    return float(seconds) * prices.per_video_second
