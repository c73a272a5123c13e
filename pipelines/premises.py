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


def parse_premises_file(text: str, defaults: dict[str, Any]) -> list[EpisodeRequest]:
    """One premise a line, or one JSON ``EpisodeRequest`` a line; blank lines are skipped.

    ``defaults`` (from the command line's flags) fill what a JSON line leaves out.
    """
    requests = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
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
        raise BadInput("the premises file holds no premise")
    return requests


def expand(requests: list[EpisodeRequest], episodes: int | None) -> list[EpisodeRequest]:
    """Cycle through the premises until there are ``episodes`` of them (default: one each)."""
    if episodes is None:
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
