"""Episode requests from the command line: a premise, or a file of them. Pure."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from pipelines.models import EpisodeRequest

MAX_EPISODES = 1000
MAX_FILE_BYTES = 10 * 1024 * 1024


class BadInput(ValueError):
    """Input that cannot become episodes; the message is one line naming the problem."""


def describe(err: ValidationError, where: str) -> str:
    parts = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "request"
        value = repr(e.get("input"))
        value = value if len(value) <= 60 else value[:57] + "..."
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown field {field!r}")
        else:
            parts.append(f"{field} = {value}: {e['msg']}")
    return f"invalid episode request{where}: " + "; ".join(parts)


def build_request(fields: dict[str, Any], where: str = "") -> EpisodeRequest:
    try:
        return EpisodeRequest.model_validate(fields)
    except ValidationError as err:
        raise BadInput(describe(err, where)) from None


def parse_premises_file(
    text: str, defaults: dict[str, Any], source: str = "the premises file"
) -> list[EpisodeRequest]:
    """One premise a line, or one JSON ``EpisodeRequest`` a line; blank lines are skipped.

    ``defaults`` (from the command line's flags) fill what a JSON line leaves out. ``source`` is
    how errors name the file (``premises file plots.txt``): the user gave a file, not a count, so
    a file over the limit is the file's fault. Parsing stops there, before the rest is validated.
    """
    requests = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if len(requests) == MAX_EPISODES:
            raise BadInput(f"{source} holds more than {MAX_EPISODES} premises, "
                           f"the most episodes one run writes")
        where = f" (line {number})"
        if line.startswith("{"):
            try:
                fields = json.loads(line)
            except json.JSONDecodeError as err:
                raise BadInput(f"line {number} is not valid JSON: {err.msg}") from None
            if not isinstance(fields, dict):
                raise BadInput(f"line {number} is not a JSON object")
            requests.append(build_request({**defaults, **fields}, where))
        else:
            requests.append(build_request({**defaults, "premise": line}, where))
    if not requests:
        raise BadInput(f"{source} holds no premise")
    return requests


def expand(requests: list[EpisodeRequest], episodes: int | None) -> list[EpisodeRequest]:
    """Cycle through the premises until there are ``episodes`` of them (default: one each)."""
    if episodes is None:
        if len(requests) > MAX_EPISODES:  # no flag was given, so the message names none
            raise BadInput(f"{len(requests)} premises are more than {MAX_EPISODES}, "
                           f"the most episodes one run writes")
        episodes = len(requests)
    if not 1 <= episodes <= MAX_EPISODES:
        raise BadInput(f"--episodes must be from 1 to {MAX_EPISODES}, not {episodes}")
    out = []
    for i in range(episodes):
        base = requests[i % len(requests)]
        seed = base.seed if base.seed is not None else None
        # Repeats of one premise get different seeds, so they are different episodes.
        if i >= len(requests):
            seed = (seed or 0) + i
        out.append(base.model_copy(update={"seed": seed}))
    return out
