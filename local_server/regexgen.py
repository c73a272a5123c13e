"""A string matching a regular expression, for ``pattern`` in a JSON schema (``^[A-Z]{3}-\\d+$``).

Walks the pattern as Python's own regex parser reads it (``re._parser``: private, but the same
parse tree since Python 2's ``sre_parse``): literals, classes, ranges, repeats, groups,
alternations and anchors. Lookarounds and backreferences raise ``Unsupported``; the caller checks
the result against the pattern anyway.
"""

from __future__ import annotations

import random
import re._constants as _c
import re._parser as _parser
import string
from typing import Any

MAX_EXTRA_REPEATS = 3  # ``x*`` and ``x+`` repeat at most this many more times than their minimum
_CATEGORIES: dict[Any, str] = {
    _c.CATEGORY_DIGIT: string.digits,
    _c.CATEGORY_WORD: string.ascii_letters + string.digits + "_",
    _c.CATEGORY_SPACE: " ",
    _c.CATEGORY_NOT_DIGIT: string.ascii_letters,
    _c.CATEGORY_NOT_WORD: " -.,",
    _c.CATEGORY_NOT_SPACE: string.ascii_letters + string.digits,
}
_REPEATS = (_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT)
_PRINTABLE = string.ascii_letters + string.digits + " -_.,"


class Unsupported(ValueError):
    """The pattern uses something this generator does not write (a lookaround, a backref)."""


def sample(pattern: str, rng: random.Random) -> str:
    """A string matching ``pattern`` (a Python ``re`` pattern); raises ``Unsupported``."""
    try:
        parsed = _parser.parse(pattern)
    except Exception as err:  # re.error, or anything odd from a private module
        raise Unsupported(str(err)) from None
    return _emit(list(parsed), rng)


def _emit(items: list[tuple[Any, Any]], rng: random.Random) -> str:
    out: list[str] = []
    for op, arg in items:
        if op is _c.LITERAL:
            out.append(chr(arg))
        elif op is _c.NOT_LITERAL:
            out.append(rng.choice([ch for ch in _PRINTABLE if ord(ch) != arg]))
        elif op is _c.ANY:
            out.append(rng.choice(string.ascii_letters))
        elif op is _c.IN:
            out.append(_one_of(arg, rng))
        elif op in _REPEATS:
            low, high, sub = arg
            top = low + MAX_EXTRA_REPEATS if high is _c.MAXREPEAT else min(high,
                                                                          low + MAX_EXTRA_REPEATS)
            out.extend(_emit(list(sub), rng) for _ in range(rng.randint(low, top)))
        elif op is _c.SUBPATTERN:
            out.append(_emit(list(arg[-1]), rng))
        elif op is _c.ATOMIC_GROUP:
            out.append(_emit(list(arg), rng))
        elif op is _c.BRANCH:
            out.append(_emit(list(rng.choice(arg[1])), rng))
        elif op is _c.AT:
            continue  # anchors: the string is written whole, start to end
        else:
            raise Unsupported(f"regex construct {op} is not supported")
    return "".join(out)


def _one_of(members: list[tuple[Any, Any]], rng: random.Random) -> str:
    """One character of a class ``[...]``."""
    if members and members[0][0] is _c.NEGATE:
        excluded = set(members[1:])
        allowed = [ch for ch in _PRINTABLE if not _in_class(ch, excluded)]
        if not allowed:
            raise Unsupported("a negated class excludes every plain character")
        return rng.choice(allowed)
    op, arg = rng.choice(members)
    if op is _c.LITERAL:
        return chr(arg)
    if op is _c.RANGE:
        return chr(rng.randint(arg[0], arg[1]))
    if op is _c.CATEGORY and arg in _CATEGORIES:
        return rng.choice(_CATEGORIES[arg])
    raise Unsupported(f"class member {op} is not supported")


def _in_class(ch: str, members: set[tuple[Any, Any]]) -> bool:
    code = ord(ch)
    for op, arg in members:
        if (op is _c.LITERAL and arg == code) or (op is _c.RANGE and arg[0] <= code <= arg[1]):
            return True
        if op is _c.CATEGORY and ch in _CATEGORIES.get(arg, ""):
            return True
    return False
