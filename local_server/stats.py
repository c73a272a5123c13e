"""Counters per endpoint, served at ``/stats``: what a benchmark reads to see what the server
accepted and refused, and how many requests it held at once."""

from __future__ import annotations

from typing import Any

FAULTS = ("server_error", "hang", "malformed")


class EndpointStats:
    """Plain integers bumped on the request path (no locks: one event loop owns them)."""

    __slots__ = ("accepted", "rate_limited", "quota_rejected", "unauthorized", "bad_request",
                 "faults", "tokens", "jobs_s", "inflight", "max_inflight")

    def __init__(self) -> None:
        self.inflight = 0
        self.reset()

    def reset(self) -> None:
        """Zero the counters; requests in flight stay counted (they will leave)."""
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

    def count(self, counter: str | None) -> None:
        """Bump a counter by name: a field, or a fault kind."""
        if counter is None:
            return
        if counter in self.faults:
            self.faults[counter] += 1
        else:
            setattr(self, counter, getattr(self, counter) + 1)

    def enter(self) -> None:
        self.inflight += 1
        if self.inflight > self.max_inflight:
            self.max_inflight = self.inflight

    def leave(self) -> None:
        self.inflight -= 1

    def snapshot(self) -> dict[str, Any]:
        return {
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
        }
