"""Where an episode's files live: the one place that spells out the folder's layout.

    <root>/<episode id>/
        script.json, script.md               the script, once the episode is done
        episode.mp4, episode.srt, poster.png the stitched episode
        media/scene001/line01.wav …          each line's speech
                       image.png, clip.mp4   the scene's picture and clip
                       scene.mp4             the composed scene

Everything else asks an ``EpisodeFolder`` for a path; nothing joins names by hand. Only
``Artifact`` names are ever served to users.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class Artifact(StrEnum):
    """The files of an episode a user may fetch, by the only names they are served under."""

    SCRIPT_JSON = "script.json"
    SCRIPT_MD = "script.md"
    SUBTITLES = "episode.srt"
    POSTER = "poster.png"
    VIDEO = "episode.mp4"

    @property
    def media_type(self) -> str:
        return _MEDIA_TYPES[self]

    @classmethod
    def named(cls, name: str) -> Artifact | None:
        """The artifact of this name, if it is one (a name from a request is looked up here and
        never joined to a path)."""
        try:
            return cls(name)
        except ValueError:
            return None


_MEDIA_TYPES = {
    Artifact.SCRIPT_JSON: "application/json",
    Artifact.SCRIPT_MD: "text/markdown; charset=utf-8",
    Artifact.SUBTITLES: "application/x-subrip; charset=utf-8",
    Artifact.POSTER: "image/png",
    Artifact.VIDEO: "video/mp4",
}
SCRIPT_ARTIFACTS = (Artifact.SCRIPT_JSON, Artifact.SCRIPT_MD)


@dataclass(frozen=True)
class EpisodeFolder:
    """The folder of one episode under ``root``."""

    root: Path
    episode_id: str

    @property
    def path(self) -> Path:
        return self.root / self.episode_id

    def artifact(self, artifact: Artifact) -> Path:
        return self.path / artifact.value

    def scene(self, scene: int) -> Path:
        return self.path / "media" / f"scene{scene:03d}"

    def speech(self, scene: int, line: int) -> Path:
        return self.scene(scene) / f"line{line:02d}.wav"

    def image(self, scene: int) -> Path:
        return self.scene(scene) / "image.png"

    def clip(self, scene: int) -> Path:
        return self.scene(scene) / "clip.mp4"

    def scene_video(self, scene: int) -> Path:
        return self.scene(scene) / "scene.mp4"
