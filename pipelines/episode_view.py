"""One typed view of an episode: what a watcher polls, what the HTTP API shows (without its
owner and with links), what the CLI's bars and the run report's episode entries are made of.

Built from the record in the coordinator and sent between processes instead of the record: it
is small and holds no server path (``EpisodeFolder`` gives paths to whoever has the root).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from pipelines.episode_folder import Artifact
from pipelines.episode_state import EpisodeRecord
from pipelines.models import EpisodeStatus, SceneState

_VIEW = ConfigDict(frozen=True, extra="forbid")


class EpisodeFigures(BaseModel):
    """What an episode took: the run report's episode entry, so far."""

    model_config = _VIEW

    scenes: int
    scenes_completed: int
    wall_s: float | None  # from start to end; None until it ends
    sequential_s: float  # its nodes' time one at a time
    critical_path_s: float  # its longest chain of nodes: no schedule could beat it
    cost_usd: float
    saved_usd: float = 0.0  # what the call cache saved it
    cpu_s: float  # CPU seconds of its own media work

    @classmethod
    def of(cls, record: EpisodeRecord, states: list[SceneState]) -> EpisodeFigures:
        latencies = record.node_latencies()
        return cls(
            scenes=record.request.scenes,
            scenes_completed=sum(1 for s in states if s is SceneState.DONE),
            wall_s=_round(record.wall_s),
            sequential_s=round(sum(latencies.values()), 4),
            critical_path_s=round(record.plan().critical_path(latencies), 4),
            cost_usd=round(record.cost_usd, 6),
            saved_usd=round(record.saved_usd, 6),
            cpu_s=round(record.media_cpu_s(), 4),
        )


class Missing(BaseModel):
    """Something an episode that ended short of done lacks, and why."""

    model_config = _VIEW

    what: str  # "scene 3", or an artifact's name such as "episode.mp4"
    why: str

    @classmethod
    def of(cls, record: EpisodeRecord, states: list[SceneState]) -> list[Missing]:
        """What a finished episode lacks: each scene not made, and the episode's video. Empty
        while it runs, and for an episode that has everything."""
        if not record.status.finished:
            return []
        ended = record.error or record.status.value
        errors = {}  # scene -> the first error of its failed nodes
        for nid in sorted(record.engine.failed, key=str):
            error = record.nodes[nid].error if nid in record.nodes else None
            if nid.scene is not None and error:
                errors.setdefault(nid.scene, f"{nid}: {error}")
        missing = [cls(what=f"scene {number}", why=errors.get(number, f"not made: {ended}"))
                   for number, state in enumerate(states, start=1)
                   if state is not SceneState.DONE]
        if record.request.media and Artifact.VIDEO not in record.artifacts:
            missing.append(cls(what=Artifact.VIDEO.value, why=ended))
        return missing


class EpisodeView(BaseModel):
    """An episode as everyone outside the coordinator sees it."""

    model_config = _VIEW

    id: str
    owner: str
    status: EpisodeStatus
    title: str | None
    percent: float
    scenes: list[SceneState]
    cost_usd: float
    error: str | None
    last_event_id: int  # views of one episode are ordered by it
    artifacts: list[Artifact]  # files of its folder a user may fetch
    figures: EpisodeFigures
    missing: list[Missing] = []  # once it ended: what it lacks, and why

    @classmethod
    def of(cls, record: EpisodeRecord) -> EpisodeView:
        states = record.scene_states()
        return cls(
            id=record.id,
            owner=record.owner,
            status=record.status,
            title=record.title,
            percent=record.percent,
            scenes=states,
            cost_usd=round(record.cost_usd, 6),
            error=record.error,
            last_event_id=record.events[-1].seq if record.events else 0,
            artifacts=list(record.artifacts),
            figures=EpisodeFigures.of(record, states),
            missing=Missing.of(record, states),
        )

    @property
    def finished(self) -> bool:
        return self.status.finished


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
