"""The bundled server's answers: valid under the schema the SDK sends, varied, deterministic."""

from __future__ import annotations

import json
from typing import Literal

from hypothesis import given, settings
from hypothesis import strategies as st
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel, Field

from local_server.buckets import EndpointLimits, format_duration
from local_server.textgen import answer
from pipelines.models import OutlineDraft, SceneContent
from pipelines.stages import dialogue_schema, outline_schema


class Line(BaseModel):
    speaker: str
    text: str = Field(min_length=5, max_length=120)
    tone: Literal["calm", "angry", "sly"]
    pause_s: float | None = Field(ge=0, le=3)


class Scene(BaseModel):
    number: int = Field(ge=1, le=50)
    setting: str
    lines: list[Line] = Field(min_length=2, max_length=5)
    twist: bool


def ask(model: type[BaseModel], prompt: str, seed: int = 0, **extra: object) -> str:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": prompt}],
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": model.__name__, "strict": True,
                                            "schema": to_strict_json_schema(model)}},
        **extra,
    }
    return answer(body, seed)


def test_answers_validate_against_the_sdks_strict_schemas() -> None:
    for model in (Scene, SceneContent, OutlineDraft, outline_schema(7), dialogue_schema(4)):
        text = ask(model, "Premise: A lighthouse keeper hides a smuggler during a storm.")
        model.model_validate_json(text)
    assert len(outline_schema(7).model_validate_json(
        ask(outline_schema(7), "Premise: x")).scenes) == 7


def test_answers_are_deterministic_and_varied() -> None:
    prompt = "Premise: Two chefs compete for a haunted restaurant."
    assert ask(Scene, prompt, seed=1) == ask(Scene, prompt, seed=1)
    titles = {json.loads(ask(OutlineDraft, f"Premise: premise number {i} about "
                                           f"{w}"))["title"]
              for i, w in enumerate(["dragons", "bakers", "pilots", "spies", "violins"] * 4)}
    assert len(titles) >= 5


def test_prose_uses_the_premises_words_and_speakers_come_from_the_cast() -> None:
    text = answer({"messages": [{"role": "user", "content": "Premise: A submarine mutiny."}]}, 0)
    assert "submarine" in text or "mutiny" in text
    dialogue = json.loads(ask(dialogue_schema(6), "Premise: x\nCharacters: Mara, Joss"))
    assert {line["speaker"] for line in dialogue["lines"]} <= {"Mara", "Joss"}


@settings(max_examples=60, deadline=None)
@given(st.recursive(
    st.sampled_from([
        {"type": "string"}, {"type": "integer", "minimum": 3, "maximum": 9},
        {"type": "number"}, {"type": "boolean"}, {"enum": ["a", "b"]},
        {"type": "string", "minLength": 30, "maxLength": 40},
    ]),
    lambda inner: st.one_of(
        st.builds(lambda items, lo: {"type": "array", "items": items, "minItems": lo,
                                     "maxItems": lo + 2}, inner, st.integers(0, 3)),
        st.dictionaries(st.sampled_from(["title", "name", "text", "mood", "n", "x"]), inner,
                        min_size=1, max_size=4).map(lambda props: {
                            "type": "object", "properties": props,
                            "required": list(props), "additionalProperties": False}),
        st.builds(lambda a: {"anyOf": [a, {"type": "null"}]}, inner),
    ),
    max_leaves=12,
))
def test_any_simple_schema_gets_a_valid_document(schema: dict) -> None:
    from jsonschema import validate

    body = {"messages": [{"role": "user", "content": "Premise: a"}],
            "response_format": {"type": "json_schema", "json_schema": {"schema": schema}}}
    validate(json.loads(answer(body, 3)), schema)


def test_buckets_burst_refill_and_refusal_consume_nothing() -> None:
    now = [0.0]
    limits = EndpointLimits(rpm=600, tpm=6000, burst_s=1.0, clock=lambda: now[0])
    assert all(limits.admit(5).admitted for _ in range(10))  # one second of burst
    refused = limits.admit(5)
    assert not refused.admitted and refused.kind == "requests"
    assert refused.retry_after_s == 0.1 or abs(refused.retry_after_s - 0.1) < 1e-9
    now[0] = 0.1
    assert limits.admit(5).admitted
    now[0] = 1.2
    big = limits.admit(95)  # 100 - 55 + 110 refilled, capped at 100: 95 fits exactly
    assert big.admitted
    headers = limits.headers()
    assert headers["x-ratelimit-limit-requests"] == "600"
    assert headers["x-ratelimit-remaining-tokens"] == "5"
    assert limits.admit(50).kind == "tokens"
    assert limits.headers()["x-ratelimit-remaining-tokens"] == "5"  # the refusal took nothing


def test_reset_durations_look_like_openais() -> None:
    assert format_duration(0.25) == "250ms"
    assert format_duration(1) == "1s"
    assert format_duration(360) == "6m0s"
    assert format_duration(3723.5) == "1h2m3.5s"
