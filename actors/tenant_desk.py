"""The service's desk: where HTTP submissions and listings go, so that owners, idempotency keys
and quotas hold for every Serve replica. A plain class (``actors.remote`` makes it the named
actor ``showrunner:tenants``).

It keeps nothing of its own: each episode's owner and each idempotency key's claim are the
coordinator's, in its state store, so a desk (or a coordinator) that restarts has forgotten
nothing, and its memory does not grow with the episodes the service has run. What it adds is
order: one submission of a tenant at a time, so its quota check and the coordinator's taking the
episodes are one step, and two replicas cannot both squeeze past a limit.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import defaultdict
from typing import Protocol

from pipelines.access import episode_ids, request_key
from pipelines.episode_view import EpisodeView
from pipelines.models import EpisodeRequest, EpisodeStatus
from pipelines.tenancy import Claim, check_quota


class Coordinator(Protocol):
    """What the desk needs of the coordinator (or its Ray actor's adapter)."""

    async def submit_many(self, requests: list[EpisodeRequest], *,
                          ids: list[str] | None = None, owner: str = "",
                          claim_key: str | None = None) -> list[EpisodeView]: ...

    async def claimed(self, claim_key: str) -> Claim | None: ...

    async def unfinished_count(self, owner: str) -> int: ...

    async def page(self, owner: str, status: EpisodeStatus | None = None, limit: int = 20,
                   cursor: int = 0, newest: bool = False
                   ) -> tuple[list[EpisodeView], int | None]: ...

    async def views(self, episode_ids: list[str]) -> list[EpisodeView]: ...


class TenantDesk:
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self._turns: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Signs the studio's stream tokens unless the settings give a secret: one desk serves
        # every replica, so they all check each other's tokens (a restart ends them all).
        self._secret = secrets.token_bytes(32)

    def token_secret(self) -> bytes:
        return self._secret

    async def submit(self, owner: str, requests: list[EpisodeRequest], *,
                     idempotency_key: str | None = None, max_active: int | None = None
                     ) -> list[EpisodeView]:
        """Queue a tenant's episodes, all or none; returns their views. The same idempotency
        key with the same episodes returns the episodes it made before (an
        ``IdempotencyConflict`` with others); over ``max_active`` unfinished episodes is a
        ``QuotaExceeded``; a daily budget spent is the coordinator's ``DailyBudgetSpent``.

        Shielded: a caller that goes away (a client that timed out, and will retry with its
        key) must not leave the submission half-made.
        """
        return await asyncio.shield(self._submit(owner, requests, idempotency_key, max_active))

    async def _submit(self, owner: str, requests: list[EpisodeRequest],
                      idempotency_key: str | None, max_active: int | None) -> list[EpisodeView]:
        key = request_key(owner, idempotency_key)
        async with self._turns[owner]:
            if key is not None:
                claim = await self.coordinator.claimed(key)
                if claim is not None:
                    return await self.coordinator.views(claim.replay(requests))
            if max_active is not None:
                check_quota(await self.coordinator.unfinished_count(owner), len(requests),
                            max_active)
            return await self.coordinator.submit_many(
                requests, ids=episode_ids(owner, idempotency_key, len(requests)), owner=owner,
                claim_key=key)

    async def page(self, owner: str, status: EpisodeStatus | None = None, limit: int = 20,
                   cursor: int = 0, newest: bool = False
                   ) -> tuple[list[EpisodeView], int | None]:
        """A tenant's episodes in submission order, or ``newest`` first, past ``cursor``
        (only those in ``status``, if given); returns the page and the cursor of the next one
        (None at the end)."""
        return await self.coordinator.page(owner, status, limit, cursor, newest)

    async def ping(self) -> str:
        return "ok"
