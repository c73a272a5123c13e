"""Stable episode ids for the CLI.

An id is made from what was asked, not drawn at random: the same command run again on the same
storage names the same episodes, so the coordinator (``submit_many(..., resume=True)``) goes on
with a crashed run's episodes from their stored nodes and shows finished ones as they are,
instead of paying for them again. The position in the run is part of it, so two episodes asked
alike in one run stay two episodes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from pipelines.models import EpisodeRequest

ID_CHARS = 12  # as long as the coordinator's random ids: the same column, the same display


def episode_id(request: EpisodeRequest, index: int) -> str:
    """The id of the ``index``-th episode (from 0) of a run asking ``request``."""
    digest = hashlib.sha256(request.model_dump_json().encode())
    digest.update(b"\0")  # the JSON cannot hold a NUL: no two (request, index) pairs collide
    digest.update(str(index).encode())
    return digest.hexdigest()[:ID_CHARS]


def episode_ids(requests: Sequence[EpisodeRequest]) -> list[str]:
    """The ids of a run's episodes, in its order."""
    return [episode_id(request, index) for index, request in enumerate(requests)]
