"""Counters per endpoint, served at ``/stats``: what a benchmark reads to see what the server
accepted and refused, how many requests it held at once, and what it billed (``paid``, and
``duplicate_paid``: answers billed for a body billed before; see ``local_server.billing``).

An endpoint whose requests name a service tier (chat) also counts per tier, in ``by_tier``: a
flex call is billed at half price, so a test of a client's flex calls reads that they were billed
as flex, and that the ones refused for want of capacity were not billed at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from local_server.billing import Ledger, Refund
from local_server.tiers import Tier

FAULTS = ("server_error", "hang", "malformed")


class TierStats:
    """What one tier answered, refused for want of capacity, and billed."""

    __slots__ = ("accepted", "unavailable", "ledger")

    def __init__(self) -> None:
        self.accepted = 0
        self.unavailable = 0  # 429 resource_unavailable (flex): neither billed nor rate-limited
        self.ledger = Ledger()

    def snapshot(self) -> dict[str, int]:
        return {"accepted": self.accepted, "unavailable": self.unavailable,
                "paid": self.ledger.paid, "duplicate_paid": self.ledger.duplicate_paid}


class EndpointStats:
    """Plain integers bumped on the request path (no locks: one event loop owns them).
    ``tiers``: the service tiers counted apart (none for an endpoint without tiers)."""

    __slots__ = ("arrived", "accepted", "rate_limited", "quota_rejected", "unauthorized",
                 "left", "bad_request", "model_not_found", "faults", "tokens", "jobs_s",
                 "jobs_ran_s", "inflight", "max_inflight", "ledger", "by_tier", "_tiers")

    def __init__(self, tiers: Iterable[Tier] = ()) -> None:
        self._tiers = tuple(tiers)
        self.inflight = 0
        self.reset()

    def reset(self) -> None:
        """Zero the counters; requests in flight stay counted (they will leave)."""
        # Every request that reached the endpoint, whatever its answer: a benchmark watching for
        # the first call after a crash reads it.
        self.arrived = 0
        self.accepted = 0
        self.rate_limited = 0
        self.quota_rejected = 0
        self.unauthorized = 0
        self.bad_request = 0
        self.model_not_found = 0
        # Requests whose client went away before the answer (a cancel aborting its calls): not
        # billed, the work stopped.
        self.left = 0
        self.faults = dict.fromkeys(FAULTS, 0)
        self.tokens = 0  # charged to the token bucket, faulted requests included
        # The length of each job started (video), in the order drawn: what a benchmark's lower
        # bound needs, and a real provider would not say.
        self.jobs_s: list[float] = []
        # How long each job that ended ran, from its creation to its end: longer than drawn
        # when its render overran on a busy machine.
        self.jobs_ran_s: list[float] = []
        self.max_inflight = self.inflight
        self.ledger = Ledger()
        self.by_tier = {tier: TierStats() for tier in self._tiers}

    def count(self, counter: str | None) -> None:
        """Bump a counter by name: a field, or a fault kind."""
        if counter is None:
            return
        if counter in self.faults:
            self.faults[counter] += 1
        else:
            setattr(self, counter, getattr(self, counter) + 1)

    def enter(self) -> None:
        self.arrived += 1
        self.inflight += 1
        if self.inflight > self.max_inflight:
            self.max_inflight = self.inflight

    def leave(self) -> None:
        self.inflight -= 1

    def answered(self, tier: Tier | None) -> None:
        """One more 200 with an answer, at ``tier`` (``None``: an endpoint without tiers)."""
        self.accepted += 1
        if tier is not None:
            self.by_tier[tier].accepted += 1

    def bill(self, digest: bytes, tier: Tier | None) -> Refund:
        """Bill one answer to ``digest``, at ``tier`` too; returns what takes both back."""
        refunds = [self.ledger.bill(digest)]
        if tier is not None:
            refunds.append(self.by_tier[tier].ledger.bill(digest))

        def refund() -> None:
            for take_back in refunds:
                take_back()

        return refund

    def snapshot(self) -> dict[str, Any]:
        shot = {
            "arrived": self.arrived,
            "accepted": self.accepted,
            "rate_limited": self.rate_limited,
            "quota_rejected": self.quota_rejected,
            "unauthorized": self.unauthorized,
            "bad_request": self.bad_request,
            "model_not_found": self.model_not_found,
            "left": self.left,
            "faults": dict(self.faults),
            "tokens": self.tokens,
            "jobs_s": [round(s, 4) for s in self.jobs_s],
            "jobs_ran_s": [round(s, 4) for s in self.jobs_ran_s],
            "inflight": self.inflight,
            "max_inflight": self.max_inflight,
            "paid": self.ledger.paid,
            "duplicate_paid": self.ledger.duplicate_paid,
        }
        if self._tiers:
            shot["unavailable"] = sum(t.unavailable for t in self.by_tier.values())
            shot["by_tier"] = {str(tier): t.snapshot() for tier, t in self.by_tier.items()}
        return shot
