"""Counters per endpoint, served at ``/stats``: what a benchmark reads to see what the server
accepted and refused, how many requests it held at once, and what it billed (``paid``, and
``duplicate_paid``: answers billed for a body billed before; see ``local_server.billing``)."""

from __future__ import annotations

from typing import Any

from local_server.billing import Ledger

FAULTS = ("server_error", "hang", "malformed")


class EndpointStats:
    """Plain integers bumped on the request path (no locks: one event loop owns them)."""

    __slots__ = ("arrived", "accepted", "rate_limited", "quota_rejected", "unauthorized",
                 "bad_request", "faults", "tokens", "jobs_s", "inflight", "max_inflight",
                 "ledger")

    def __init__(self) -> None:
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
        self.faults = dict.fromkeys(FAULTS, 0)
        self.tokens = 0  # charged to the token bucket, faulted requests included
        # The length of each job started (video), in the order drawn: what a benchmark's lower
        # bound needs, and a real provider would not say.
        self.jobs_s: list[float] = []
        self.max_inflight = self.inflight
        self.ledger = Ledger()

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

    def snapshot(self) -> dict[str, Any]:
        return {
            "arrived": self.arrived,
            "accepted": self.accepted,
            "rate_limited": self.rate_limited,
            "quota_rejected": self.quota_rejected,
            "unauthorized": self.unauthorized,
            "bad_request": self.bad_request,
            "faults": dict(self.faults),
            "tokens": self.tokens,
            "jobs_s": [round(s, 4) for s in self.jobs_s],
            "inflight": self.inflight,
            "max_inflight": self.max_inflight,
            "paid": self.ledger.paid,
            "duplicate_paid": self.ledger.duplicate_paid,
        }
