"""When to poll a provider's clip job. Pure rules, no I/O.

A provider caps the clip jobs it runs at once, so a job's slot is free again only once a poll has
seen the job end: every moment between a job's end and that poll is a moment the slot does
nothing. Polls cost requests, though. So the first poll waits until about a tenth of recent jobs
would have ended, and later polls go by the progress the job reports, aimed at its expected end.
"""

from __future__ import annotations

from collections import deque
from typing import Any


def remaining_s(status: dict[str, Any], elapsed_s: float) -> float | None:
    """The time a running job should still take, from its ``progress`` (percent), if it says."""
    progress = status.get("progress")
    if status.get("status") != "in_progress" or not isinstance(progress, int | float):
        return None
    if not 0 < progress < 100:
        return None
    return elapsed_s * (100 - progress) / progress


class JobDurations:
    """How long the provider's clip jobs take (the last 50), to time a job's first poll.

    A job's length is read off its last progress figure (elapsed time ÷ share done), not off the
    poll that saw it end: that poll comes late by up to a poll interval, and lengths learnt late
    would push the first poll later and later. A job already over at its first poll tells only
    that it was shorter than that wait (it is "censored").
    """

    QUANTILE = 0.1  # a tenth of jobs end before their first poll; the rest are polled near the end
    MIN_JOBS = 5  # fewer tell too little: poll from the start

    def __init__(self) -> None:
        self._recent: deque[tuple[float, bool]] = deque(maxlen=50)

    def add(self, seconds: float) -> None:
        """A job whose length is known (from its progress)."""
        self._recent.append((seconds, False))

    def add_ended_by(self, seconds: float) -> None:
        """A job that had ended by the time a poll first looked, ``seconds`` after its start."""
        self._recent.append((seconds, True))

    def first_poll_s(self) -> float:
        if len(self._recent) < self.MIN_JOBS:
            return 0.0
        wanted = self.QUANTILE * len(self._recent)  # jobs that should end before the first poll
        ended_by = [s for s, censored in self._recent if censored]
        if len(ended_by) > wanted:
            # Too many ended before anyone looked: their lengths are unknown, so look earlier,
            # in proportion. This holds until those jobs leave the window of 50, and the jobs
            # polled earlier meanwhile are seen running and teach their lengths.
            return min(ended_by) * wanted / len(ended_by)
        known = sorted(s for s, censored in self._recent if not censored)
        return known[int(wanted - len(ended_by))]
