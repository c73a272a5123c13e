"""When the gateway polls a clip job: pure rules, no server."""

from __future__ import annotations

import pytest

from actors.gateway import JobDurations, remaining_s


def test_first_poll_waits_for_a_fifth_of_recent_jobs_to_have_ended() -> None:
    durations = JobDurations()
    for seconds in (50.0, 70.0, 60.0, 45.0):
        durations.add(seconds)
    assert durations.first_poll_s() == 0.0  # four jobs tell too little: poll from the start
    for seconds in (55.0, 65.0, 75.0, 52.0, 58.0, 62.0):
        durations.add(seconds)
    ordered = sorted([50, 70, 60, 45, 55, 65, 75, 52, 58, 62])
    assert durations.first_poll_s() == ordered[1]  # the 20th percentile of ten


def test_only_the_last_fifty_jobs_count() -> None:
    durations = JobDurations()
    for _ in range(50):
        durations.add(100.0)
    for _ in range(50):
        durations.add(10.0)
    assert durations.first_poll_s() == 10.0


@pytest.mark.parametrize(
    ("status", "elapsed", "expected"),
    [
        ({"status": "in_progress", "progress": 80}, 40.0, 10.0),
        ({"status": "in_progress", "progress": 25}, 10.0, 30.0),
        ({"status": "in_progress", "progress": 0}, 10.0, None),  # no rate to go by yet
        ({"status": "in_progress"}, 10.0, None),
        ({"status": "queued", "progress": 50}, 10.0, None),
        ({"status": "in_progress", "progress": "50"}, 10.0, None),
    ],
)
def test_remaining_time_from_reported_progress(status: dict, elapsed: float,
                                               expected: float | None) -> None:
    assert remaining_s(status, elapsed) == expected
