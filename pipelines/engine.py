"""The progress of one episode's graph, as a pure state machine. No I/O, no event loop.

Every node is in exactly one state:

    pending ──inputs resolved──▶ ready ──start_ready()──▶ running ──mark_done()───▶ done
                                   ▲                         │ └────mark_failed()──▶ failed
                                   └──────abandon()──────────┘
    pending / ready ──a failed node of their own scene, under "skip"──▶ skipped

A node's input is *resolved* once it is done, or, when the episode skips failed scenes, once it
failed or was skipped: the rest of the episode goes on without that scene. When the episode fails
on a failed scene (the default), or a node that belongs to no scene fails (an outline chunk, the
stitch), nothing new starts and the episode is over once what runs has finished. ``stop(reason)``
does the same from outside (a spent budget).

Within an episode at most ``window`` nodes run at once, fewer while the provider answers 429
(additive increase, multiplicative decrease). A clip job waits at its provider for a minute and
is bounded by the provider's own job slots, so it holds none of the window.

The caller (``actors.executor``) only starts what ``start_ready`` hands it, awaits it and reports
back with ``mark_*``. ``EngineState`` is all there is to keep of it: the engine is rebuilt from it
and the plan, so a checkpoint of it resumes the episode from its finished nodes. Modelled on
Dagster's ``ActiveExecution``.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, Field

from pipelines.models import EpisodeStatus, SceneState
from pipelines.planner import EpisodePlan, Node, NodeId, NodeKind

# Kinds whose nodes hold no place in an episode's window (see the module docstring).
UNWINDOWED = frozenset({NodeKind.CLIP})


class NodeState(StrEnum):
    PENDING = "pending"
    READY = "ready"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


class ConcurrencyWindow(BaseModel):
    """Additive increase, multiplicative decrease of one episode's node concurrency."""

    maximum: int = Field(ge=1)
    size: float = 0.0  # set to ``maximum`` when made
    since_cut: int = 0  # results since the last cut

    def model_post_init(self, _: object) -> None:
        if self.size <= 0:
            self.size = float(self.maximum)

    @property
    def limit(self) -> int:
        return max(1, int(self.size))

    def on_result(self, rate_limited: bool) -> None:
        self.since_cut += 1
        if rate_limited and self.since_cut >= self.limit:
            # At most one cut per window's worth of results: one wave of 429s is one signal.
            self.size = max(1.0, self.size / 2)
            self.since_cut = 0
        elif not rate_limited:
            self.size = min(float(self.maximum), self.size + 1.0 / self.size)


class EngineState(BaseModel):
    """What an episode's engine keeps: the nodes started, finished, failed and skipped, its
    window, and why it stopped (if something outside stopped it). Pending and ready follow
    from these and the plan."""

    running: set[NodeId] = Field(default_factory=set)
    done: set[NodeId] = Field(default_factory=set)
    failed: set[NodeId] = Field(default_factory=set)
    skipped: set[NodeId] = Field(default_factory=set)
    window: ConcurrencyWindow | None = None
    stop_reason: str | None = None

    def node_state(self, nid: NodeId) -> NodeState:
        """A node's state as far as the record tells; pending covers ready (which depends on
        the plan and the failure policy: ask the engine)."""
        for state, members in ((NodeState.DONE, self.done), (NodeState.RUNNING, self.running),
                               (NodeState.FAILED, self.failed),
                               (NodeState.SKIPPED, self.skipped)):
            if nid in members:
                return state
        return NodeState.PENDING

    def settled(self) -> int:
        """Nodes that will not run again: done, failed or skipped."""
        return len(self.done) + len(self.failed) + len(self.skipped)

    def scene_states(self, plan: EpisodePlan) -> list[SceneState]:
        """Each scene's state, from the states of all of its nodes."""
        states = []
        for scene in range(1, plan.scenes + 1):
            mine = plan.by_scene[scene]
            if not self.failed.isdisjoint(mine):
                states.append(SceneState.FAILED)
            elif not self.skipped.isdisjoint(mine):
                states.append(SceneState.SKIPPED)
            elif self.done.issuperset(mine):
                states.append(SceneState.DONE)
            elif not (self.done.isdisjoint(mine) and self.running.isdisjoint(mine)):
                states.append(SceneState.RUNNING)
            else:
                states.append(SceneState.PENDING)
        return states


@dataclass(frozen=True)
class Outcome:
    """How an episode ended. ``reason`` is None for a failure that only the failed nodes can
    explain (``failed`` lists them)."""

    status: EpisodeStatus
    reason: str | None
    failed: tuple[NodeId, ...]


class EpisodeEngine:
    """Which nodes of one episode are pending, ready, running, done, failed or skipped."""

    def __init__(self, plan: EpisodePlan, state: EngineState, *, skip_failed_scenes: bool,
                 max_window: int) -> None:
        """Take up ``state`` (updated in place from here on). A node it has as running did not
        finish, so it is abandoned: it runs again."""
        self.plan = plan
        self.state = state
        self.skip_failed_scenes = skip_failed_scenes
        if state.window is None:
            state.window = ConcurrencyWindow(maximum=max_window)
        self.window = state.window
        self.pending: set[NodeId] = set()
        self._missing: dict[NodeId, int] = {}  # pending node -> inputs not yet resolved
        # Ready nodes, most urgent first: on the longest remaining path, then earliest scene.
        self._ready: list[tuple[int, NodeId]] = []  # a heap; these take a place in the window
        self._ready_free: list[NodeId] = []  # these take none
        self._windowed_running = 0
        state.running.clear()
        resolved = self._resolved_set()
        for node in plan.nodes.values():
            if node.id in resolved or node.id in state.failed or node.id in state.done:
                continue
            missing = sum(1 for d in node.deps if d not in resolved)
            if missing:
                self.pending.add(node.id)
                self._missing[node.id] = missing
            else:
                self._make_ready(node.id)

    # -- what is where ----------------------------------------------------------------------

    @property
    def running(self) -> set[NodeId]:
        return self.state.running

    @property
    def done(self) -> set[NodeId]:
        return self.state.done

    @property
    def failed(self) -> set[NodeId]:
        return self.state.failed

    @property
    def skipped(self) -> set[NodeId]:
        return self.state.skipped

    @property
    def ready(self) -> list[NodeId]:
        """Ready nodes in the order they would start."""
        return [*self._ready_free, *(nid for _, nid in sorted(self._ready))]

    def state_of(self, nid: NodeId) -> NodeState:
        if nid in self.pending:
            return NodeState.PENDING
        if nid in self._ready_free or any(n == nid for _, n in self._ready):
            return NodeState.READY
        return self.state.node_state(nid)

    @property
    def stopping(self) -> bool:
        """Nothing new starts: stopped from outside, or failed in a way the policy does not
        skip."""
        return self.state.stop_reason is not None or any(
            self._halts(nid) for nid in self.state.failed)

    @property
    def is_over(self) -> bool:
        """Nothing runs and nothing more will start."""
        return not self.running and (self.stopping or not (self._ready or self._ready_free))

    # -- transitions --------------------------------------------------------------------------

    def start_ready(self) -> list[Node]:
        """The nodes to start now, marked running: every ready node that holds no place in the
        window, and the most urgent others while the window has places."""
        if self.stopping:
            return []
        started = [self.plan.nodes[nid] for nid in self._ready_free]
        self._ready_free.clear()
        while self._ready and self._windowed_running < self.window.limit:
            started.append(self.plan.nodes[heapq.heappop(self._ready)[1]])
            self._windowed_running += 1
        self.running.update(n.id for n in started)
        return started

    def mark_done(self, nid: NodeId, *, rate_limited: bool = False) -> None:
        """The node made its result (the caller has stored it)."""
        self._finish(nid, rate_limited)
        self.done.add(nid)
        self._resolve([nid])

    def mark_failed(self, nid: NodeId, *, rate_limited: bool = False) -> None:
        """The node failed. Under "skip", the rest of its scene is skipped and the other scenes
        go on without it; otherwise (or for a node of no scene) nothing new starts."""
        self._finish(nid, rate_limited)
        self.failed.add(nid)
        if self._halts(nid):
            return
        # The rest of its scene that has not been settled already (by an earlier failure of
        # the same scene), in topological order.
        downstream = self.plan.downstream([nid])
        to_skip = [d for d in self.plan.nodes if d in downstream and d.scene == nid.scene
                   and d not in self.skipped]
        for skipped in to_skip:
            self._unready(skipped)
            self.skipped.add(skipped)
        self._resolve([nid, *to_skip])

    def stop(self, reason: str) -> None:
        """Start nothing new (what runs may finish); the first reason given is kept."""
        if self.state.stop_reason is None:
            self.state.stop_reason = reason

    def abandon(self) -> list[NodeId]:
        """What runs will not finish (cancelled): back to ready, to run again if ever resumed.
        Returns those nodes."""
        abandoned = sorted(self.running)
        for nid in abandoned:
            self._finish(nid, rate_limited=None)
            self._make_ready(nid)
        return abandoned

    def outcome(self) -> Outcome:
        """How the episode ended; ask once it ``is_over``."""
        failed = tuple(sorted(self.failed))
        if self.state.stop_reason is not None:
            return Outcome(EpisodeStatus.FAILED, self.state.stop_reason, failed)
        if self.stopping:
            return Outcome(EpisodeStatus.FAILED, None, failed)
        if failed:
            scenes = sorted({nid.scene for nid in failed if nid.scene is not None})
            return Outcome(EpisodeStatus.COMPLETED, f"completed without scene(s) {scenes}",
                           failed)
        return Outcome(EpisodeStatus.COMPLETED, None, failed)

    # -- internals ----------------------------------------------------------------------------

    def _halts(self, failed: NodeId) -> bool:
        return not self.skip_failed_scenes or failed.scene is None

    def _resolved_set(self) -> set[NodeId]:
        if self.skip_failed_scenes:
            return self.done | self.failed | self.skipped
        return set(self.done)

    def _finish(self, nid: NodeId, rate_limited: bool | None) -> None:
        if nid not in self.running:
            raise ValueError(f"{nid} is not running")
        self.running.discard(nid)
        if nid.kind not in UNWINDOWED:
            self._windowed_running -= 1
        if rate_limited is not None:
            self.window.on_result(rate_limited)

    def _make_ready(self, nid: NodeId) -> None:
        self.pending.discard(nid)
        self._missing.pop(nid, None)
        if nid.kind in UNWINDOWED:
            self._ready_free.append(nid)
        else:
            heapq.heappush(self._ready, (self.plan.start_order[nid], nid))

    def _unready(self, nid: NodeId) -> None:
        """Take a node that will never run out of pending or ready."""
        self.pending.discard(nid)
        self._missing.pop(nid, None)
        if nid in self._ready_free:
            self._ready_free.remove(nid)
        entries = [e for e in self._ready if e[1] != nid]
        if len(entries) != len(self._ready):
            self._ready = entries
            heapq.heapify(self._ready)

    def _resolve(self, nids: Iterable[NodeId]) -> None:
        """These nodes' results are settled (made, or under "skip" never to be): their waiting
        children each need one input fewer."""
        for nid in nids:
            for child in self.plan.children[nid]:
                missing = self._missing.get(child)
                if missing is None:
                    continue  # not pending: skipped, or already resolved elsewhere
                if missing == 1:
                    self._make_ready(child)
                else:
                    self._missing[child] = missing - 1
