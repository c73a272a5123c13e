"""A JSON value that validates against a JSON schema, its strings written by a ``Writer``.

Covers what Structured Outputs accepts and what the SDK emits for pydantic models
(``openai.lib._pydantic.to_strict_json_schema``): ``$defs``/``$ref`` (recursive ones too),
``anyOf`` (``Optional`` is ``anyOf`` with null), ``enum``, ``const``, nested objects and arrays,
``prefixItems``, ``minItems``/``maxItems``, ``uniqueItems``, ``minLength``/``maxLength``,
``pattern`` (by trying candidates), ``format``, ``minimum``/``maximum`` (exclusive too),
``multipleOf``, ``additionalProperties`` and ``required``. A schema it cannot satisfy raises
``SchemaError``, which the server answers with a 400 as OpenAI does for a schema it rejects.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from typing import Any

from local_server import regexgen
from local_server.writer import Writer

MAX_DEPTH = 6  # past this, optional parts are left out so recursive schemas end
HARD_DEPTH = 40  # past this, the schema cannot end: refuse it
DEFAULT_MAX_ITEMS = 4


class SchemaError(ValueError):
    """The schema is invalid or asks for something this server cannot produce."""


def fill(schema: dict[str, Any], writer: Writer) -> Any:
    """A value valid under ``schema`` (whose ``$defs``/``definitions`` its ``$ref``s point to)."""
    return _Filler(schema, writer).value(schema, "", 0, 0)


class _Filler:
    def __init__(self, root: dict[str, Any], writer: Writer) -> None:
        self.root = root
        self.writer = writer
        self.rng = writer.rng

    # -- schema plumbing ------------------------------------------------------------------------

    def resolve(self, schema: Any) -> dict[str, Any]:
        """Follow ``$ref``s (keeping sibling keywords) and merge ``allOf``."""
        if schema is True or schema == {}:
            return {}
        if not isinstance(schema, dict):
            raise SchemaError(f"a schema must be an object, not {schema!r}")
        for _ in range(32):
            if "$ref" not in schema:
                break
            ref = schema["$ref"]
            if not isinstance(ref, str) or not ref.startswith("#"):
                raise SchemaError(f"only local $refs are supported, not {ref!r}")
            node: Any = self.root
            for part in filter(None, ref[1:].split("/")):
                part = part.replace("~1", "/").replace("~0", "~")
                if not isinstance(node, dict) or part not in node:
                    raise SchemaError(f"$ref {ref!r} points nowhere")
                node = node[part]
            schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
        else:
            raise SchemaError("$refs refer to each other in a loop")
        if "allOf" in schema:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                part = self.resolve(part)
                merged["properties"] = {**merged.get("properties", {}),
                                        **part.get("properties", {})}
                merged["required"] = [*merged.get("required", []), *part.get("required", [])]
                merged.update({k: v for k, v in part.items()
                               if k not in ("properties", "required")})
            schema = merged
        return schema

    # -- values ---------------------------------------------------------------------------------

    def value(self, schema: Any, name: str, index: int, depth: int,
              siblings: frozenset[str] = frozenset()) -> Any:
        if depth > HARD_DEPTH:
            raise SchemaError("the schema nests without end (a required recursive field?)")
        if schema is False:
            raise SchemaError(f"field {name!r} admits no value")
        schema = self.resolve(schema)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            if not schema["enum"]:
                raise SchemaError(f"field {name!r} has an empty enum")
            return self.rng.choice(schema["enum"])
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self.choice(schema, key, name, index, depth, siblings)
        kind = schema.get("type", _implied_type(schema))
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"]
            if not kinds or (depth > MAX_DEPTH and "null" in kind):
                return None
            kind = kinds[0]
        match kind:
            case "object":
                return self.object(schema, index, depth)
            case "array":
                return self.array(schema, name, depth)
            case "string":
                return self.string(schema, name, index, siblings)
            case "integer" | "number":
                return self.number(schema, name, index, integer=kind == "integer")
            case "boolean":
                return self.rng.random() < 0.5
            case "null":
                return None
        raise SchemaError(f"unsupported type {kind!r}")

    def choice(self, schema: dict[str, Any], key: str, name: str, index: int, depth: int,
               siblings: frozenset[str]) -> Any:
        """One branch of ``anyOf``/``oneOf``: not null unless nesting is deep (so an Optional
        field has content and a recursive one ends)."""
        base = {k: v for k, v in schema.items() if k != key}
        options = [self.resolve({**base, **self.resolve(o)}) for o in schema[key]]
        if not options:
            raise SchemaError(f"field {name!r} has an empty {key}")
        solid = [o for o in options if o.get("type") != "null"]
        if depth > MAX_DEPTH and len(solid) < len(options):
            return None
        picked = self.rng.choice(solid) if solid else options[0]
        return self.value(picked, name, index, depth, siblings)

    def object(self, schema: dict[str, Any], index: int, depth: int) -> dict[str, Any]:
        properties: dict[str, Any] = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        names = frozenset(properties)
        out: dict[str, Any] = {}
        for prop, sub in properties.items():
            # Deep in a recursive schema, leave out what may be left out.
            if depth > MAX_DEPTH and prop not in required:
                continue
            out[prop] = self.value(sub, prop, index, depth + 1, names)
        for prop in required.difference(properties):  # required yet undescribed: anything
            out[prop] = self.value({}, prop, index, depth + 1, names)
        extra = schema.get("additionalProperties")
        low = schema.get("minProperties", 0)
        if isinstance(extra, dict) and not properties:  # a map: dict[str, X]
            high = schema.get("maxProperties", max(low, 3))
            wanted = self.rng.randint(low, max(low, min(high, 3))) if depth <= MAX_DEPTH else low
            for i in range(1, wanted * 4 + 1):
                if len(out) >= wanted:
                    break
                key = self.writer.word() if i <= wanted * 3 else f"{self.writer.word()}_{i}"
                if key not in out:
                    out[key] = self.value(extra, key, i, depth + 1)
        if len(out) < low:
            raise SchemaError(f"cannot make {low} properties for this object")
        return out

    def array(self, schema: dict[str, Any], name: str, depth: int) -> list[Any]:
        prefix = schema.get("prefixItems") or []
        items = schema.get("items", {} if not prefix else False)
        if isinstance(items, list):  # the older spelling of prefixItems
            prefix, items = items, schema.get("additionalItems", {})
        low = max(schema.get("minItems", 0), len(prefix) if items is False else 0)
        default_low = 0 if depth > MAX_DEPTH else 1
        high = schema.get("maxItems", len(prefix) if items is False else None)
        if high is not None and high < low:
            raise SchemaError(f"field {name!r}: maxItems is below minItems")
        low_pick = max(low, min(default_low, high if high is not None else default_low))
        if depth > MAX_DEPTH:
            count = low_pick
        else:
            top = DEFAULT_MAX_ITEMS if high is None else min(high, low_pick + DEFAULT_MAX_ITEMS)
            count = self.rng.randint(low_pick, max(low_pick, top))
        singular = name[:-1] if name.endswith("s") and len(name) > 3 else name
        unique = bool(schema.get("uniqueItems"))
        out: list[Any] = []
        seen: set[str] = set()  # items already made, as JSON
        for i in range(count):
            sub = prefix[i] if i < len(prefix) else items
            item = self.value(sub, singular, i + 1, depth + 1)
            if unique:  # draw again until it differs from the items so far
                for _ in range(20):
                    if (key := json.dumps(item, sort_keys=True)) not in seen:
                        break
                    item = self.value(sub, singular, i + 1, depth + 1)
                else:
                    if len(out) >= low:
                        break
                    raise SchemaError(f"field {name!r}: cannot make {low} distinct items")
                seen.add(key)
            out.append(item)
        return out

    def string(self, schema: dict[str, Any], name: str, index: int,
               siblings: frozenset[str]) -> str:
        low = schema.get("minLength", 0)
        high = schema.get("maxLength")
        if high is not None and high < low:
            raise SchemaError(f"field {name!r}: maxLength is below minLength")
        fmt = schema.get("format")
        text = self.formatted(fmt, name) if fmt else None
        if text is None:
            text = self.writer.string_for(name, schema.get("description", ""), index, siblings)
        pattern = schema.get("pattern")
        if pattern is not None:
            return self.matching(pattern, text, name, low, high)
        return _fit(text, low, high, self.writer)

    def formatted(self, fmt: str, name: str) -> str | None:
        """A value in a string ``format`` OpenAI supports, or None for free text."""
        rng = self.rng
        date = f"20{rng.randint(10, 39)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        clock = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
        match fmt:
            case "date-time":
                return f"{date}T{clock}Z"
            case "date":
                return date
            case "time":
                return f"{clock}Z"
            case "duration":
                return f"PT{rng.randint(1, 59)}M{rng.randint(0, 59)}S"
            case "email":
                return f"{self.writer.character().lower()}@example.com"
            case "hostname":
                return f"{self.writer.word()}.example.com"
            case "ipv4":
                return f"192.0.2.{rng.randint(1, 254)}"
            case "ipv6":
                return f"2001:db8::{rng.randint(1, 0xFFFF):x}"
            case "uuid":
                return str(uuid.UUID(int=rng.getrandbits(128), version=4))
            case "uri" | "url" | "iri":
                return f"https://example.com/{self.writer.slug()}"
        return None

    def matching(self, pattern: str, text: str, name: str, low: int, high: int | None) -> str:
        """A string matching ``pattern`` (searched for, as JSON Schema does) within the length
        bounds: the written text if it happens to match, else strings drawn from the pattern.
        A pattern nothing fits is refused rather than ignored."""
        try:
            regex = re.compile(pattern)
        except re.error as err:
            raise SchemaError(f"field {name!r}: invalid pattern {pattern!r}: {err}") from None

        def fits(candidate: str) -> bool:
            return low <= len(candidate) <= (high if high is not None else len(candidate)) and (
                regex.search(candidate) is not None)

        if fits(text):
            return text
        for _ in range(20):
            try:
                candidate = regexgen.sample(pattern, self.rng)
            except regexgen.Unsupported as err:
                raise SchemaError(f"field {name!r}: the local server cannot write strings for "
                                  f"the pattern {pattern!r} ({err})") from None
            if fits(candidate):
                return candidate
        raise SchemaError(f"field {name!r}: no string of {low} to {high} characters matching "
                          f"{pattern!r} was found")

    def number(self, schema: dict[str, Any], name: str, index: int, *, integer: bool
               ) -> int | float:
        span = _Span.of(schema)
        step = schema.get("multipleOf") or (1 if integer else None)
        if integer and index and _ordinal(name) and span.holds(index) and step == 1:
            return index  # scene 1, scene 2, ...
        if step:  # integers are the multiples of 1
            k_low = math.ceil(span.low / step - 1e-9)
            if not span.holds(k_low * step):  # an exclusive bound that is itself a multiple
                k_low += 1
            k_high = math.floor(span.high / step + 1e-9)
            if not span.holds(k_high * step):
                k_high -= 1
            if k_high < k_low:
                raise SchemaError(f"field {name!r}: no multiple of {step} fits its bounds")
            value = self.rng.randint(k_low, min(k_high, k_low + 999)) * step  # small, plausible
            return int(value) if integer else value
        if span.high < span.low or (span.high == span.low and not span.holds(span.low)):
            raise SchemaError(f"field {name!r}: no number fits its bounds")
        exact = span.low + (span.high - span.low) * self.rng.uniform(0.05, 0.95)
        rounded = round(exact, 2)
        return rounded if span.holds(rounded) else exact


class _Span:
    """The bounds of a number; sides not given get plausible small numbers (1 to 100)."""

    def __init__(self, low: float, high: float, open_low: bool, open_high: bool) -> None:
        self.low, self.high, self.open_low, self.open_high = low, high, open_low, open_high

    @classmethod
    def of(cls, schema: dict[str, Any]) -> _Span:
        low, open_low = _side(schema, "minimum", "exclusiveMinimum", max)
        high, open_high = _side(schema, "maximum", "exclusiveMaximum", min)
        if low is None and high is None:
            low, high = 1, 100
        elif low is None:
            low = high - 100  # type: ignore[operator]
        elif high is None:
            high = low + 100
        return cls(low, high, open_low, open_high)  # type: ignore[arg-type]

    def holds(self, value: float) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below


def _side(schema: dict[str, Any], closed: str, open_: str, tighter: Any
          ) -> tuple[float | None, bool]:
    """One side's bound and whether it is exclusive (the tighter one when both are given)."""
    sides = [(v, False) for v in (schema.get(closed),) if _is_number(v)]
    sides += [(v, True) for v in (schema.get(open_),) if _is_number(v)]
    if not sides:
        return None, False
    bound = tighter(v for v, _ in sides)
    return bound, any(v == bound and is_open for v, is_open in sides)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _implied_type(schema: dict[str, Any]) -> str:
    if "properties" in schema or "additionalProperties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    if any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")):
        return "number"
    return "string"


def _ordinal(name: str) -> bool:
    n = name.lower()
    return n in ("number", "index", "order", "position", "scene", "episode", "rank") or (
        n.endswith(("_number", "_index", "_no")))


def _fit(text: str, low: int, high: int | None, writer: Writer) -> str:
    """``text`` grown with more of the story to ``low`` characters, cut at a word to ``high``."""
    while len(text) < low:
        text = f"{text} {writer.sentence()}".strip()
    if high is not None and len(text) > high:
        cut = text[:high]
        space = cut.rfind(" ")
        if space >= max(low, 1):
            cut = cut[:space].rstrip(" ,;:-")
        text = cut if len(cut) >= low else text[:high]
    return text
