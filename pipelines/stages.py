"""Prompts and parsing of each text stage. Pure: builds messages, validates answers.

A prompt holds only what its node's inputs give it: the outline of the scenes up to its own, its
own content, and the speeches of the earlier scenes its continuity mode allows — never a later
scene's text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any, Generic, TypeVar

from openai.lib._parsing._completions import type_to_response_format_param
from pydantic import BaseModel, Field, ValidationError, create_model

from pipelines.errors import StageOutputError
from pipelines.models import (
    DialogueLine,
    EpisodeRequest,
    OutlineDraft,
    SceneContent,
    SceneDialogue,
    SceneOutline,
)

M = TypeVar("M", bound=BaseModel)

SYSTEM = (
    "You are the writers' room of a television series. Answer with JSON that follows the given "
    "schema exactly. Keep every scene consistent with the outline and with what came before."
)


@dataclass(frozen=True)
class StageCall(Generic[M]):
    """One model call a node makes: the messages, the schema it must answer in, its budget."""

    messages: list[dict[str, str]]
    schema: type[M]
    max_tokens: int

    @property
    def response_format(self) -> dict[str, Any]:
        return dict(type_to_response_format_param(self.schema))  # type: ignore[arg-type]

    def parse(self, text: str) -> M:
        return self.schema.model_validate_json(text)

    def with_correction(self, answer: str, error: ValidationError) -> StageCall[M]:
        """The same call, told what was wrong with its first answer."""
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'answer'}: {e['msg']}" for e in error.errors()
        )[:1500]
        return StageCall(
            [
                *self.messages,
                {"role": "assistant", "content": answer[:4000]},
                {"role": "user", "content": f"That answer was invalid ({problems}). "
                                            "Answer again with JSON that follows the schema."},
            ],
            self.schema,
            self.max_tokens,
        )

    def gave_up(self, error: ValidationError) -> StageOutputError:
        """What to raise when the corrected answer did not validate either."""
        return StageOutputError(f"the model's answer did not follow the {self.schema.__name__} "
                                f"schema twice: {error.errors()[0]['msg']}")


@cache
def _exactly(base: type[M], field: str, item: type[BaseModel], count: int) -> type[M]:
    """``base`` with its list ``field`` held to exactly ``count`` items, so the schema the
    model is given says how many (and the answer is checked for it)."""
    fields: dict[str, Any] = {field: (list[item], Field(min_length=count, max_length=count))}
    return create_model(base.__name__, __base__=base, **fields)


def outline_schema(scenes: int) -> type[OutlineDraft]:
    return _exactly(OutlineDraft, "scenes", SceneOutline, scenes)


def dialogue_schema(lines: int) -> type[SceneDialogue]:
    return _exactly(SceneDialogue, "lines", DialogueLine, lines)


def _premise_block(request: EpisodeRequest) -> str:
    lines = [f"Premise: {request.premise}", f"Style: {request.style}"]
    if request.title:
        lines.append(f"Working title: {request.title}")
    if request.characters:
        lines.append("Characters: " + ", ".join(c.name for c in request.characters))
    return "\n".join(lines)


def _outline_lines(scenes: list[SceneOutline]) -> str:
    return "\n".join(
        f"Scene {s.number}: {s.title} — {s.setting}. {s.summary} "
        f"(with {', '.join(s.characters)})"
        for s in scenes
    )


def outline_call(
    request: EpisodeRequest, scene_numbers: range, earlier: list[OutlineDraft]
) -> StageCall[OutlineDraft]:
    """Outline ``scene_numbers``; a later chunk sees the earlier chunks' outline."""
    parts = [
        _premise_block(request),
        f"The episode has {request.scenes} scenes.",
    ]
    if earlier:
        parts.append(f"Episode title: {earlier[0].title}\nLogline: {earlier[0].logline}")
        parts.append("Scenes outlined so far:\n" + _outline_lines(
            [s for chunk in earlier for s in chunk.scenes]
        ))
    parts.append(
        f"Outline scenes {scene_numbers.start} to {scene_numbers.stop - 1}: for each, its number, "
        "a title, the setting, a summary of what happens and the characters in it. Also give "
        "the episode's title, a one-sentence logline and its main characters."
    )
    return StageCall(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}],
        outline_schema(len(scene_numbers)),
        max_tokens=400 + 220 * len(scene_numbers),
    )


def content_call(
    request: EpisodeRequest, outline: list[SceneOutline], scene: int
) -> StageCall[SceneContent]:
    """Write a scene's setting, action and mood from the outline up to that scene."""
    known = [s for s in outline if s.number <= scene]
    text = (
        f"{_premise_block(request)}\n\nOutline so far:\n{_outline_lines(known)}\n\n"
        f"Write scene {scene}: describe the setting in detail, the action (what the characters "
        f"do, beat by beat), and the mood."
    )
    return StageCall(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
        SceneContent,
        max_tokens=700,
    )


def dialogue_call(
    request: EpisodeRequest,
    outline: SceneOutline,
    content: SceneContent,
    earlier: dict[int, SceneDialogue],
) -> StageCall[SceneDialogue]:
    """Write a scene's lines, seeing the speeches of the earlier scenes it is allowed to see."""
    parts = [_premise_block(request)]
    for number in sorted(earlier):
        speeches = "\n".join(f"{line.speaker}: {line.text}" for line in earlier[number].lines)
        parts.append(f"Scene {number} dialogue (already written):\n{speeches}")
    parts.append(
        f"Scene {outline.number}: {outline.title}. Setting: {content.setting}\n"
        f"Action: {content.action}\nMood: {content.mood}\n"
        f"Characters: {', '.join(outline.characters)}"
    )
    parts.append(
        f"Write exactly {request.lines_per_scene} lines of dialogue for scene {outline.number}: "
        "each with the speaker, the line, and a short stage direction. Continue naturally from "
        "the earlier dialogue."
    )
    return StageCall(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}],
        dialogue_schema(request.lines_per_scene),
        max_tokens=200 + 90 * request.lines_per_scene,
    )


def render_json(model: BaseModel) -> str:
    return json.dumps(model.model_dump(mode="json"), ensure_ascii=False, indent=2)
