"""The service's rules for tenants: idempotency keys and quotas. Pure; ``actors.tenant_desk``
applies them, and the coordinator's state store keeps what they are about (each episode's owner,
each key's claim), so they hold across restarts.

An idempotency key names one request: the same key with the same episodes gives back the
episodes it made; with anything else it is an ``IdempotencyConflict`` (as the IETF draft has it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pipelines.models import EpisodeRequest


class QuotaExceeded(Exception):
    """Submitting would put a tenant over its limit of unfinished episodes."""


class IdempotencyConflict(Exception):
    """An idempotency key already names a different request."""


class DailyBudgetSpent(Exception):
    """A tenant's budget for today is spent: nothing more is taken before ``resets_at``."""

    def __init__(self, message: str, resets_at: float) -> None:
        super().__init__(message)
        self.resets_at = resets_at

    def __reduce__(self) -> tuple[type[DailyBudgetSpent], tuple[str, float]]:
        return (type(self), (self.args[0], self.resets_at))  # it crosses from the desk's actor


def fingerprint(requests: Sequence[EpisodeRequest]) -> str:
    """What a request asked for, to tell a replay from a reuse of its key."""
    return hashlib.sha256("\n".join(r.model_dump_json() for r in requests).encode()).hexdigest()


@dataclass(frozen=True)
class Claim:
    """What an idempotency key's first request asked for, and the episodes it made."""

    fingerprint: str
    ids: tuple[str, ...]

    def replay(self, requests: Sequence[EpisodeRequest]) -> list[str]:
        """The episodes to give back for ``requests`` sent again under the same key."""
        if self.fingerprint != fingerprint(requests):
            raise IdempotencyConflict("the key was used for other episodes")
        return list(self.ids)


def check_quota(active: int, adding: int, max_active: int | None) -> None:
    """Raise ``QuotaExceeded`` if ``adding`` more would pass ``max_active`` unfinished."""
    if max_active is not None and adding and active + adding > max_active:
        raise QuotaExceeded(f"{active} episodes are queued or running and this request adds "
                            f"{adding}; the limit is {max_active} at once")


@dataclass(frozen=True)
class DailyBudget:
    """A tenant's budget for today, as it stands: USD, and when it starts again (epoch s)."""

    limit_usd: float
    spent_usd: float
    held_usd: float  # by calls in flight
    resets_at: float

    def check(self) -> None:
        """Raise ``DailyBudgetSpent`` once nothing is left to start new work with."""
        if self.spent_usd + self.held_usd >= self.limit_usd:
            reset = datetime.fromtimestamp(self.resets_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            raise DailyBudgetSpent(
                f"this API key's daily budget of ${self.limit_usd:.2f} is spent "
                f"(${self.spent_usd:.4f}, ${self.held_usd:.4f} more held by calls in flight); "
                f"it starts again at {reset}", self.resets_at)
