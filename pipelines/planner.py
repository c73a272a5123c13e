"""An episode as a graph: every node starts the moment its inputs exist. Pure, no Ray.

    outline 1 → outline 2 → …               long episodes are outlined a chunk at a time,
        │            │                       each chunk seeing the ones before it
        ▼            ▼
    content 1 …  content 21 …               a scene's content needs only its outline chunk
        │   \\
        ▼    image → clip                   a picture needs its scene's content, a clip its picture
    dialogue 1 → dialogue 2 → …             a scene's dialogue needs its content and, by the
        │                                    continuity mode, earlier scenes' dialogue
        ▼
    speech 1.1 … 1.K → compose 1 ─┐         each line is spoken once its dialogue exists; a scene
                 clip 1 ─┘        ├→ stitch  is composed from its lines and its clip; the episode
                                  …          is stitched from every composed scene

Continuity is an edge, not a phase barrier: under ``chain`` everything downstream of a finished
dialogue proceeds while the next one is written. Which nodes are ready, running or done is the
business of ``pipelines.engine``; this module only says what exists and what needs what.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from pipelines.models import Continuity

# Scenes outlined per call: enough for a whole short episode, small enough that the answer for a
# 200-scene episode is not one enormous, slow, fragile document.
OUTLINE_CHUNK = 20


class NodeKind(StrEnum):
    OUTLINE = "outline"  # one per chunk of OUTLINE_CHUNK scenes
    CONTENT = "content"
    DIALOGUE = "dialogue"
    SPEECH = "speech"  # one per dialogue line
    IMAGE = "image"
    CLIP = "clip"
    COMPOSE = "compose"  # CPU work: a Ray task
    STITCH = "stitch"  # CPU work: a Ray task, once per episode

    @property
    def per_scene(self) -> bool:
        """Whether its nodes belong to one scene (an outline chunk and the stitch do not)."""
        return self not in (NodeKind.OUTLINE, NodeKind.STITCH)


@dataclass(frozen=True, order=True, slots=True, repr=False)
class NodeId:
    """Which node: its kind, its scene (or outline chunk; 0 for the stitch) and, for speech, its
    line (from 1). Written ``speech:3.2`` where a string is needed (events, JSON)."""

    kind: NodeKind
    index: int = 0
    line: int = 0
    # Node ids are looked up in sets and dicts on every step of an episode and every status
    # poll: the hash is made once (a generated one builds a tuple and hashes an enum each time).
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.kind.value, self.index, self.line)))

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[Any, ...]:
        # Made again where it is unpickled: a string's hash differs from process to process.
        return (NodeId, (self.kind, self.index, self.line))

    @property
    def scene(self) -> int | None:
        """The scene this node belongs to; None for outline chunks and the stitch."""
        return self.index if self.kind.per_scene else None

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.index}" + (f".{self.line}" if self.line else "")

    def __repr__(self) -> str:
        return f"NodeId({str(self)!r})"

    @classmethod
    def parse(cls, text: str) -> NodeId:
        """The id ``str()`` wrote (the one way back from a string, for stored JSON)."""
        kind, _, rest = text.partition(":")
        index, _, line = rest.partition(".")
        try:
            return cls(NodeKind(kind), int(index), int(line or 0))
        except ValueError:
            raise ValueError(f"not a node id: {text!r}") from None

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler
                                     ) -> core_schema.CoreSchema:
        # In models (events, records) a node id is itself; in JSON, its string.
        from_text = core_schema.no_info_after_validator_function(cls.parse,
                                                                 core_schema.str_schema())
        return core_schema.json_or_python_schema(
            json_schema=from_text,
            python_schema=core_schema.union_schema(
                [core_schema.is_instance_schema(cls), from_text]),
            serialization=core_schema.to_string_ser_schema(when_used="json"),
        )


def outline_id(chunk: int) -> NodeId:
    return NodeId(NodeKind.OUTLINE, chunk)


def content_id(scene: int) -> NodeId:
    return NodeId(NodeKind.CONTENT, scene)


def dialogue_id(scene: int) -> NodeId:
    return NodeId(NodeKind.DIALOGUE, scene)


def speech_id(scene: int, line: int) -> NodeId:
    return NodeId(NodeKind.SPEECH, scene, line)


def image_id(scene: int) -> NodeId:
    return NodeId(NodeKind.IMAGE, scene)


def clip_id(scene: int) -> NodeId:
    return NodeId(NodeKind.CLIP, scene)


def compose_id(scene: int) -> NodeId:
    return NodeId(NodeKind.COMPOSE, scene)


STITCH_ID = NodeId(NodeKind.STITCH)


@dataclass(frozen=True)
class Node:
    """One unit of work and the nodes whose results it needs."""

    id: NodeId
    deps: tuple[NodeId, ...]

    @property
    def kind(self) -> NodeKind:
        return self.id.kind


@dataclass(frozen=True)
class EpisodePlan:
    """The nodes of one episode in a topological order, and the order ready nodes start in."""

    scenes: int
    continuity: Continuity
    lines: int  # per scene; 0 when the episode stops at the script
    nodes: dict[NodeId, Node]
    # When several are ready and concurrency is scarce, nodes go in this order (0 first): the
    # longest remaining path first, then the earliest scene.
    start_order: dict[NodeId, int] = field(default_factory=dict)
    children: dict[NodeId, tuple[NodeId, ...]] = field(default_factory=dict)
    by_scene: dict[int, tuple[NodeId, ...]] = field(default_factory=dict)  # scene -> its nodes
    # Each node's inputs by their position in ``nodes``: the critical path is asked for on every
    # status view, and lists indexed by position cost far less than dicts keyed by node id.
    deps_at: tuple[tuple[int, ...], ...] = ()

    def chunk_of(self, scene: int) -> int:
        return (scene - 1) // OUTLINE_CHUNK + 1

    def chunk_scenes(self, chunk: int) -> range:
        start = (chunk - 1) * OUTLINE_CHUNK + 1
        return range(start, min(chunk * OUTLINE_CHUNK, self.scenes) + 1)

    def chunks(self) -> range:
        return range(1, self.chunk_of(self.scenes) + 1)

    def downstream(self, roots: Iterable[NodeId]) -> set[NodeId]:
        """Every node that depends, directly or not, on one of ``roots`` (roots excluded)."""
        seen: set[NodeId] = set()
        stack = [c for r in roots for c in self.children[r]]
        while stack:
            current = stack.pop()
            if current not in seen:
                seen.add(current)
                stack.extend(self.children[current])
        return seen

    def critical_path(self, durations: Mapping[NodeId, float]) -> float:
        """The longest chain of durations through the graph: no schedule can beat it."""
        return max(self._finish_times(durations), default=0.0)

    def critical_nodes(self, durations: Mapping[NodeId, float]) -> list[NodeId]:
        """The nodes of the chain :meth:`critical_path` measures, first to last; empty when no
        node took any time. Of chains equally long, the one through earlier nodes."""
        finish = self._finish_times(durations)
        if not finish or max(finish) <= 0.0:
            return []
        # The first node to reach the longest finish: any later one that ties adds nothing.
        at = finish.index(max(finish))
        ids = list(self.nodes)
        chain = [ids[at]]
        while deps := self.deps_at[at]:
            at = max(deps, key=finish.__getitem__)  # the input it waited for last
            chain.append(ids[at])
        return chain[::-1]

    def earliest_finish(self, durations: Mapping[NodeId, float]) -> dict[NodeId, float]:
        """When each node would end if every node started the moment its inputs existed."""
        return dict(zip(self.nodes, self._finish_times(durations), strict=True))

    def _finish_times(self, durations: Mapping[NodeId, float]) -> list[float]:
        finish = [0.0] * len(self.nodes)
        for at, (nid, deps) in enumerate(zip(self.nodes, self.deps_at, strict=True)):
            start = max([finish[d] for d in deps]) if deps else 0.0  # topological order
            finish[at] = start + durations.get(nid, 0.0)
        return finish

    def longest_after(self, durations: Mapping[NodeId, float]) -> dict[NodeId, float]:
        """Each node's longest chain of durations after it (itself left out): the least time the
        episode still needs once the node is done."""
        after: dict[NodeId, float] = dict.fromkeys(self.nodes, 0.0)
        for n in reversed(list(self.nodes.values())):  # children before their inputs
            for d in n.deps:
                after[d] = max(after[d], durations.get(n.id, 0.0) + after[n.id])
        return after

    def of_kind(self, kind: NodeKind) -> Iterator[Node]:
        return (n for n in self.nodes.values() if n.kind is kind)


@functools.lru_cache(maxsize=256)
def plan_episode(scenes: int, continuity: Continuity, lines: int = 0) -> EpisodePlan:
    """The graph of one episode of ``scenes`` scenes under ``continuity``; with ``lines`` (the
    lines per scene) it goes on to speech, pictures, clips, scenes and the stitched episode.

    Plans are pure functions of their arguments and read-only once made; status polls ask for
    them many times a second, so equal requests share one.
    """
    if scenes < 1:
        raise ValueError("an episode needs at least one scene")
    nodes: dict[NodeId, Node] = {}

    def add(nid: NodeId, *deps: NodeId) -> None:
        nodes[nid] = Node(nid, deps)

    chunks = (scenes - 1) // OUTLINE_CHUNK + 1
    for chunk in range(1, chunks + 1):
        add(outline_id(chunk), *([outline_id(chunk - 1)] if chunk > 1 else []))
    for scene in range(1, scenes + 1):
        add(content_id(scene), outline_id((scene - 1) // OUTLINE_CHUNK + 1))
    for scene in range(1, scenes + 1):
        add(dialogue_id(scene), content_id(scene), *map(dialogue_id, continuity.sees(scene)))
    if lines:
        for scene in range(1, scenes + 1):
            for line in range(1, lines + 1):
                add(speech_id(scene, line), dialogue_id(scene))
            add(image_id(scene), content_id(scene))
            add(clip_id(scene), image_id(scene))
            add(compose_id(scene), *(speech_id(scene, line) for line in range(1, lines + 1)),
                clip_id(scene))
        add(STITCH_ID, *map(compose_id, range(1, scenes + 1)))
    children: dict[NodeId, list[NodeId]] = {n: [] for n in nodes}
    for n in nodes.values():
        for d in n.deps:
            children[d].append(n.id)
    by_scene: dict[int, list[NodeId]] = {s: [] for s in range(1, scenes + 1)}
    for nid in nodes:
        if nid.scene is not None:
            by_scene[nid.scene].append(nid)
    rank = _ranks(nodes, children)
    position = {nid: i for i, nid in enumerate(nodes)}
    deps_at = tuple(tuple(position[d] for d in n.deps) for n in nodes.values())
    ordered = sorted(nodes, key=lambda n: (-rank[n], n.index, position[n]))
    return EpisodePlan(scenes, continuity, lines, nodes, {n: i for i, n in enumerate(ordered)},
                       {n: tuple(c) for n, c in children.items()},
                       {s: tuple(ids) for s, ids in by_scene.items()}, deps_at)


def _ranks(nodes: Mapping[NodeId, Node], children: Mapping[NodeId, list[NodeId]]
           ) -> dict[NodeId, int]:
    """Each node's longest path to the end of the graph, counted in nodes."""
    rank: dict[NodeId, int] = {}
    for nid in reversed(list(nodes)):  # reverse topological order
        rank[nid] = 1 + max((rank[c] for c in children[nid]), default=0)
    return rank
