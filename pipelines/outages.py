"""Since when each part of the service has failed its probes, and what that makes the service.

A part that restarts is down for a second or two: clients are told to retry, and the process
serving them is still healthy. A part down for longer than a limit will not come back by waiting;
then the process reports itself unhealthy, so that an orchestrator restarts it (which gets or
recreates the part). Pure logic with an injected clock; ``serve_app`` does the probing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from enum import StrEnum


class Health(StrEnum):
    OK = "ok"  # every part answers
    DEGRADED = "degraded"  # some part is down, not for long yet: retry
    UNHEALTHY = "unhealthy"  # some part has been down longer than the limit: restart me


class Outages:
    """The parts that failed their latest probe, each with when it first did."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._since: dict[str, float] = {}

    def record(self, answered: Mapping[str, bool]) -> None:
        """One round of probes: which parts answered. A part that answers is up again at once;
        one that keeps failing keeps the time it first failed."""
        now = self.clock()
        for part, ok in answered.items():
            if ok:
                self._since.pop(part, None)
            else:
                self._since.setdefault(part, now)

    def down(self) -> dict[str, float]:
        """Each part down, with the seconds it has been, longest first."""
        now = self.clock()
        return {part: now - since for part, since in sorted(self._since.items(),
                                                             key=lambda item: item[1])}

    def health(self, unhealthy_after_s: float) -> Health:
        down = self.down()
        if not down:
            return Health.OK
        return Health.UNHEALTHY if max(down.values()) >= unhealthy_after_s else Health.DEGRADED
