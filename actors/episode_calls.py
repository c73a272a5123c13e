"""A provider as one episode's runners call it.

Each call says whose it is (the episode, for the limiter's turns and the ledger; the owner, for
the ledger and the cache's scope) and whether the owner's earlier identical call may answer it.
Before it is sent it holds, in the episode's budget and in its owner's daily budget, the most it
may cost (``pipelines.budget``); once answered it settles what it did cost. A call that could
pass a budget is not sent: it raises ``BudgetExceeded``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from actors.call_results import Attempts, ChatResult, MediaResult
from pipelines import budget
from pipelines.budget import Budget
from pipelines.media_stages import CLIP_SECONDS
from pipelines.settings import Prices

R = TypeVar("R", bound=Attempts)


class Provider(Protocol):
    """What runners need of a provider: a gateway, or the adapter of its Ray actor."""

    async def chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> ChatResult: ...

    async def speech(self, text: str, **kwargs: Any) -> MediaResult: ...

    async def image(self, prompt: str, **kwargs: Any) -> MediaResult: ...

    async def clip(self, prompt: str, **kwargs: Any) -> MediaResult: ...


class EpisodeCalls:
    """One provider, for one episode: ``Provider``'s methods, whose, cached and paid for."""

    def __init__(self, provider: Provider, prices: Prices, *, episode_id: str, owner: str,
                 cache: bool, budgets: Sequence[Budget] = (),
                 tier: Mapping[str, Any] | None = None) -> None:
        """``tier``: how the episode's chat calls go (``tier``, ``flex_wait_s``,
        ``flex_fallback``; see ``ProviderGateway.chat``); none: at standard."""
        self.provider = provider
        self.prices = prices  # (standard prices: a flex call may go on at standard)
        self.budgets = budgets
        self.whose = {"episode_id": episode_id, "owner": owner, "cache": cache}
        self.tier = dict(tier or {})

    async def chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> ChatResult:
        ceiling = budget.chat_ceiling(self.prices, messages, kwargs.get("max_tokens"))
        return await self._paid(ceiling, lambda: self.provider.chat(messages, **self.whose,
                                                                    **self.tier, **kwargs))

    async def speech(self, text: str, **kwargs: Any) -> MediaResult:
        return await self._paid(budget.speech_ceiling(self.prices, text),
                                lambda: self.provider.speech(text, **self.whose, **kwargs))

    async def image(self, prompt: str, **kwargs: Any) -> MediaResult:
        return await self._paid(budget.image_ceiling(self.prices),
                                lambda: self.provider.image(prompt, **self.whose, **kwargs))

    async def clip(self, prompt: str, **kwargs: Any) -> MediaResult:
        ceiling = budget.clip_ceiling(self.prices, kwargs.get("seconds", CLIP_SECONDS))
        return await self._paid(ceiling, lambda: self.provider.clip(prompt, **self.whose,
                                                                    **kwargs))

    async def _paid(self, ceiling: float, call: Callable[[], Awaitable[R]]) -> R:
        budget.hold_all(self.budgets, ceiling)
        cost = 0.0  # a call that failed was not answered, so not billed
        try:
            result = await call()
            cost = result.cost_usd
            return result
        finally:
            budget.settle_all(self.budgets, ceiling, cost)
