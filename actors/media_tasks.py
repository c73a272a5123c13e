"""The CPU work of an episode's media nodes: a clip panned from a still, a composed scene, the
stitched episode. Ray tasks in a cluster (``actors.remote.RayMediaTasks``), threads without Ray."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from pipelines.composition import (
    ComposedScene,
    Line,
    LocalWork,
    StitchedEpisode,
    compose_scene,
    pan_clip,
    stitch,
)
from pipelines.episode_folder import EpisodeFolder
from pipelines.settings import EncodingSettings

R = TypeVar("R")


class MediaTasks(Protocol):
    async def pan(self, image: str, out_path: str) -> LocalWork: ...

    async def compose(self, lines: list[Line], clip: str, out_path: str) -> ComposedScene: ...

    async def stitch(self, folder: EpisodeFolder, scenes: Sequence[tuple[int, ComposedScene]],
                     poster_scene: int | None) -> StitchedEpisode: ...


class ThreadMediaTasks:
    """Media CPU work in this process's threads, at the given encoding.

    ``run`` is the one place the work is started: ``RayMediaTasks`` starts it as Ray tasks
    instead and keeps the rest.
    """

    def __init__(self, encoding: EncodingSettings | None = None) -> None:
        self.encoding = encoding or EncodingSettings()

    async def run(self, fn: Callable[..., R], *args: Any) -> R:
        return await asyncio.to_thread(fn, *args)

    async def pan(self, image: str, out_path: str) -> LocalWork:
        return await self.run(pan_clip, image, out_path, 4, self.encoding)

    async def compose(self, lines: list[Line], clip: str, out_path: str) -> ComposedScene:
        return await self.run(compose_scene, lines, clip, out_path, self.encoding)

    async def stitch(self, folder: EpisodeFolder, scenes: Sequence[tuple[int, ComposedScene]],
                     poster_scene: int | None) -> StitchedEpisode:
        return await self.run(stitch, folder, list(scenes), poster_scene)
