"""Removing episodes that finished long ago: their rows, then their folders.

Rows first, in one transaction: a folder left by an interrupted prune is a stray folder, never an
episode whose files are gone. Used by ``showrunner prune`` and, given ``retention_days``, by the
running coordinator every hour.
"""

from __future__ import annotations

import asyncio

from actors.state_store import StateStore
from pipelines.episode_folder import EpisodeFolder
from pipelines.storage import Storage


async def prune(store: StateStore, storage: Storage | None, finished_before: float
                ) -> list[str]:
    """Remove every episode that finished before ``finished_before`` (epoch seconds); returns
    their ids."""
    removed = await store.prune(finished_before)
    if storage is not None:
        def remove_folders() -> None:
            for episode_id in removed:
                storage.remove(EpisodeFolder(episode_id).prefix)

        await asyncio.to_thread(remove_folders)
    return removed
