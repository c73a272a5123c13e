"""When the gateway polls a clip job: pure rules, no server."""

from __future__ import annotations

import pytest

from actors.clip_polling import JobDurations, remaining_s


def test_first_poll_waits_for_a_tenth_of_recent_jobs_to_have_ended() -> None:
    durations = JobDurations()
    for seconds in (50.0, 70.0, 60.0, 45.0):
        durations.add(seconds)
    assert durations.first_poll_s() == 0.0  # four jobs tell too little: poll from the start
    lengths = [50.0, 70.0, 60.0, 45.0, 55.0, 65.0, 75.0, 52.0, 58.0, 62.0, 48.0, 66.0, 71.0,
               54.0, 59.0, 61.0, 63.0, 57.0, 53.0, 67.0]
    for seconds in lengths[4:]:
        durations.add(seconds)
    assert durations.first_poll_s() == sorted(lengths)[2]  # two of twenty end sooner


def test_jobs_over_before_their_first_poll_count_as_ended_by_then() -> None:
    durations = JobDurations()
    for seconds in range(40, 60):  # twenty known lengths: 40 … 59
        durations.add(float(seconds))
    durations.add_ended_by(41.0)  # 21 jobs, a tenth is 2.1: after it and the shortest known
    assert durations.first_poll_s() == 41.0
    # Known lengths only from their progress: the late polls that saw them end do not count,
    # so the first poll does not drift later job after job.
    durations.add(80.0)
    assert durations.first_poll_s() == 41.0


def test_too_many_jobs_over_before_anyone_looked_brings_the_first_poll_earlier() -> None:
    durations = JobDurations()
    for _ in range(6):
        durations.add(60.0)
    for _ in range(4):
        durations.add_ended_by(40.0)  # 4 of 10 ended before their poll: a tenth was wanted
    assert durations.first_poll_s() == pytest.approx(40.0 * 1 / 4)


def test_only_the_last_fifty_jobs_count() -> None:
    durations = JobDurations()
    for _ in range(50):
        durations.add_ended_by(100.0)
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

