"""An episode's state, kept in one serialisable record so it can be checkpointed and resumed.

Everything the coordinator knows about an episode is here: the request, the engine's state (which
nodes are done, failed, skipped or running), each node's result and figures, and the events a
watcher has been sent. Scene states and progress are derived from the engine's state, never
stored twice.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol, TypeVar

from pydantic import BaseModel, Field

from pipelines.composition import ComposedScene, LocalWork, StitchedEpisode
from pipelines.engine import EngineState
from pipelines.episode_folder import Artifact
from pipelines.models import (
    EpisodeRequest,
    EpisodeStatus,
    OutlineDraft,
    SceneContent,
    SceneDialogue,
    SceneOutline,
    SceneState,
)
from pipelines.planner import (
    EpisodePlan,
    NodeId,
    NodeKind,
    compose_id,
    content_id,
    dialogue_id,
    outline_id,
    plan_episode,
)

R = TypeVar("R")


class EventKind(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    NODE_STARTED = "node_started"
    NODE_FINISHED = "node_finished"
    NODE_RETRYING = "node_retrying"  # its work was lost (a killed process): it runs again
    NODE_FAILED = "node_failed"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @classmethod
    def ending(cls, status: EpisodeStatus) -> EventKind:
        """The event that says an episode ended in ``status``."""
        return _ENDINGS[status]

    @property
    def ends_episode(self) -> bool:
        return self in _ENDINGS.values()


_ENDINGS = {EpisodeStatus.COMPLETED: EventKind.COMPLETED, EpisodeStatus.FAILED: EventKind.FAILED,
            EpisodeStatus.CANCELLED: EventKind.CANCELLED}


class Event(BaseModel):
    """One progress event; ``seq`` numbers an episode's events from 1, for resumable streams."""

    seq: int
    at_s: float
    kind: EventKind
    node: NodeId | None = None
    percent: float = 0.0
    message: str = ""


class CallFigures(Protocol):
    """What one provider call cost and how it went, as every provider result reports it."""

    @property
    def latency_s(self) -> float: ...

    @property
    def wait_s(self) -> float: ...

    @property
    def rate_limited(self) -> int: ...

    @property
    def cost_usd(self) -> float: ...

    @property
    def cache_hit(self) -> bool: ...

    @property
    def saved_usd(self) -> float: ...


class NodeRecord(BaseModel):
    """What happened to one node: when, how long its calls took, what it cost, why it failed."""

    started_s: float | None = None  # seconds since the episode started
    finished_s: float | None = None
    latency_s: float = 0.0  # model-call or task time, the sum over its calls
    wait_s: float = 0.0  # limiter wait, the sum over its calls
    calls: int = 0
    rate_limited: int = 0
    cost_usd: float = 0.0
    cache_hits: int = 0  # of ``calls``: answered by the call cache, paying nothing
    saved_usd: float = 0.0  # what those would have cost
    error: str | None = None
    reruns: int = 0  # times its work was lost under it and run again

    def account(self, call: CallFigures) -> None:
        """Add one provider call's figures."""
        self.calls += 1
        self.latency_s += call.latency_s
        self.wait_s += call.wait_s
        self.rate_limited += call.rate_limited
        self.cost_usd += call.cost_usd
        self.cache_hits += call.cache_hit
        self.saved_usd += call.saved_usd


class MediaFile(LocalWork):
    """A speech, picture or clip file in the episode's folder (``EpisodeFolder`` says where).
    Made by a provider (``size_bytes``), or here (``cpu_s``, ``run_s``)."""

    size_bytes: int = 0


# What a node makes, by its kind: a chunk of outline, a scene's content or dialogue, a media file,
# a composed scene, or the stitched episode.
NodeResult = (OutlineDraft | SceneContent | SceneDialogue | MediaFile | ComposedScene
              | StitchedEpisode)
# Which of them each kind makes: how a stored result is read back as its own type.
RESULT_TYPES: dict[NodeKind, type[NodeResult]] = {
    NodeKind.OUTLINE: OutlineDraft, NodeKind.CONTENT: SceneContent,
    NodeKind.DIALOGUE: SceneDialogue, NodeKind.SPEECH: MediaFile, NodeKind.IMAGE: MediaFile,
    NodeKind.CLIP: MediaFile, NodeKind.COMPOSE: ComposedScene, NodeKind.STITCH: StitchedEpisode,
}


class EpisodeRecord(BaseModel):
    id: str
    request: EpisodeRequest
    owner: str = ""  # the tenant that submitted it; the HTTP API shows each tenant only its own
    status: EpisodeStatus = EpisodeStatus.QUEUED
    submitted_at: float  # wall-clock epoch seconds
    started_at: float | None = None
    finished_at: float | None = None
    arrival: int = 0  # submission order, for ties in priority
    engine: EngineState = Field(default_factory=EngineState)
    nodes: dict[NodeId, NodeRecord] = Field(default_factory=dict)  # nodes that started
    results: dict[NodeId, NodeResult] = Field(default_factory=dict)
    events: list[Event] = Field(default_factory=list)
    error: str | None = None  # why it failed; for a completed episode, the scenes it skipped
    artifacts: list[Artifact] = Field(default_factory=list)  # files of its folder users may fetch

    def plan(self) -> EpisodePlan:
        lines = self.request.lines_per_scene if self.request.media else 0
        return plan_episode(self.request.scenes, self.request.continuity_mode, lines)

    # -- results, typed ------------------------------------------------------------------------

    def result(self, nid: NodeId, kind: type[R]) -> R | None:
        """The result of node ``nid``, if it made one, as the type its kind makes."""
        value = self.results.get(nid)
        if value is None:
            return None
        if not isinstance(value, kind):
            raise TypeError(f"{nid} holds a {type(value).__name__}, not a {kind.__name__}")
        return value

    def outline_drafts(self) -> list[OutlineDraft]:
        """The outline chunks written so far, in order."""
        drafts = []
        for chunk in self.plan().chunks():
            draft = self.result(outline_id(chunk), OutlineDraft)
            if draft is None:
                break
            drafts.append(draft)
        return drafts

    def scene_outlines(self) -> list[SceneOutline]:
        """The outline's scenes so far, numbered as the plan numbers them (1, 2, ...)."""
        scenes: list[SceneOutline] = []
        for chunk in self.outline_drafts():
            for s in chunk.scenes:
                scenes.append(s.model_copy(update={"number": len(scenes) + 1}))
        return scenes

    def content(self, scene: int) -> SceneContent | None:
        return self.result(content_id(scene), SceneContent)

    def dialogue(self, scene: int) -> SceneDialogue | None:
        return self.result(dialogue_id(scene), SceneDialogue)

    def composed_scenes(self) -> list[tuple[int, ComposedScene]]:
        """Every scene composed so far, in order."""
        composed = ((s, self.result(compose_id(s), ComposedScene))
                    for s in range(1, self.request.scenes + 1))
        return [(s, c) for s, c in composed if c is not None]

    @property
    def title(self) -> str | None:
        drafts = self.outline_drafts()
        return drafts[0].title if drafts else self.request.title

    # -- progress and figures ----------------------------------------------------------------

    def node(self, nid: NodeId) -> NodeRecord:
        """The figures of a node, made when it first starts."""
        record = self.nodes.get(nid)
        if record is None:
            record = self.nodes[nid] = NodeRecord()
        return record

    def scene_states(self) -> list[SceneState]:
        return self.engine.scene_states(self.plan())

    @property
    def percent(self) -> float:
        return round(100.0 * self.engine.settled() / len(self.plan().nodes), 1)

    @property
    def cost_usd(self) -> float:
        return sum(n.cost_usd for n in self.nodes.values())

    @property
    def saved_usd(self) -> float:
        """What the call cache saved this episode."""
        return sum(n.saved_usd for n in self.nodes.values())

    @property
    def wall_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    def node_latencies(self) -> dict[NodeId, float]:
        """Each node's own time: its calls' latency, or for work done here the time it ran (a
        composition's record also holds its wait for a free CPU, which is queueing, not work)."""
        latencies = {nid: n.latency_s for nid, n in self.nodes.items()}
        for nid, result in self.results.items():
            if isinstance(result, LocalWork) and result.run_s > 0 and nid in latencies:
                latencies[nid] = min(latencies[nid], result.run_s)
        return latencies

    def media_cpu_s(self) -> float:
        """CPU seconds of the episode's own media work (compositions, clips made here)."""
        return sum(r.cpu_s for r in self.results.values() if isinstance(r, LocalWork))

    def stage_busy_s(self) -> dict[NodeKind, float]:
        busy = dict.fromkeys(NodeKind, 0.0)
        for nid, record in self.nodes.items():
            busy[nid.kind] += record.latency_s
        return busy
