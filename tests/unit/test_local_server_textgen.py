"""The bundled server's answers: valid under the schema the SDK sends, varied, deterministic."""

from __future__ import annotations

import datetime
import json
import re
import uuid
from enum import StrEnum
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel, Field

from local_server.textgen import SchemaError, answer, count_tokens
from local_server.writer import kind_of_description, kind_of_name


class Tone(StrEnum):
    CALM = "calm"
    ANGRY = "angry"
    SLY = "sly"


class Line(BaseModel):
    speaker: str
    text: str = Field(min_length=5, max_length=120)
    direction: str = Field("", max_length=40)
    tone: Tone
    pause_s: float | None = Field(ge=0, le=3)


class Character(BaseModel):
    name: str = Field(min_length=1, max_length=60)
    description: str


class Scene(BaseModel):
    number: int = Field(ge=1, le=50)
    title: str
    setting: str
    kind: Literal["interior", "exterior"]
    lines: list[Line] = Field(min_length=2, max_length=5)
    twist: bool


class Outline(BaseModel):
    title: str = Field(max_length=80)
    logline: str = Field(min_length=40)
    characters: list[Character] = Field(min_length=2, max_length=4)
    scenes: list[Scene] = Field(min_length=3, max_length=3)
    mood: str | None
    episode_code: str = Field(pattern=r"^S\d{2}E\d{2}$")


class Node(BaseModel):
    """Recursive: the answer must end."""

    label: str
    children: list[Node] = Field(max_length=3)


class Odd(BaseModel):
    """The rarer shapes the SDK emits."""

    at: datetime.datetime
    id: uuid.UUID
    tags: set[str] = Field(max_length=3)
    pair: tuple[int, str]
    counts: dict[str, int]
    ratio: float = Field(gt=0, lt=1)
    step: int = Field(multiple_of=5, ge=3, le=30)
    tree: Node
    maybe: Node | None


PREMISE = "Premise: A lighthouse keeper hides a smuggler during a storm.\nCharacters: Mara, Joss"


def messages(prompt: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": "You write television."},
            {"role": "user", "content": prompt}]


def schema_format(model: type[BaseModel]) -> dict[str, Any]:
    """Exactly what ``client.chat.completions.parse(response_format=model)`` sends."""
    return {"type": "json_schema", "json_schema": {
        "name": model.__name__, "strict": True, "schema": to_strict_json_schema(model)}}


def ask(model: type[BaseModel], prompt: str = PREMISE, seed: int = 0, **kw: Any) -> str:
    return answer(messages(prompt), schema_format(model), seed=seed, **kw).text


@pytest.mark.parametrize("model", [Scene, Outline, Odd, Line])
@pytest.mark.parametrize("seed", range(5))
def test_answers_validate_against_the_sdks_strict_schemas(model: type[BaseModel],
                                                          seed: int) -> None:
    model.model_validate_json(ask(model, seed=seed))


def test_answers_read_like_a_script() -> None:
    outline = Outline.model_validate_json(ask(Outline))
    assert len(outline.scenes) == 3
    assert [s.number for s in outline.scenes] == [1, 2, 3]  # numbered in order
    assert {c.name for c in outline.characters} >= {"Mara", "Joss"}  # the prompt's cast
    speakers = {line.speaker for scene in outline.scenes for line in scene.lines}
    assert speakers <= {"Mara", "Joss"}
    words = " ".join([outline.title, outline.logline] + [s.title for s in outline.scenes])
    assert re.search(r"lighthouse|keeper|smuggler|storm", words.lower())
    assert outline.title != outline.logline and outline.characters[0].description


def test_the_pipelines_own_schemas_are_answered() -> None:
    from pipelines.stages import dialogue_schema, outline_schema

    for model in (outline_schema(7), dialogue_schema(4)):
        model.model_validate_json(ask(model))
    assert len(outline_schema(7).model_validate_json(ask(outline_schema(7))).scenes) == 7


def test_same_seed_and_request_give_the_same_answer() -> None:
    assert ask(Outline, seed=1) == ask(Outline, seed=1)
    assert ask(Outline, seed=1) != ask(Outline, seed=2)
    assert ask(Outline, request_seed=7) != ask(Outline, request_seed=8)


def test_answers_vary_across_prompts() -> None:
    subjects = ["dragons", "bakers", "pilots", "spies", "violins"] * 4
    titles = {
        json.loads(ask(Scene, f"Premise: episode {i} about rival {subject}"))["title"]
        for i, subject in enumerate(subjects)
    }
    assert len(titles) >= 8


def test_prose_without_a_format_uses_the_prompts_words() -> None:
    made = answer(messages("Premise: A submarine mutiny."))
    assert made.finish_reason == "stop"
    assert "submarine" in made.text or "mutiny" in made.text
    assert made.completion_tokens == count_tokens(made.text)
    assert made.prompt_tokens == -(-len("You write television.Premise: A submarine mutiny.") // 4)


def test_json_object_format_is_a_json_object() -> None:
    made = answer(messages(PREMISE), {"type": "json_object"})
    assert isinstance(json.loads(made.text), dict)


def test_max_tokens_cuts_the_answer_and_says_length() -> None:
    full = answer(messages(PREMISE), schema_format(Outline))
    cut = answer(messages(PREMISE), schema_format(Outline), max_tokens=5)
    assert (cut.finish_reason, cut.completion_tokens) == ("length", 5)
    assert full.text.startswith(cut.text) and len(cut.text) == 20
    roomy = answer(messages(PREMISE), schema_format(Outline), max_tokens=100_000)
    assert roomy.finish_reason == "stop" and roomy.text == full.text


@pytest.mark.parametrize("schema", [
    {"type": "string", "pattern": r"^(q)\1z$"},  # a backreference: not written
    {"type": "integer", "minimum": 5, "maximum": 4},
    {"type": "array", "items": {"enum": ["a"]}, "minItems": 2, "uniqueItems": True},
    {"$ref": "#/$defs/missing"},
    {"type": "object", "properties": {"me": {"$ref": "#"}}, "required": ["me"]},  # no end
])
def test_unsatisfiable_schemas_are_refused(schema: dict[str, Any]) -> None:
    with pytest.raises(SchemaError):
        answer(messages("x"), {"type": "json_schema", "json_schema": {"name": "s",
                                                                      "schema": schema}})


# -- any simple schema ----------------------------------------------------------------------------

LEAVES = st.sampled_from([
    {"type": "string"},
    {"type": "string", "minLength": 30, "maxLength": 40},
    {"type": "string", "maxLength": 3},
    {"type": "string", "format": "date"},
    {"type": "string", "pattern": "^[a-z]{2}[0-9]+$"},
    {"type": "integer", "minimum": 3, "maximum": 9},
    {"type": "integer", "exclusiveMaximum": -10},
    {"type": "number", "exclusiveMinimum": 0.5, "exclusiveMaximum": 0.6},
    {"type": "number"},
    {"type": "boolean"},
    {"type": "null"},
    {"enum": ["a", "b", 3]},
    {"const": "fixed"},
    {"type": ["string", "null"]},
])
NAMES = st.sampled_from(["title", "name", "speaker", "text", "mood", "setting", "summary",
                         "number", "direction", "x", "n"])


def _object(props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props),
            "additionalProperties": False}


SCHEMAS = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.builds(lambda items, lo, extra: {"type": "array", "items": items, "minItems": lo,
                                            "maxItems": lo + extra},
                  inner, st.integers(0, 3), st.integers(0, 3)),
        st.dictionaries(NAMES, inner, min_size=1, max_size=4).map(_object),
        st.builds(lambda a: {"anyOf": [a, {"type": "null"}]}, inner),
        st.builds(lambda a, b: {"anyOf": [a, b]}, inner, inner),
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=SCHEMAS, seed=st.integers(0, 2**32))
def test_any_simple_schema_gets_a_valid_document(schema: dict[str, Any], seed: int) -> None:
    # Reached through $ref and an Optional, as the SDK lays out nested models.
    root = _object({"a": {"$ref": "#/$defs/Inner"},
                    "b": {"anyOf": [{"$ref": "#/$defs/Inner"}, {"type": "null"}]}})
    root["$defs"] = {"Inner": schema}
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": root}}
    document = json.loads(answer(messages("Premise: a heist at the opera"), fmt, seed=seed).text)
    Draft202012Validator(root).validate(document)


@pytest.mark.parametrize(("name", "kind"), [
    ("title", "title"), ("sceneTitle", "title"), ("speaker", "speaker"), ("name", "character"),
    ("character_description", "description"), ("setting", "place"), ("tone", "mood"),
    ("stage_direction", "direction"), ("text", "line"), ("logline", "summary"),
    ("summary", "summary"), ("foo", None),
])
def test_field_names_decide_what_is_written(name: str, kind: str | None) -> None:
    assert kind_of_name(name) == kind


def test_a_description_decides_when_the_name_says_nothing() -> None:
    assert kind_of_description("A line of dialogue spoken by a character.") == "line"
    assert kind_of_description("The character's name.") == "character"
    assert kind_of_description("Where the scene takes place, its setting.") == "place"

    class Quip(BaseModel):
        q: str = Field(description="The title of the episode")

    assert json.loads(ask(Quip))["q"].startswith("The ")
