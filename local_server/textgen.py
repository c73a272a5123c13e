"""Deterministic, plausible answers for chat completions, offline.

With a JSON schema (Structured Outputs) the answer validates against it and reads like a script:
property names decide what to write (a ``title`` gets a title, a ``speaker`` a character's name, a
``text`` a line of dialogue), and the words come from the prompt and the seed. The same seed and
request give the same answer; different prompts or seeds give different ones.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from typing import Any

FIRST_NAMES = (
    "Ada", "Ben", "Cleo", "Dev", "Esme", "Felix", "Greta", "Hugo", "Iris", "Jonah", "Kira",
    "Leon", "Maya", "Nico", "Odette", "Priya", "Quinn", "Rafa", "Sana", "Theo", "Uma", "Victor",
    "Wren", "Xavi", "Yara", "Zane",
)
PLACES = (
    "a rain-streaked rooftop", "the back room of a diner", "a lighthouse gallery",
    "a crowded night market", "an empty train platform", "a cluttered workshop",
    "the edge of a frozen lake", "a hospital corridor at 3 a.m.", "a radio booth",
    "a ferry deck in fog", "a greenhouse full of orchids", "a basement archive",
)
ADJECTIVES = (
    "Quiet", "Broken", "Golden", "Last", "Hidden", "Restless", "Borrowed", "Silver", "Long",
    "Crooked", "Bright", "Secret",
)
NOUNS = (
    "Signal", "Harbor", "Promise", "Winter", "Lantern", "Frequency", "Bargain", "Tide", "Map",
    "Kitchen", "Storm", "Letter",
)
ROLES = (
    "night-shift nurse", "retired detective", "line cook", "radio host", "ferry captain",
    "runaway teenager", "small-town mayor", "stage magician", "locksmith", "archivist",
)
MOODS = ("tense", "hopeful", "bittersweet", "playful", "ominous", "tender", "frantic", "wry")
DIRECTIONS = (
    "quietly", "with a crooked smile", "not looking up", "a beat too fast", "laughing",
    "under their breath", "stepping closer", "after a long pause",
)
OPENERS = (
    "You said the {w} would hold.", "Tell me the truth about the {w}.",
    "I kept the {w}, you know.", "We don't have time for the {w}.",
    "If the {w} is gone, then what?", "Nobody trusts the {w} anymore.",
    "I've been thinking about the {w} all night.", "Give me one good reason about the {w}.",
)
STOPWORDS = {
    "the", "and", "with", "that", "this", "from", "into", "their", "there", "they", "have",
    "each", "scene", "scenes", "write", "answer", "json", "schema", "follows", "exactly",
    "episode", "outline", "characters", "setting", "summary", "title", "lines", "line",
    "dialogue", "what", "when", "which", "before", "after", "about", "your", "give", "every",
    "premise", "style", "mood", "action", "speaker", "direction", "short", "stage", "keep",
    "consistent", "came", "writers", "room", "television", "series", "given", "will",
    "were", "been", "them", "then", "than", "while", "where", "small", "stuck", "together",
    "starts", "receiving", "years", "past", "until",
}


def request_rng(seed: int, body: dict[str, Any]) -> random.Random:
    """A random source fixed by the server's seed and the request (its messages and schema)."""
    key = json.dumps(
        [seed, body.get("seed"), body.get("messages"), body.get("response_format")],
        sort_keys=True, default=str,
    )
    return random.Random(hashlib.sha256(key.encode()).digest())


def prompt_text(messages: list[dict[str, Any]]) -> str:
    parts = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):  # content parts
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "\n".join(parts)


class Writer:
    """Writes values for one request, keeping a cast of characters and the prompt's words."""

    def __init__(self, rng: random.Random, prompt: str) -> None:
        self.rng = rng
        # The premise carries the story's own words; the rest of a prompt is mostly instructions.
        premise = re.search(r"Premise:\s*([^\n]+)", prompt)
        source = premise.group(1) if premise else prompt
        words = [w.lower() for w in re.findall(r"[A-Za-z][a-z]{3,}", source)]
        self.words = [w for w in words if w not in STOPWORDS] or ["plan"]
        named = re.findall(r"(?:Characters?:|\(with)\s*([^\n)]+)", prompt)
        cast = [n.strip() for group in named for n in group.split(",")]
        cast = [n for n in dict.fromkeys(cast) if re.fullmatch(r"[A-Z][\w'-]{0,30}", n)]
        # Two at least, so nobody confronts themselves.
        extra = [n for n in rng.sample(FIRST_NAMES, k=4) if n not in cast]
        self.cast = cast + extra[: max(0, 2 - len(cast))] if cast else extra

    def word(self) -> str:
        return self.rng.choice(self.words)

    def title(self) -> str:
        return f"The {self.rng.choice(ADJECTIVES)} {self.word().capitalize()}"

    def sentence(self) -> str:
        a, b = self.rng.sample(self.cast, 2) if len(self.cast) > 1 else (self.cast[0],) * 2
        templates = (
            f"{a} confronts {b} about the {self.word()} while the {self.word()} slips away.",
            f"{a} and {b} hide the {self.word()} as {self.word()} closes in.",
            f"{a} finally admits the truth about the {self.word()}, and {b} has to choose.",
            f"Tension over the {self.word()} turns into a {self.rng.choice(MOODS)} plan.",
        )
        return self.rng.choice(templates)

    def line(self) -> str:
        opener = self.rng.choice(OPENERS).format(w=self.word())
        return opener if self.rng.random() < 0.5 else f"{opener} {self.sentence()}"

    def portrait(self) -> str:
        mood = self.rng.choice(MOODS)
        article = "An" if mood[0] in "aeiou" else "A"
        return (f"{article} {mood} {self.rng.choice(ROLES)} who will do anything to protect "
                f"the {self.word()}.")

    def string_for(self, name: str) -> str:
        n = name.lower()
        if n in ("name", "speaker", "character") or n.endswith("_name"):
            return self.rng.choice(self.cast)
        if "title" in n:
            return self.title()
        if n == "logline":
            return self.sentence()
        if n == "description":
            return self.portrait()
        if any(k in n for k in ("summary", "action", "synopsis", "plot", "beat")):
            return " ".join(self.sentence() for _ in range(self.rng.randint(1, 3)))
        if any(k in n for k in ("setting", "location", "place")):
            return self.rng.choice(PLACES)
        if any(k in n for k in ("mood", "tone")):
            return self.rng.choice(MOODS)
        if "direction" in n:
            return self.rng.choice(DIRECTIONS)
        if n in ("text", "line", "speech", "dialogue", "quote", "content"):
            return self.line()
        return self.sentence()


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"unsupported $ref {ref!r}")
        node: Any = root
        for part in ref[2:].split("/"):
            node = node[part]
        schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _fit(text: str, schema: dict[str, Any]) -> str:
    low = schema.get("minLength", 0)
    high = schema.get("maxLength")
    while len(text) < low:
        text += " " + text
    if high is not None and len(text) > high:
        text = text[:high]
    return text


def generate(schema: dict[str, Any], root: dict[str, Any], writer: Writer,
             name: str = "", index: int = 0) -> Any:
    """A value valid under ``schema`` (``root`` holds its ``$defs``)."""
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return writer.rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [s for s in schema[key] if _resolve(s, root).get("type") != "null"]
            return generate(options[0] if options else schema[key][0], root, writer, name, index)
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return generate(schema["allOf"][0], root, writer, name, index)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return {
            prop: generate(sub, root, writer, prop, index)
            for prop, sub in schema.get("properties", {}).items()
        }
    if kind == "array":
        low = schema.get("minItems", 1)
        high = schema.get("maxItems", max(low, 4))
        count = writer.rng.randint(low, max(low, min(high, low + 4)))
        item = schema.get("items", {"type": "string"})
        singular = name[:-1] if name.endswith("s") else name
        return [generate(item, root, writer, singular, i + 1) for i in range(count)]
    if kind == "string":
        return _fit(writer.string_for(name), schema)
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0) + (kind == "integer"))
        high = schema.get("maximum", schema.get("exclusiveMaximum", low + 100) - 1)
        if name.lower() in ("number", "index", "scene", "order") and index:
            return min(max(index, low), high)
        value = writer.rng.randint(math.ceil(low), math.floor(high)) if kind == "integer" else (
            round(writer.rng.uniform(low, high), 3))
        return value
    if kind == "boolean":
        return writer.rng.random() < 0.5
    return None


def answer(body: dict[str, Any], seed: int) -> str:
    """The assistant's text for a chat request: JSON when a format asks for it, else prose."""
    rng = request_rng(seed, body)
    writer = Writer(rng, prompt_text(body.get("messages", [])))
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema") or {"type": "object"}
        return json.dumps(generate(schema, schema, writer), ensure_ascii=False)
    if fmt.get("type") == "json_object":
        return json.dumps({"title": writer.title(), "summary": writer.sentence()})
    return " ".join(writer.sentence() for _ in range(rng.randint(2, 5)))


def count_tokens(text: str) -> int:
    """The server's token estimate: about four characters a token, at least one."""
    return max(1, math.ceil(len(text) / 4))
