"""Numbers a client sends, in a JSON body or as header and query text, checked for size before
Python converts them.

Python refuses to turn a string of more than 4,300 digits into an ``int`` (its guard against
quadratic conversion time) by raising ``ValueError``; in a request handler that is a 500. Here a
number too long for any field is a typed error that names where it was, so the API can answer 4xx.
Pure logic, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

# No field of the API takes a number this long (the largest, a seed, has 10 digits); Python's
# own limit is far above, so nothing that reaches ``int()`` can trip it.
MAX_DIGITS = 100
# An event id or a page cursor: a count that fits a signed 64-bit integer.
MAX_COUNTER_DIGITS = 18


class NumberTooLong(ValueError):
    """A JSON body holds integers of more than ``MAX_DIGITS`` digits; ``fields`` says where
    (``"episodes.0.seed"``, ``"body"`` for the whole body)."""

    def __init__(self, fields: list[str]) -> None:
        super().__init__(f"numbers of more than {MAX_DIGITS} digits at {', '.join(fields)}")
        self.fields = fields


class _Unconverted:
    """An integer left as its text: too long to be a value of any field."""

    __slots__ = ("digits",)

    def __init__(self, text: str) -> None:
        self.digits = len(text.lstrip("-"))


def load_json(body: bytes | str) -> Any:
    """``json.loads``, except that an integer of more than ``MAX_DIGITS`` digits raises
    ``NumberTooLong`` naming each place one was, instead of being converted (or failing to be).

    Errors of ``json.loads`` itself (``JSONDecodeError``, ``UnicodeDecodeError``,
    ``RecursionError``) pass through unchanged.
    """
    found = False

    def parse_int(text: str) -> int | _Unconverted:
        nonlocal found
        if len(text) - text.startswith("-") > MAX_DIGITS:
            found = True
            return _Unconverted(text)
        return int(text)

    data = json.loads(body, parse_int=parse_int)
    if found:
        raise NumberTooLong([_dotted(path) for path, value in _walk(data)
                             if isinstance(value, _Unconverted)])
    return data


def _walk(data: Any) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """Every value of a parsed JSON document with its path; iterative, as bodies may nest as
    deeply as the parser allows."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), data)]
    while stack:
        path, value = stack.pop()
        yield path, value
        if isinstance(value, dict):
            stack.extend(((*path, k), v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend(((*path, i), v) for i, v in reversed(list(enumerate(value))))


def _dotted(path: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in path) or "body"


def parse_counter(text: str, max_digits: int = MAX_COUNTER_DIGITS) -> int:
    """A count sent as text (an event id, a cursor): ASCII digits, at most ``max_digits`` of
    them. ``ValueError`` saying which rule it breaks otherwise."""
    if not (text.isascii() and text.isdigit()):  # "²".isdigit() is true, and int() refuses it
        raise ValueError("must be a number")
    if len(text) > max_digits:
        raise ValueError(f"must be a number of at most {max_digits} digits")
    return int(text)


def exceeds(text: str, cap: int) -> bool:
    """Whether a count sent as ASCII digits (a ``Content-Length``) is over ``cap``: decided by
    its length first, so a number too long to convert is simply over."""
    digits = text.lstrip("0")
    return len(digits) > len(str(cap)) or (bool(digits) and int(digits) > cap)
