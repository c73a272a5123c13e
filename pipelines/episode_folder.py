"""Where an episode's files live: the one place that spells out the folder's layout, as storage
keys (``pipelines.storage``: a name under the storage's root, never a path on some node).

    <episode id>/
        script.json, script.md               the script, once the episode is done
        episode.mp4, episode.srt, poster.png the stitched episode
        media/scene001/line01.wav …          each line's speech
                       image.png, clip.mp4   the scene's picture and clip
                       scene.mp4             the composed scene

Everything else asks an ``EpisodeFolder`` for a key; nothing joins names by hand. Only
``Artifact`` names are ever served to users.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


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
    """The keys of one episode's files."""

    episode_id: str

    @property
    def prefix(self) -> str:
        return self.episode_id

    def artifact(self, artifact: Artifact) -> str:
        return f"{self.episode_id}/{artifact.value}"

    def scene(self, scene: int) -> str:
        return f"{self.episode_id}/media/scene{scene:03d}"

    def speech(self, scene: int, line: int) -> str:
        return f"{self.scene(scene)}/line{line:02d}.wav"

    def image(self, scene: int) -> str:
        return f"{self.scene(scene)}/image.png"

    def clip(self, scene: int) -> str:
        return f"{self.scene(scene)}/clip.mp4"

    def scene_video(self, scene: int) -> str:
        return f"{self.scene(scene)}/scene.mp4"
