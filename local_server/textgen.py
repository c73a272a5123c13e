"""Deterministic, plausible answers for chat completions, offline.

With a JSON schema (Structured Outputs) the answer validates against it and reads like a script
(``schemagen`` and ``writer``); with ``json_object`` it is a small JSON object; otherwise prose.
The words come from the prompt and the seed: the same seed and request give the same answer,
different prompts or seeds give different ones.

Token counts are the server's own estimate, about four characters a token: the server charges
them to its token bucket before it answers, so it needs them without a tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from typing import Any

from local_server.schemagen import SchemaError, fill
from local_server.writer import Writer

__all__ = ["Answer", "SchemaError", "answer", "count_tokens", "prompt_text", "request_rng"]


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    finish_reason: str  # "stop", or "length" when cut at max_tokens
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def answer(messages: list[dict[str, Any]], response_format: dict[str, Any] | None = None,
           max_tokens: int | None = None, seed: int = 0, *,
           request_seed: int | None = None) -> Answer:
    """The assistant's answer to ``messages``.

    ``seed`` is the server's; ``request_seed`` the request's own ``seed`` parameter, so a client
    retrying with another seed gets another answer. An answer longer than ``max_tokens`` is cut
    to it and finishes with ``"length"`` (a cut JSON answer is then invalid, as OpenAI's is).
    Raises ``SchemaError`` for a ``json_schema`` it cannot satisfy.
    """
    rng = request_rng(seed, request_seed, messages, response_format)
    prompt = prompt_text(messages)
    writer = Writer(rng, prompt)
    kind = (response_format or {}).get("type")
    if kind == "json_schema":
        schema = (response_format or {}).get("json_schema", {}).get("schema") or {
            "type": "object"}
        text = json.dumps(fill(schema, writer), ensure_ascii=False)
    elif kind == "json_object":
        text = json.dumps({"title": writer.title(), "summary": writer.sentences(1, 2)},
                          ensure_ascii=False)
    else:
        text = writer.sentences(2, 5)
    finish = "stop"
    if max_tokens is not None and count_tokens(text) > max_tokens:
        text, finish = text[: max_tokens * 4], "length"
    return Answer(text, finish, prompt_tokens(messages), count_tokens(text))


def request_rng(seed: int, request_seed: int | None, messages: list[dict[str, Any]],
                response_format: dict[str, Any] | None) -> random.Random:
    """A random source fixed by the server's seed and the request (messages, format, seed)."""
    key = json.dumps([seed, request_seed, messages, response_format], sort_keys=True,
                     default=str, separators=(",", ":"))
    return random.Random(hashlib.sha256(key.encode()).digest())


def prompt_text(messages: list[dict[str, Any]]) -> str:
    """The text of all messages, one per line (text parts of multi-part contents included)."""
    return "\n".join(_contents(messages))


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """ceil(characters of all message contents / 4), at least 1."""
    return max(1, math.ceil(sum(len(part) for part in _contents(messages)) / 4))


def count_tokens(text: str) -> int:
    """The server's token estimate: about four characters a token, at least one."""
    return max(1, math.ceil(len(text) / 4))


def _contents(messages: list[dict[str, Any]]) -> list[str]:
    parts: list[str] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return parts
