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
from pipelines.storage import Storage

R = TypeVar("R")


class MediaTasks(Protocol):
    """Media work on files named by storage keys: wherever it runs, it fetches its inputs into
    its own scratch and uploads what it makes."""

    async def pan(self, image: str, out: str) -> LocalWork: ...

    async def compose(self, lines: list[Line], clip: str, out: str) -> ComposedScene: ...

    async def stitch(self, folder: EpisodeFolder, scenes: Sequence[tuple[int, ComposedScene]],
                     poster_scene: int | None) -> StitchedEpisode: ...


class ThreadMediaTasks:
    """Media CPU work in this process's threads, on ``storage``'s files, at the given encoding.

    ``run`` is the one place the work is started: ``RayMediaTasks`` starts it as Ray tasks
    instead and keeps the rest.
    """

    def __init__(self, storage: Storage | None, encoding: EncodingSettings | None = None
                 ) -> None:
        """``storage``: none for a coordinator that runs scripts only (it refuses media)."""
        self._storage = storage
        self.encoding = encoding or EncodingSettings()

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            raise RuntimeError("media work was asked of tasks given no storage")
        return self._storage

    async def run(self, fn: Callable[..., R], *args: Any) -> R:
        return await asyncio.to_thread(fn, *args)

    async def pan(self, image: str, out: str) -> LocalWork:
        return await self.run(pan_clip, self.storage, image, out, 4, self.encoding)

    async def compose(self, lines: list[Line], clip: str, out: str) -> ComposedScene:
        return await self.run(compose_scene, self.storage, lines, clip, out, self.encoding)

    async def stitch(self, folder: EpisodeFolder, scenes: Sequence[tuple[int, ComposedScene]],
                     poster_scene: int | None) -> StitchedEpisode:
        return await self.run(stitch, self.storage, folder, list(scenes), poster_scene)
