"""An episode's state, kept in one serialisable structure so it can be checkpointed and resumed.

Everything the coordinator knows about an episode is here: the request, each node's record, what
the models wrote, and the events a watcher has been sent. Scene states are derived from the node
records, never stored twice.
"""

from __future__ import annotations

import functools
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from pipelines.models import (
    Continuity,
    EpisodeRequest,
    EpisodeStatus,
    OutlineDraft,
    SceneContent,
    SceneDialogue,
    SceneOutline,
    SceneState,
)
from pipelines.planner import EpisodePlan, NodeKind, plan_episode


@functools.lru_cache(maxsize=256)
def _plan(scenes: int, continuity: str, lines: int) -> EpisodePlan:
    # Plans are pure functions of these three and read-only once made; status polls ask for
    # them many times a second, so equal requests share one.
    return plan_episode(scenes, Continuity.parse(continuity), lines)


class NodeState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


class NodeRecord(BaseModel):
    """What happened to one node: when, how long the calls took, what it cost, why it failed."""

    state: NodeState = NodeState.PENDING
    started_s: float | None = None  # seconds since the episode started
    finished_s: float | None = None
    latency_s: float = 0.0  # model-call time, the sum over its calls
    wait_s: float = 0.0  # limiter wait, the sum over its calls
    calls: int = 0
    rate_limited: int = 0
    cost_usd: float = 0.0
    error: str | None = None


class Event(BaseModel):
    """One progress event; ``seq`` numbers an episode's events from 1, for resumable streams."""

    seq: int
    at_s: float
    kind: str  # queued, started, node_started, node_finished, node_failed, completed, failed, ...
    node: str | None = None
    percent: float = 0.0
    message: str = ""


class EpisodeRecord(BaseModel):
    id: str
    request: EpisodeRequest
    owner: str = ""  # the tenant that submitted it; the HTTP API shows each tenant only its own
    status: EpisodeStatus = EpisodeStatus.QUEUED
    submitted_at: float  # wall-clock epoch seconds
    started_at: float | None = None
    finished_at: float | None = None
    arrival: int = 0  # submission order, for ties in priority
    nodes: dict[str, NodeRecord] = Field(default_factory=dict)
    outline: list[OutlineDraft] = Field(default_factory=list)  # by chunk, in order
    contents: dict[int, SceneContent] = Field(default_factory=dict)
    dialogues: dict[int, SceneDialogue] = Field(default_factory=dict)
    events: list[Event] = Field(default_factory=list)
    error: str | None = None
    output_dir: str | None = None
    media: dict[str, str] = Field(default_factory=dict)  # node id -> the file it made
    scene_videos: dict[int, dict[str, Any]] = Field(default_factory=dict)  # composed scenes
    files: dict[str, str] = Field(default_factory=dict)  # episode.mp4, .srt, poster.png

    def plan(self) -> EpisodePlan:
        lines = self.request.lines_per_scene if self.request.media else 0
        return _plan(self.request.scenes, self.request.continuity, lines)

    def scene_outlines(self) -> list[SceneOutline]:
        """The outline's scenes so far, numbered as the plan numbers them (1, 2, ...)."""
        scenes: list[SceneOutline] = []
        for chunk in self.outline:
            for s in chunk.scenes:
                scenes.append(s.model_copy(update={"number": len(scenes) + 1}))
        return scenes

    def scene_states(self) -> list[SceneState]:
        """Each scene's state, from the states of all of its nodes."""
        by_scene: dict[int, list[NodeState]] = {}
        for node in self.plan().nodes.values():
            if node.scene is not None:
                by_scene.setdefault(node.scene, []).append(self.nodes[node.id].state)
        states = []
        for scene in range(1, self.request.scenes + 1):
            mine = by_scene.get(scene, [])
            if NodeState.FAILED in mine:
                states.append(SceneState.FAILED)
            elif NodeState.SKIPPED in mine:
                states.append(SceneState.SKIPPED)
            elif mine and all(s is NodeState.DONE for s in mine):
                states.append(SceneState.DONE)
            elif any(s is not NodeState.PENDING for s in mine):
                states.append(SceneState.RUNNING)
            else:
                states.append(SceneState.PENDING)
        return states

    @property
    def percent(self) -> float:
        if not self.nodes:
            return 0.0
        settled = sum(
            1 for n in self.nodes.values()
            if n.state in (NodeState.DONE, NodeState.FAILED, NodeState.SKIPPED)
        )
        return round(100.0 * settled / len(self.nodes), 1)

    @property
    def cost_usd(self) -> float:
        return sum(n.cost_usd for n in self.nodes.values())

    @property
    def wall_s(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else None
        return None if end is None else end - self.started_at

    def stage_busy_s(self) -> dict[str, float]:
        busy: dict[str, float] = {k.value: 0.0 for k in NodeKind}
        for nid, record in self.nodes.items():
            busy[nid.split(":", 1)[0]] += record.latency_s
        return busy

    def summary(self) -> dict:
        """Status, each scene's state, percent, cost: what a watcher polls."""
        return {
            "id": self.id,
            "status": self.status.value,
            "title": self.outline[0].title if self.outline else self.request.title,
            "percent": self.percent,
            "scenes": [s.value for s in self.scene_states()],
            "cost_usd": round(self.cost_usd, 6),
            "error": self.error,
            "output_dir": self.output_dir,
            "files": dict(self.files),
        }
