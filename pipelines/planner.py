"""An episode as a graph: every node starts the moment its inputs exist. Pure, no Ray.

    outline:1 → outline:2 → …               long episodes are outlined a chunk at a time,
        │            │                       each chunk seeing the ones before it
        ▼            ▼
    content:1 …  content:21 …               a scene's content needs only its outline chunk
        │
        ▼
    dialogue:1 → dialogue:2 → …             a scene's dialogue needs its content and, by the
                                             continuity mode, earlier scenes' dialogue

Continuity is an edge, not a phase barrier: under ``chain`` everything downstream of a finished
dialogue proceeds while the next one is written. New node kinds (speech, image, clip, compose,
stitch) are added by listing their edges in ``plan_episode``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from pipelines.models import Continuity

# Scenes outlined per call: enough for a whole short episode, small enough that the answer for a
# 200-scene episode is not one enormous, slow, fragile document.
OUTLINE_CHUNK = 20


class NodeKind(StrEnum):
    OUTLINE = "outline"
    CONTENT = "content"
    DIALOGUE = "dialogue"
    SPEECH = "speech"  # one per dialogue line
    IMAGE = "image"
    CLIP = "clip"
    COMPOSE = "compose"  # CPU work: a Ray task
    STITCH = "stitch"  # CPU work: a Ray task, once per episode


# Which provider each kind of node calls; the rest are CPU work (or, for a clip with no video
# provider configured, a local render).
PROVIDER_OF: dict[NodeKind, str] = {
    NodeKind.OUTLINE: "llm",
    NodeKind.CONTENT: "llm",
    NodeKind.DIALOGUE: "llm",
    NodeKind.SPEECH: "tts",
    NodeKind.IMAGE: "image",
    NodeKind.CLIP: "video",
}
SCRIPT_KINDS = (NodeKind.OUTLINE, NodeKind.CONTENT, NodeKind.DIALOGUE)


def node_id(kind: NodeKind, index: int, line: int = 0) -> str:
    return f"{kind.value}:{index}.{line}" if line else f"{kind.value}:{index}"


@dataclass(frozen=True)
class Node:
    """One unit of work. ``index`` is the scene number, or the chunk number of an outline."""

    id: str
    kind: NodeKind
    index: int
    deps: tuple[str, ...]
    line: int = 0  # the dialogue line of a speech node, from 1

    @property
    def provider(self) -> str | None:
        return PROVIDER_OF.get(self.kind)

    @property
    def scene(self) -> int | None:
        """The scene this node belongs to (None for outline chunks and the stitch)."""
        return None if self.kind in (NodeKind.OUTLINE, NodeKind.STITCH) else self.index


@dataclass(frozen=True)
class EpisodePlan:
    """The nodes of one episode in a topological order, with their scheduling ranks."""

    scenes: int
    continuity: Continuity
    nodes: dict[str, Node]
    # Nodes on the longest remaining path go first when concurrency is scarce.
    rank: dict[str, int] = field(default_factory=dict)

    def chunk_of(self, scene: int) -> int:
        return (scene - 1) // OUTLINE_CHUNK + 1

    def chunk_scenes(self, chunk: int) -> range:
        start = (chunk - 1) * OUTLINE_CHUNK + 1
        return range(start, min(chunk * OUTLINE_CHUNK, self.scenes) + 1)

    def ready(self, done: Iterable[str], started: Iterable[str]) -> list[Node]:
        """Nodes whose inputs all exist and that have not started, most urgent first."""
        done_set, started_set = set(done), set(started)
        ready = [
            n for n in self.nodes.values()
            if n.id not in started_set and n.id not in done_set
            and all(d in done_set for d in n.deps)
        ]
        return sorted(ready, key=lambda n: (-self.rank[n.id], n.index))

    def downstream(self, roots: Iterable[str]) -> set[str]:
        """Every node that depends, directly or not, on one of ``roots`` (roots excluded)."""
        children: dict[str, list[str]] = {n: [] for n in self.nodes}
        for n in self.nodes.values():
            for d in n.deps:
                children[d].append(n.id)
        seen: set[str] = set()
        stack = [c for r in roots for c in children[r]]
        while stack:
            current = stack.pop()
            if current not in seen:
                seen.add(current)
                stack.extend(children[current])
        return seen

    def critical_path(self, durations: Mapping[str, float]) -> float:
        """The longest chain of durations through the graph: no schedule can beat it."""
        return max(self.earliest_finish(durations).values(), default=0.0)

    def earliest_finish(self, durations: Mapping[str, float]) -> dict[str, float]:
        """When each node would end if every node started the moment its inputs existed."""
        finish: dict[str, float] = {}
        for n in self.nodes.values():  # topological order
            start = max((finish[d] for d in n.deps), default=0.0)
            finish[n.id] = start + durations.get(n.id, 0.0)
        return finish

    def longest_after(self, durations: Mapping[str, float]) -> dict[str, float]:
        """Each node's longest chain of durations after it (itself left out): the least time the
        episode still needs once the node is done."""
        after: dict[str, float] = dict.fromkeys(self.nodes, 0.0)
        for n in reversed(list(self.nodes.values())):  # children before their inputs
            for d in n.deps:
                after[d] = max(after[d], durations.get(n.id, 0.0) + after[n.id])
        return after


def plan_episode(scenes: int, continuity: Continuity, lines: int = 0) -> EpisodePlan:
    """The graph of one episode of ``scenes`` scenes under ``continuity``; with ``lines`` (the
    lines per scene) it goes on to speech, pictures, clips, scenes and the stitched episode."""
    if scenes < 1:
        raise ValueError("an episode needs at least one scene")
    nodes: dict[str, Node] = {}

    def add(kind: NodeKind, index: int, deps: Iterable[str], line: int = 0) -> None:
        nid = node_id(kind, index, line)
        nodes[nid] = Node(nid, kind, index, tuple(deps), line)

    chunks = (scenes - 1) // OUTLINE_CHUNK + 1
    for chunk in range(1, chunks + 1):
        add(NodeKind.OUTLINE, chunk, [node_id(NodeKind.OUTLINE, chunk - 1)] if chunk > 1 else [])
    for scene in range(1, scenes + 1):
        add(NodeKind.CONTENT, scene, [node_id(NodeKind.OUTLINE, (scene - 1) // OUTLINE_CHUNK + 1)])
    for scene in range(1, scenes + 1):
        earlier = [node_id(NodeKind.DIALOGUE, s) for s in continuity.sees(scene)]
        add(NodeKind.DIALOGUE, scene, [node_id(NodeKind.CONTENT, scene), *earlier])
    if lines:
        for scene in range(1, scenes + 1):
            for line in range(1, lines + 1):
                add(NodeKind.SPEECH, scene, [node_id(NodeKind.DIALOGUE, scene)], line)
            add(NodeKind.IMAGE, scene, [node_id(NodeKind.CONTENT, scene)])
            add(NodeKind.CLIP, scene, [node_id(NodeKind.IMAGE, scene)])
            speech = [node_id(NodeKind.SPEECH, scene, line) for line in range(1, lines + 1)]
            add(NodeKind.COMPOSE, scene, [*speech, node_id(NodeKind.CLIP, scene)])
        add(NodeKind.STITCH, 0, [node_id(NodeKind.COMPOSE, s) for s in range(1, scenes + 1)])
    plan = EpisodePlan(scenes, continuity, nodes)
    plan.rank.update(_ranks(nodes))
    return plan


def _ranks(nodes: Mapping[str, Node]) -> dict[str, int]:
    """Each node's longest path to the end of the graph, counted in nodes."""
    children: dict[str, list[str]] = {n: [] for n in nodes}
    for n in nodes.values():
        for d in n.deps:
            children[d].append(n.id)
    rank: dict[str, int] = {}
    for nid in reversed(list(nodes)):  # reverse topological order
        rank[nid] = 1 + max((rank[c] for c in children[nid]), default=0)
    return rank
