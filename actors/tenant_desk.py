"""The service's desk: where HTTP submissions and listings go, so that owners, idempotency keys
and quotas hold for every Serve replica. A plain class (``actors.remote`` makes it the named
actor ``showrunner:tenants``); the coordinator it passes episodes to knows nothing of tenants.

One submission of a tenant at a time: its quota check and the coordinator's taking the episodes
are one step, so two replicas cannot both squeeze past a limit.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Protocol

from pipelines.access import episode_ids, request_key
from pipelines.episode_view import EpisodeView
from pipelines.models import EpisodeRequest, EpisodeStatus
from pipelines.tenancy import TenantBook


class Coordinator(Protocol):
    """What the desk needs of the coordinator (or its Ray actor's adapter)."""

    async def submit_many(self, requests: list[EpisodeRequest], *,
                          ids: list[str] | None = None, owner: str = "") -> list[EpisodeView]: ...

    async def statuses(self, episode_ids: list[str]) -> list[EpisodeStatus | None]: ...

    async def views(self, episode_ids: list[str]) -> list[EpisodeView]: ...


class TenantDesk:
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.book = TenantBook()
        self._turns: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def submit(self, owner: str, requests: list[EpisodeRequest], *,
                     idempotency_key: str | None = None, max_active: int | None = None
                     ) -> list[EpisodeView]:
        """Queue a tenant's episodes, all or none; returns their views. The same idempotency
        key with the same episodes returns the episodes it made before; over ``max_active``
        unfinished episodes is a ``QuotaExceeded``.

        Shielded: a caller that goes away (a client that timed out, and will retry with its
        key) must not leave episodes queued at the coordinator that the book never heard of.
        """
        return await asyncio.shield(self._submit(owner, requests, idempotency_key, max_active))

    async def _submit(self, owner: str, requests: list[EpisodeRequest],
                      idempotency_key: str | None, max_active: int | None) -> list[EpisodeView]:
        key = request_key(owner, idempotency_key)
        async with self._turns[owner]:
            replayed = self.book.replay(key, requests)
            if replayed is not None:
                return await self.coordinator.views(replayed)
            if max_active is not None:
                await self._forget_finished(owner)
                self.book.check_quota(owner, len(requests), max_active)
            made = await self.coordinator.submit_many(
                requests, ids=episode_ids(owner, idempotency_key, len(requests)), owner=owner)
            self.book.add(owner, [view.id for view in made], key, requests)
            return made

    async def page(self, owner: str, status: EpisodeStatus | None = None, limit: int = 20,
                   cursor: int = 0) -> tuple[list[EpisodeView], int | None]:
        """A tenant's episodes in submission order after ``cursor`` (only those in ``status``,
        if given); returns the page and the cursor of the next one (None at the end)."""
        candidates = self.book.after(owner, cursor)
        # An episode the coordinator does not know (None) was lost when it restarted: the book
        # still names it, but there is nothing to show.
        statuses = await self.coordinator.statuses([i for _, i in candidates])
        candidates = [c for c, s in zip(candidates, statuses, strict=True)
                      if s is not None and (status is None or s is status)]
        page = candidates[:limit]
        views = await self.coordinator.views([i for _, i in page])
        more = len(candidates) > limit
        return views, (page[-1][0] if more else None)

    async def ping(self) -> str:
        return "ok"

    async def _forget_finished(self, owner: str) -> None:
        unfinished = self.book.unfinished(owner)
        if unfinished:
            statuses = await self.coordinator.statuses(unfinished)
            self.book.finished(owner, [i for i, s in zip(unfinished, statuses, strict=True)
                                       if s is None or s.finished])
