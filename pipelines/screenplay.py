"""An episode's files: ``script.json`` for machines and ``script.md``, a readable screenplay.

Files are written to a temporary name and renamed into place, so a reader never sees half a file
and an interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.episode_state import EpisodeRecord


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` to a temporary name beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def script_data(record: EpisodeRecord) -> dict:
    outlines = record.scene_outlines()
    scenes = []
    for number, outline in enumerate(outlines, start=1):
        content = record.contents.get(number)
        dialogue = record.dialogues.get(number)
        scenes.append({
            "number": number,
            "outline": outline.model_dump(mode="json"),
            "content": content.model_dump(mode="json") if content else None,
            "dialogue": [line.model_dump(mode="json") for line in dialogue.lines]
            if dialogue else None,
        })
    first = record.outline[0] if record.outline else None
    return {
        "id": record.id,
        "title": first.title if first else record.request.title,
        "logline": first.logline if first else None,
        "premise": record.request.premise,
        "style": record.request.style,
        "continuity": record.request.continuity,
        "characters": [c.model_dump(mode="json") for c in first.characters] if first else [],
        "scenes": scenes,
    }


def render_markdown(data: dict) -> str:
    out = [f"# {data['title'] or 'Untitled'}", ""]
    if data["logline"]:
        out += [f"*{data['logline']}*", ""]
    if data["characters"]:
        out += ["## Characters", ""]
        out += [f"- **{c['name']}** — {c['description']}" for c in data["characters"]]
        out.append("")
    for scene in data["scenes"]:
        outline = scene["outline"]
        out += [f"## Scene {scene['number']}: {outline['title']}", "",
                f"**{outline['setting'].upper()}**", ""]
        if scene["content"] is None:
            out += ["*(this scene was not written)*", ""]
            continue
        out += [scene["content"]["setting"], "", scene["content"]["action"], "",
                f"*Mood: {scene['content']['mood']}*", ""]
        for line in scene["dialogue"] or []:
            direction = f" *({line['direction']})*" if line["direction"] else ""
            out += [f"**{line['speaker'].upper()}**{direction}  ", line["text"], ""]
    return "\n".join(out).rstrip() + "\n"


def write_episode_files(record: EpisodeRecord, root: str) -> str:
    """Write ``<root>/<episode id>/script.json`` and ``script.md``; return the folder."""
    folder = Path(root) / record.id
    data = script_data(record)
    write_atomic(folder / "script.json", json.dumps(data, ensure_ascii=False, indent=2) + "\n")
    write_atomic(folder / "script.md", render_markdown(data))
    return str(folder)
