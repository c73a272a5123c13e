"""The episode coordinator: many episodes, each a graph whose nodes start when their inputs exist.

A plain class (``actors.remote`` makes it the named actor ``showrunner:coordinator``). In-flight
nodes are coroutines here, awaiting the provider actors; none holds a process. Up to
``max_parallel_episodes`` episodes run at once, the rest wait by priority, then arrival; within an
episode at most ``max_parallel_scenes`` nodes run at once, fewer while the provider answers 429
(additive increase, multiplicative decrease).

All state lives in ``EpisodeRecord``s (pydantic, serialisable): the durability work checkpoints
them and resumes a run without repeating a stored call.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from actors import metrics
from actors.errors import ProviderError
from pipelines import media_stages as media
from pipelines.composition import Line, MediaError, compose_scene, pan_clip, stitch
from pipelines.episode_state import EpisodeRecord, Event, NodeRecord, NodeState
from pipelines.media_stages import voice_for
from pipelines.models import EpisodeRequest, EpisodeStatus
from pipelines.planner import SCRIPT_KINDS, EpisodePlan, Node, NodeKind
from pipelines.report import episode_entry
from pipelines.screenplay import write_episode_files
from pipelines.settings import EncodingSettings, Settings
from pipelines.stages import StageCall, StageOutputError, content_call, dialogue_call, outline_call

log = logging.getLogger("showrunner.coordinator")

# Events kept per episode: enough for a 200-scene episode's whole history.
MAX_EVENTS = 5000
GAUGE_INTERVAL_S = 0.5


class QuotaExceeded(Exception):
    """Submitting would put an owner over its limit of unfinished episodes."""


class IdempotencyConflict(Exception):
    """An episode id already names a different request (an idempotency key reused)."""


class ChatProvider(Protocol):
    """What the coordinator needs of a text provider (a gateway, or a Ray actor's adapter)."""

    async def chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any: ...


class MediaTasks(Protocol):
    """CPU work of the media nodes: Ray tasks in a cluster, threads without Ray.

    A composed scene's dict carries ``cpu_s``: the CPU seconds of its ffmpeg work, its locally
    made clip's included, which the report sets against the cluster's CPUs.
    """

    async def compose(self, lines: list[Line], clip: str, out_path: str) -> dict[str, Any]: ...

    async def stitch(self, scenes: list[dict[str, Any]], poster: str | None,
                     folder: str) -> dict[str, str]: ...

    async def pan(self, image: str, out_path: str) -> str: ...


class ThreadMediaTasks:
    """Media CPU work in this process's threads: for use without Ray (and its tests).

    ``run`` is the one place the work is started; ``actors.remote.RayMediaTasks`` starts it as
    Ray tasks instead and keeps the rest.
    """

    def __init__(self, encoding: EncodingSettings | None = None) -> None:
        self.encoding = encoding or EncodingSettings()
        # CPU seconds of clips made here, by path, until their scene is composed.
        self._clip_cpu_s: dict[str, float] = {}

    async def run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def compose(self, lines: list[Line], clip: str, out_path: str) -> dict[str, Any]:
        scene = await self.run(compose_scene, lines, clip, out_path, self.encoding)
        scene["cpu_s"] = round(scene["cpu_s"] + self._clip_cpu_s.pop(clip, 0.0), 4)
        return scene

    async def stitch(self, scenes: list[dict[str, Any]], poster: str | None,
                     folder: str) -> dict[str, str]:
        return await self.run(stitch, scenes, poster, folder)

    async def pan(self, image: str, out_path: str) -> str:
        made = await self.run(pan_clip, image, out_path, 4, self.encoding)
        self._clip_cpu_s[str(made["path"])] = float(made["cpu_s"])  # type: ignore[arg-type]
        return str(made["path"])


class ConcurrencyWindow:
    """Additive increase, multiplicative decrease of one episode's node concurrency."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.size = float(maximum)
        self._since_cut = 0

    @property
    def limit(self) -> int:
        return max(1, int(self.size))

    def on_result(self, rate_limited: bool) -> None:
        self._since_cut += 1
        if rate_limited and self._since_cut >= self.limit:
            # At most one cut per window's worth of results: one wave of 429s is one signal.
            self.size = max(1.0, self.size / 2)
            self._since_cut = 0
        elif not rate_limited:
            self.size = min(float(self.maximum), self.size + 1.0 / self.size)


class EpisodeCoordinator:
    """Takes episodes, runs their graphs, keeps their state, events and report."""

    def __init__(
        self,
        settings: Settings,
        providers: Mapping[str, ChatProvider],
        *,
        output_root: str | None = None,
        tasks: MediaTasks | None = None,
    ) -> None:
        self.settings = settings
        self.providers = dict(providers)
        self.output_root = output_root
        self.tasks = tasks or ThreadMediaTasks(settings.encoding)
        self.records: dict[str, EpisodeRecord] = {}
        self._arrivals = 0
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._signals: dict[str, asyncio.Event] = {}
        self._mono_start: dict[str, float] = {}
        self._nodes_in_flight = 0
        self._version = 0  # counts changes to any episode, for ``changes``
        self._changed: dict[str, int] = {}  # episode id -> the number of its last change
        self._changed_signal = asyncio.Event()
        self._gauges_at = 0.0
        self._request_keys: dict[str, str] = {}  # idempotent request -> its requests' digest

    # -- the public surface (each method is an actor method) ----------------------------------

    async def submit(self, request: EpisodeRequest, episode_id: str | None = None,
                     owner: str = "") -> str:
        """Queue one episode; it starts as soon as a slot is free. Returns its id.

        Idempotent: the same id with the same request and owner is the same episode; the same id
        with anything else is an ``IdempotencyConflict``.
        """
        episode_id = episode_id or uuid.uuid4().hex[:12]
        existing = self.records.get(episode_id)
        if existing is not None:
            if existing.owner != owner or existing.request != request:
                raise IdempotencyConflict(
                    f"episode {episode_id!r} was submitted with a different request")
            return episode_id
        if request.media and self.output_root is None:
            raise ValueError("media needs an output folder: start the coordinator with one")
        self._arrivals += 1
        record = EpisodeRecord(
            id=episode_id, request=request, owner=owner, submitted_at=time.time(),
            arrival=self._arrivals,
        )
        record.nodes = {nid: NodeRecord() for nid in record.plan().nodes}
        self.records[episode_id] = record
        self._emit(record, "queued", message=f"{request.scenes} scenes")
        self._admit()
        return episode_id

    async def submit_many(self, requests: list[EpisodeRequest], *, owner: str = "",
                          ids: list[str] | None = None, max_active: int | None = None,
                          request_key: str | None = None) -> list[str]:
        """Queue several episodes, all or none: over ``max_active`` unfinished episodes of this
        owner (counting these) is a ``QuotaExceeded`` and queues nothing. ``request_key`` names
        an idempotent request: the same key with other requests is an ``IdempotencyConflict``."""
        ids_or_none: list[str | None] = list(ids) if ids is not None else [None] * len(requests)
        if len(ids_or_none) != len(requests):
            raise ValueError("ids and requests differ in length")
        fingerprint = "" if request_key is None else hashlib.sha256(
            "\n".join(r.model_dump_json() for r in requests).encode()).hexdigest()
        if request_key is not None and self._request_keys.get(request_key,
                                                              fingerprint) != fingerprint:
            raise IdempotencyConflict(f"request {request_key!r} was made with other episodes")
        for request, episode_id in zip(requests, ids_or_none, strict=True):
            existing = self.records.get(episode_id) if episode_id else None
            if existing is not None and (existing.owner != owner or existing.request != request):
                raise IdempotencyConflict(
                    f"episode {episode_id!r} was submitted with a different request")
        fresh = sum(1 for i in ids_or_none if i is None or i not in self.records)
        if max_active is not None and fresh:
            active = self.active_count(owner)
            if active + fresh > max_active:
                raise QuotaExceeded(
                    f"{active} episodes are queued or running and this request adds {fresh}; "
                    f"the limit is {max_active} at once")
        made = [await self.submit(r, i, owner) for r, i in zip(requests, ids_or_none, strict=True)]
        if request_key is not None:
            self._request_keys[request_key] = fingerprint
        return made

    async def cancel(self, episode_id: str) -> str:
        """End all of an episode's work; what finished is kept. Idempotent."""
        record = self._record(episode_id)
        if record.status.finished:
            return record.status.value
        task = self._tasks.get(episode_id)
        if task is None:  # still queued
            self._finish(record, EpisodeStatus.CANCELLED, "cancelled before it started")
        else:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if not record.status.finished:  # cancelled before its first step ran
                self._finish(record, EpisodeStatus.CANCELLED, "cancelled")
        return record.status.value

    async def status(self, episode_id: str) -> dict[str, Any]:
        return self._record(episode_id).summary()

    async def episode(self, episode_id: str) -> EpisodeRecord:
        return self._record(episode_id)

    async def list_episodes(self) -> list[dict[str, Any]]:
        return [r.summary() for r in self.records.values()]

    async def page(self, owner: str, status: str | None = None, limit: int = 20,
                   after: int = 0) -> tuple[list[dict[str, Any]], int | None]:
        """One owner's episodes in submission order, from arrival number ``after`` on; returns
        the page and the cursor of the next one (``None`` at the end)."""
        mine = [r for r in self.records.values() if r.owner == owner and r.arrival > after
                and (status is None or r.status.value == status)]
        mine.sort(key=lambda r: r.arrival)
        page = mine[:limit]
        more = len(mine) > limit
        return [r.summary() for r in page], (page[-1].arrival if more else None)

    async def view(self, episode_id: str, owner: str) -> dict[str, Any] | None:
        """What the HTTP API shows of an episode; ``None`` unless it exists and is the owner's
        (another tenant's episode does not exist for them)."""
        record = self.records.get(episode_id)
        if record is None or record.owner != owner:
            return None
        return _view(record)

    async def changes(self, since: int, timeout_s: float = 30.0
                      ) -> tuple[int, dict[str, dict[str, Any]]]:
        """The views of every episode changed after change number ``since`` (waiting up to
        ``timeout_s`` for one), and the number to ask from next.

        What each Serve replica follows to answer status polls from memory: one long poll per
        replica instead of one actor call per poll.
        """
        if self._version <= since:
            self._changed_signal.clear()
            try:
                await asyncio.wait_for(self._changed_signal.wait(), max(0.0, timeout_s))
            except TimeoutError:
                return since, {}
        views = {i: _view(self.records[i]) for i, v in self._changed.items() if v > since}
        return self._version, views

    async def summaries(self, episode_ids: list[str]) -> list[dict[str, Any]]:
        return [self._record(i).summary() for i in episode_ids]

    def active_count(self, owner: str) -> int:
        return sum(1 for r in self.records.values()
                   if r.owner == owner and not r.status.finished)

    async def ping(self) -> str:
        return "ok"

    async def events(self, episode_id: str, after: int = 0, timeout_s: float = 0.0) -> list[Event]:
        """Events numbered above ``after``; waits up to ``timeout_s`` for one if there is none.

        A long poll: the caller's stream is a loop of these, resumable from any ``seq``.
        """
        record = self._record(episode_id)
        deadline = time.monotonic() + max(0.0, min(timeout_s, 60.0))
        while True:
            new = [e for e in record.events if e.seq > after]
            remaining = deadline - time.monotonic()
            if new or record.status.finished or remaining <= 0:
                return new
            signal = self._signals.setdefault(episode_id, asyncio.Event())
            try:
                await asyncio.wait_for(signal.wait(), remaining)
            except TimeoutError:
                return []

    async def wait(self, episode_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Return when every given episode (default: all) has finished."""
        ids = list(episode_ids) if episode_ids is not None else list(self.records)
        for episode_id in ids:
            while not self._record(episode_id).status.finished:
                await self.events(episode_id, after=self._record(episode_id).events[-1].seq,
                                  timeout_s=5.0)
        return [self.records[i].summary() for i in ids]

    async def records_snapshot(self) -> dict[str, EpisodeRecord]:
        """Every record: the one serialisable structure a checkpoint needs."""
        return dict(self.records)

    # -- scheduling ---------------------------------------------------------------------------

    def _record(self, episode_id: str) -> EpisodeRecord:
        try:
            return self.records[episode_id]
        except KeyError:
            raise KeyError(f"no episode {episode_id!r}") from None

    def _admit(self) -> None:
        running = sum(1 for r in self.records.values() if r.status is EpisodeStatus.RUNNING)
        queued = sorted(
            (r for r in self.records.values() if r.status is EpisodeStatus.QUEUED
             and r.id not in self._tasks),
            key=lambda r: (-r.request.priority, r.arrival),
        )
        for record in queued[: max(0, self.settings.max_parallel_episodes - running)]:
            record.status = EpisodeStatus.RUNNING
            self._tasks[record.id] = asyncio.create_task(self._run(record))

    async def _run(self, record: EpisodeRecord) -> None:
        record.started_at = time.time()
        self._mono_start[record.id] = time.monotonic()
        self._emit(record, "started")
        running: dict[str, asyncio.Task[None]] = {}
        try:
            status, reason = await self._run_graph(record, record.plan(), running)
        except asyncio.CancelledError:
            status, reason = EpisodeStatus.CANCELLED, "cancelled"
        except Exception as err:  # a bug of ours: fail this episode, never the coordinator
            log.exception("episode %s crashed", record.id)
            status, reason = EpisodeStatus.FAILED, f"internal error: {err!r}"
        try:
            await self._stop_nodes(record, running)
            self._finish(record, status, reason)
        finally:
            self._tasks.pop(record.id, None)
            self._admit()

    @staticmethod
    async def _stop_nodes(record: EpisodeRecord, running: dict[str, asyncio.Task[None]]) -> None:
        """Cancel what still runs; unfinished nodes go back to pending (nothing half-kept)."""
        for task in running.values():
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
        for node in record.nodes.values():
            if node.state is NodeState.RUNNING:
                node.state = NodeState.PENDING

    async def _run_graph(
        self, record: EpisodeRecord, plan: EpisodePlan, running: dict[str, asyncio.Task[None]]
    ) -> tuple[EpisodeStatus, str | None]:
        window = ConcurrencyWindow(self.settings.max_parallel_scenes)
        skip = record.request.on_scene_failure == "skip"
        stop_reason: str | None = None
        while True:
            if stop_reason is None:
                stop_reason = self._over_budget(record)
            if stop_reason is None:
                resolved = [
                    nid for nid, n in record.nodes.items()
                    if n.state is NodeState.DONE
                    or (skip and n.state in (NodeState.FAILED, NodeState.SKIPPED))
                ]
                started = [nid for nid, n in record.nodes.items()
                           if n.state is not NodeState.PENDING]
                # A clip job waits at the provider for a minute and is bounded by the provider's
                # job slots; it holds none of the episode's window.
                busy = sum(1 for nid in running if plan.nodes[nid].kind is not NodeKind.CLIP)
                for node in plan.ready(resolved, started):
                    if node.kind is not NodeKind.CLIP:
                        if busy >= window.limit:
                            continue
                        busy += 1
                    record.nodes[node.id].state = NodeState.RUNNING
                    running[node.id] = asyncio.create_task(self._execute(record, plan, node))
            if not running:
                break
            finished, _ = await asyncio.wait(running.values(), return_when=asyncio.FIRST_COMPLETED)
            for nid in [nid for nid, task in running.items() if task in finished]:
                task = running.pop(nid)
                node_record = record.nodes[nid]
                error = task.exception()
                window.on_result(node_record.rate_limited > 0)
                if error is None:
                    continue
                if not isinstance(error, (ProviderError, StageOutputError, MediaError)):
                    raise error
                self._fail_node(record, plan, plan.nodes[nid], error, skip)
                if not skip or plan.nodes[nid].kind is NodeKind.OUTLINE:
                    stop_reason = stop_reason or "failed"
        return self._outcome(record, stop_reason)

    def _outcome(
        self, record: EpisodeRecord, stop_reason: str | None
    ) -> tuple[EpisodeStatus, str | None]:
        failed = {nid: n.error for nid, n in record.nodes.items() if n.state is NodeState.FAILED}
        if stop_reason not in (None, "failed"):
            return EpisodeStatus.FAILED, stop_reason
        if failed and stop_reason == "failed":
            listed = "; ".join(f"{nid}: {err}" for nid, err in sorted(failed.items()))
            return EpisodeStatus.FAILED, f"{len(failed)} node(s) failed: {listed}"[:4000]
        if failed:
            scenes = sorted({int(nid.split(':')[1]) for nid in failed if ":" in nid})
            return EpisodeStatus.COMPLETED, f"completed without scene(s) {scenes}"
        return EpisodeStatus.COMPLETED, None

    def _over_budget(self, record: EpisodeRecord) -> str | None:
        budget = record.request.budget_usd
        if budget is not None and record.cost_usd >= budget:
            return f"budget of ${budget:.2f} spent (${record.cost_usd:.4f}); stopped starting work"
        return None

    def _fail_node(
        self, record: EpisodeRecord, plan: EpisodePlan, node: Node, error: Exception, skip: bool
    ) -> None:
        node_record = record.nodes[node.id]
        node_record.state = NodeState.FAILED
        node_record.error = str(error)[:1000]
        node_record.finished_s = self._elapsed(record)
        self._emit(record, "node_failed", node=node.id, message=node_record.error)
        if skip:
            # The scene's own later work cannot run; other scenes go on without it.
            for nid in plan.downstream([node.id]):
                other = plan.nodes[nid]
                if other.index == node.index and other.kind is not NodeKind.OUTLINE:
                    record.nodes[nid].state = NodeState.SKIPPED

    def _finish(self, record: EpisodeRecord, status: EpisodeStatus, reason: str | None) -> None:
        record.status = status
        record.error = reason  # for a completed episode, a note such as the scenes it skipped
        record.finished_at = time.time()
        if status is EpisodeStatus.COMPLETED and self.output_root is not None:
            record.output_dir = write_episode_files(record, self.output_root)
        self._emit(record, status.value, message=reason or "")
        log.info("episode %s %s%s", record.id, status.value, f": {reason}" if reason else "")

    # -- one node -----------------------------------------------------------------------------

    async def _execute(self, record: EpisodeRecord, plan: EpisodePlan, node: Node) -> None:
        node_record = record.nodes[node.id]
        node_record.started_s = self._elapsed(record)
        self._nodes_in_flight += 1
        try:
            self._emit(record, "node_started", node=node.id)
            if node.kind in SCRIPT_KINDS:
                call = self._stage_call(record, plan, node)
                self._store(record, node, await self._ask(record, node, call))
            else:
                await self._make_media(record, node)
        finally:
            self._nodes_in_flight -= 1
        node_record.state = NodeState.DONE
        node_record.finished_s = self._elapsed(record)
        metrics.observe_stage(node.kind.value, node_record.finished_s - node_record.started_s)
        self._emit(record, "node_finished", node=node.id)

    async def _ask(self, record: EpisodeRecord, node: Node, call: StageCall[Any]) -> Any:
        """One model call, validated; an invalid answer is retried once with the error shown."""
        node_record = record.nodes[node.id]
        provider = self.providers[node.provider]
        for attempt in (1, 2):
            result = await provider.chat(
                call.messages,
                episode_id=record.id,
                response_format=call.response_format,
                max_tokens=call.max_tokens,
                seed=_seed(record, node.id, attempt),
            )
            _account(node_record, result)
            try:
                return call.parse(result.text)
            except ValidationError as err:
                if attempt == 2:
                    raise StageOutputError(
                        f"the model's answer did not follow the {call.schema.__name__} schema "
                        f"twice: {err.errors()[0]['msg']}"
                    ) from err
                call = call.with_correction(result.text, err)
        raise AssertionError("unreachable")

    async def _make_media(self, record: EpisodeRecord, node: Node) -> None:
        """Speech, a picture, a clip, a composed scene or the stitched episode: each a file in
        the episode's folder; only paths travel between actors."""
        assert self.output_root is not None  # checked at submit
        folder = Path(self.output_root) / record.id
        node_record = record.nodes[node.id]
        scene = node.index
        started = time.monotonic()
        if node.kind is NodeKind.SPEECH:
            line = record.dialogues[scene].lines[node.line - 1]
            result = await self.providers["tts"].speech(
                line.text, voice=voice_for(record.request, line.speaker), episode_id=record.id,
                out_path=str(media.speech_path(folder, scene, node.line)))
            _account(node_record, result)
            record.media[node.id] = result.path
        elif node.kind is NodeKind.IMAGE:
            outline = record.scene_outlines()[scene - 1]
            result = await self.providers["image"].image(
                media.image_prompt(record.request, outline, record.contents[scene]),
                out_path=str(media.image_path(folder, scene)), episode_id=record.id)
            _account(node_record, result)
            record.media[node.id] = result.path
        elif node.kind is NodeKind.CLIP:
            image = record.media[f"image:{scene}"]
            out = str(media.clip_path(folder, scene))
            if "video" in self.providers:
                outline = record.scene_outlines()[scene - 1]
                result = await self.providers["video"].clip(
                    media.clip_prompt(outline, record.contents[scene]), image_path=image,
                    out_path=out, episode_id=record.id)
                _account(node_record, result)
                record.media[node.id] = result.path
            else:  # no video provider configured: a slow pan across the scene's picture
                record.media[node.id] = await self.tasks.pan(image, out)
                node_record.latency_s += time.monotonic() - started
        elif node.kind is NodeKind.COMPOSE:
            lines = [Line(line.speaker, line.text, record.media[f"speech:{scene}.{i}"])
                     for i, line in enumerate(record.dialogues[scene].lines, start=1)]
            record.scene_videos[scene] = await self.tasks.compose(
                lines, record.media[f"clip:{scene}"], str(media.scene_video_path(folder, scene)))
            node_record.latency_s += time.monotonic() - started
        else:  # the stitch: every composed scene, in order
            scenes = [record.scene_videos[s] for s in sorted(record.scene_videos)]
            if not scenes:
                raise StageOutputError("no scene could be composed, so there is no episode")
            first_image = min((s for s in record.media if s.startswith("image:")),
                              key=lambda k: int(k.split(":")[1]), default=None)
            record.files = await self.tasks.stitch(
                scenes, record.media[first_image] if first_image else None, str(folder))
            node_record.latency_s += time.monotonic() - started

    def _stage_call(self, record: EpisodeRecord, plan: EpisodePlan, node: Node) -> StageCall[Any]:
        request = record.request
        if node.kind is NodeKind.OUTLINE:
            return outline_call(request, plan.chunk_scenes(node.index), record.outline)
        outline = record.scene_outlines()
        if node.kind is NodeKind.CONTENT:
            return content_call(request, outline, node.index)
        earlier = {
            s: record.dialogues[s] for s in plan.continuity.sees(node.index)
            if s in record.dialogues
        }
        return dialogue_call(request, outline[node.index - 1], record.contents[node.index],
                             earlier)

    @staticmethod
    def _store(record: EpisodeRecord, node: Node, value: Any) -> None:
        if node.kind is NodeKind.OUTLINE:
            record.outline.append(value)
        elif node.kind is NodeKind.CONTENT:
            record.contents[node.index] = value
        else:
            record.dialogues[node.index] = value

    # -- events -------------------------------------------------------------------------------

    def _elapsed(self, record: EpisodeRecord) -> float:
        return time.monotonic() - self._mono_start.get(record.id, time.monotonic())

    def _emit(self, record: EpisodeRecord, kind: str, node: str | None = None,
              message: str = "") -> None:
        seq = record.events[-1].seq + 1 if record.events else 1
        record.events.append(Event(seq=seq, at_s=round(self._elapsed(record), 4), kind=kind,
                                   node=node, percent=record.percent, message=message))
        if len(record.events) > MAX_EVENTS:
            del record.events[: len(record.events) - MAX_EVENTS]
        signal = self._signals.pop(record.id, None)
        if signal is not None:
            signal.set()
        self._version += 1
        self._changed[record.id] = self._version
        self._changed_signal.set()
        now = time.monotonic()
        # Episode-level events always, node events at most every GAUGE_INTERVAL_S: counting the
        # episodes is O(episodes), too much for every node's start and end.
        if node is None or now - self._gauges_at >= GAUGE_INTERVAL_S:
            self._gauges_at = now
            self._publish_gauges()

    def _publish_gauges(self) -> None:
        queued = running = 0
        for r in self.records.values():
            queued += r.status is EpisodeStatus.QUEUED
            running += r.status is EpisodeStatus.RUNNING
        metrics.set_episode_gauges(queued, running, self._nodes_in_flight)


def _view(record: EpisodeRecord) -> dict[str, Any]:
    """An episode as the HTTP API shows it: its summary, its owner, its report entry so far, and
    its last event's number (views of one episode are ordered by it)."""
    return {**record.summary(), "owner": record.owner, "last_event_id": record.events[-1].seq,
            "report": episode_entry(record)}


def _account(node_record: NodeRecord, result: Any) -> None:
    """Add one provider call's figures (a ``ChatResult`` or a ``MediaResult``) to its node."""
    node_record.calls += 1
    node_record.latency_s += result.latency_s
    node_record.wait_s += result.wait_s
    node_record.rate_limited += result.rate_limited
    node_record.cost_usd += result.cost_usd


def _seed(record: EpisodeRecord, node_id: str, attempt: int) -> int:
    """A seed per node and attempt, stable for a request's seed, so reruns repeat themselves."""
    base = record.request.seed if record.request.seed is not None else record.id
    digest = hashlib.blake2b(f"{base}:{node_id}:{attempt}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF
