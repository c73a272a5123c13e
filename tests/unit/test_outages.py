"""Since when each part of the service has been down, and the service's health: a fake clock."""

from __future__ import annotations

from pipelines.outages import Health, Outages


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_nothing_down_is_ok() -> None:
    outages = Outages(Clock())
    outages.record({"coordinator": True, "tenants": True})
    assert outages.down() == {} and outages.health(60) is Health.OK


def test_a_part_keeps_the_time_it_first_failed_until_it_answers() -> None:
    clock = Clock()
    outages = Outages(clock)
    outages.record({"coordinator": False, "llm": True})
    clock.now += 3
    outages.record({"coordinator": False, "llm": False})
    clock.now += 2
    assert outages.down() == {"coordinator": 5.0, "llm": 2.0}  # longest first
    outages.record({"coordinator": True})
    assert outages.down() == {"llm": 2.0}
    outages.record({"llm": True})
    assert outages.down() == {}


def test_short_outages_degrade_and_long_ones_are_unhealthy() -> None:
    clock = Clock()
    outages = Outages(clock)
    outages.record({"tenants": False})
    clock.now += 59.9
    assert outages.health(60) is Health.DEGRADED
    clock.now += 0.1
    assert outages.health(60) is Health.UNHEALTHY
    outages.record({"tenants": True})  # back: healthy at once, however long it was down
    assert outages.health(60) is Health.OK
    outages.record({"tenants": False})
    assert outages.health(60) is Health.DEGRADED  # down again: counted from now
