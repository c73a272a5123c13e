"""Numbers in requests are checked for size before Python converts them: pure rules."""

from __future__ import annotations

import json

import pytest

from pipelines.request_numbers import (
    MAX_DIGITS,
    NumberTooLong,
    exceeds,
    load_json,
    parse_counter,
)

HUGE = "7" * 5000  # past Python's int-string conversion limit (4,300 digits)


def test_json_is_parsed_as_json_loads_does() -> None:
    text = '{"a": [1, -2, 3.5, null, true, "x"], "b": {"c": 12345678901234567890}}'
    assert load_json(text) == json.loads(text)
    assert load_json("7" * MAX_DIGITS) == int("7" * MAX_DIGITS)
    assert load_json("-" + "7" * MAX_DIGITS) == -int("7" * MAX_DIGITS)


@pytest.mark.parametrize(("text", "fields"), [
    (HUGE, ["body"]),
    ("-" + HUGE, ["body"]),
    ("7" * (MAX_DIGITS + 1), ["body"]),
    (f'{{"premise": "p", "scenes": {HUGE}}}', ["scenes"]),
    (f'{{"episodes": [{{"seed": 1}}, {{"seed": -{HUGE}}}]}}', ["episodes.1.seed"]),
    (f'{{"a": [1, {HUGE}], "b": {{"c": {HUGE}}}}}', ["a.1", "b.c"]),
])
def test_too_long_integers_are_named_where_they_are(text: str, fields: list[str]) -> None:
    with pytest.raises(NumberTooLong) as raised:
        load_json(text)
    assert raised.value.fields == fields and fields[0] in str(raised.value)


def test_long_floats_and_json_errors_are_left_to_json() -> None:
    assert load_json(f"{HUGE}.5") == float("inf")  # floats do not fail to convert
    with pytest.raises(json.JSONDecodeError):
        load_json("{premise: 1}")
    with pytest.raises(RecursionError):
        load_json("[" * 100_000)


def test_deep_documents_are_walked_without_recursion() -> None:
    depth = 900  # what the parser takes; the walk must not be the one that gives up
    with pytest.raises(NumberTooLong) as raised:
        load_json("[" * depth + HUGE + "]" * depth)
    assert raised.value.fields == [".".join(["0"] * depth)]


@pytest.mark.parametrize(("text", "value"), [("0", 0), ("42", 42), ("9" * 18, int("9" * 18))])
def test_counters(text: str, value: int) -> None:
    assert parse_counter(text) == value


@pytest.mark.parametrize(("text", "reason"), [
    ("", "a number"), ("x", "a number"), ("-1", "a number"), ("\u00b2", "a number"),
    ("1.5", "a number"), ("9" * 19, "at most 18 digits"), (HUGE, "at most 18 digits"),
])
def test_counters_that_are_refused_say_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_counter(text)


@pytest.mark.parametrize(("text", "over"), [
    ("1024", False), ("1025", True), ("0001024", False), ("0", False), ("000", False),
    ("99999", True), (HUGE, True), ("0" * 5000 + "1", False),
])
def test_exceeds_decides_long_numbers_by_length(text: str, over: bool) -> None:
    assert exceeds(text, 1024) is over
