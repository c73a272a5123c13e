"""The service's book of tenants' episodes: which tenant submitted which, in what order, under
which idempotency key, and how many each has unfinished. Pure; ``actors.tenant_desk`` keeps one
for the whole service and asks the coordinator for statuses.

An idempotency key names one request: the same key with the same episodes gives back the
episodes it made; with anything else it is an ``IdempotencyConflict`` (as the IETF draft has it).
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pipelines.models import EpisodeRequest


class QuotaExceeded(Exception):
    """Submitting would put a tenant over its limit of unfinished episodes."""


class IdempotencyConflict(Exception):
    """An idempotency key already names a different request."""


def fingerprint(requests: Sequence[EpisodeRequest]) -> str:
    """What a request asked for, to tell a replay from a reuse of its key."""
    return hashlib.sha256("\n".join(r.model_dump_json() for r in requests).encode()).hexdigest()


@dataclass
class _Tenant:
    episodes: list[tuple[int, str]] = field(default_factory=list)  # (number, id), in order
    unfinished: set[str] = field(default_factory=set)  # not yet seen finished


@dataclass(frozen=True)
class _Claim:
    fingerprint: str
    ids: tuple[str, ...]


class TenantBook:
    def __init__(self) -> None:
        self._tenants: dict[str, _Tenant] = {}
        self._claims: dict[str, _Claim] = {}  # request key -> what it made
        self._numbered = 0

    def replay(self, request_key: str | None, requests: Sequence[EpisodeRequest]
               ) -> list[str] | None:
        """The episodes an earlier request with this key made, if this is that request again;
        None for a key not used yet (or no key)."""
        if request_key is None:
            return None
        claim = self._claims.get(request_key)
        if claim is None:
            return None
        if claim.fingerprint != fingerprint(requests):
            raise IdempotencyConflict(f"request {request_key!r} was made with other episodes")
        return list(claim.ids)

    def unfinished(self, owner: str) -> list[str]:
        """The tenant's episodes not yet seen finished (ask their status, then ``finished``)."""
        return sorted(self._tenant(owner).unfinished)

    def finished(self, owner: str, episode_ids: Iterable[str]) -> None:
        """These episodes have finished: they never count against a quota again."""
        self._tenant(owner).unfinished.difference_update(episode_ids)

    def check_quota(self, owner: str, adding: int, max_active: int | None) -> None:
        """Raise ``QuotaExceeded`` if ``adding`` more would pass ``max_active`` unfinished."""
        active = len(self._tenant(owner).unfinished)
        if max_active is not None and adding and active + adding > max_active:
            raise QuotaExceeded(f"{active} episodes are queued or running and this request adds "
                                f"{adding}; the limit is {max_active} at once")

    def add(self, owner: str, episode_ids: Sequence[str], request_key: str | None,
            requests: Sequence[EpisodeRequest]) -> None:
        """Enter a submission the coordinator took."""
        tenant = self._tenant(owner)
        for episode_id in episode_ids:
            self._numbered += 1
            tenant.episodes.append((self._numbered, episode_id))
            tenant.unfinished.add(episode_id)
        if request_key is not None:
            self._claims[request_key] = _Claim(fingerprint(requests), tuple(episode_ids))

    def after(self, owner: str, cursor: int) -> list[tuple[int, str]]:
        """The tenant's episodes numbered above ``cursor``, in submission order."""
        episodes = self._tenant(owner).episodes
        return episodes[bisect.bisect_right(episodes, (cursor, "\uffff")):]

    def _tenant(self, owner: str) -> _Tenant:
        tenant = self._tenants.get(owner)
        if tenant is None:
            tenant = self._tenants[owner] = _Tenant()
        return tenant
