"""An episode's script: ``script.json`` for machines and ``script.md``, a readable screenplay.

Both are written to a temporary name and renamed into place, so a reader never sees half a file
and an interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import json

from pydantic import BaseModel

from pipelines.episode_folder import Artifact, EpisodeFolder
from pipelines.episode_state import EpisodeRecord
from pipelines.models import CharacterSketch, DialogueLine, SceneContent, SceneOutline
from pipelines.storage import Storage


class ScriptScene(BaseModel):
    number: int
    outline: SceneOutline
    content: SceneContent | None  # None: this scene was not written
    dialogue: list[DialogueLine] | None


class Script(BaseModel):
    """What the models wrote for one episode, in order."""

    id: str
    title: str | None
    logline: str | None
    premise: str
    style: str
    continuity: str
    characters: list[CharacterSketch]
    scenes: list[ScriptScene]

    @classmethod
    def of(cls, record: EpisodeRecord) -> Script:
        scenes = []
        for number, outline in enumerate(record.scene_outlines(), start=1):
            dialogue = record.dialogue(number)
            scenes.append(ScriptScene(number=number, outline=outline,
                                      content=record.content(number),
                                      dialogue=list(dialogue.lines) if dialogue else None))
        drafts = record.outline_drafts()
        first = drafts[0] if drafts else None
        return cls(
            id=record.id,
            title=first.title if first else record.request.title,
            logline=first.logline if first else None,
            premise=record.request.premise,
            style=record.request.style,
            continuity=record.request.continuity,
            characters=list(first.characters) if first else [],
            scenes=scenes,
        )


def render_markdown(script: Script) -> str:
    out = [f"# {script.title or 'Untitled'}", ""]
    if script.logline:
        out += [f"*{script.logline}*", ""]
    if script.characters:
        out += ["## Characters", ""]
        out += [f"- **{c.name}** — {c.description}" for c in script.characters]
        out.append("")
    for scene in script.scenes:
        outline = scene.outline
        out += [f"## Scene {scene.number}: {outline.title}", "",
                f"**{outline.setting.upper()}**", ""]
        if scene.content is None:
            out += ["*(this scene was not written)*", ""]
            continue
        out += [scene.content.setting, "", scene.content.action, "",
                f"*Mood: {scene.content.mood}*", ""]
        for line in scene.dialogue or []:
            direction = f" *({line.direction})*" if line.direction else ""
            out += [f"**{line.speaker.upper()}**{direction}  ", line.text, ""]
    return "\n".join(out).rstrip() + "\n"


def script_files(record: EpisodeRecord, folder: EpisodeFolder) -> dict[str, str]:
    """The episode's ``script.json`` and ``script.md`` as they stand, by storage key."""
    script = Script.of(record)
    return {folder.artifact(Artifact.SCRIPT_JSON):
            json.dumps(script.model_dump(mode="json"), ensure_ascii=False, indent=2) + "\n",
            folder.artifact(Artifact.SCRIPT_MD): render_markdown(script)}


def write_files(storage: Storage, files: dict[str, str]) -> None:
    for key, text in files.items():
        storage.write(key, text)
