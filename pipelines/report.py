"""The run report: what the parallelism bought, how far from the best possible, and where the
time and the money went. Pure: built from episode records and provider counters.

- ``sequential_s``: the sum of every model call's latency, what one call at a time would take.
- ``speedup``: ``sequential_s`` ÷ wall time.
- ``lower_bound_s``: no schedule can finish sooner. The largest of: the graph's critical path
  with the measured latencies (per episode, the longest one; a composition counts the time it
  ran, not the time it queued for a CPU); per provider, the calls beyond one burst ÷ its request
  rate and the tokens beyond one burst ÷ its token rate; for a video provider, the time its clip
  jobs were seen running ÷ its cap of jobs at once, after the earliest a picture existed and
  before what must follow a clip (:func:`job_cap_bound`); and ``cpu_s`` ÷ ``cpus``.
- ``cpu_s``: CPU seconds of the run's own media work (each scene's composition and locally made
  clip, measured on their ffmpeg children); ``cpus``: the CPUs that work could use (the cluster's,
  as the caller says; else this machine's). Providers' CPUs are theirs, not counted here.
- ``parallel_efficiency``: ``lower_bound_s`` ÷ wall time; 1.0 means as fast as the graph, the
  limits and the CPUs allow.
- ``bottleneck``: what set the lower bound — ``critical path``, ``<provider> requests|tokens``,
  ``video jobs`` or ``CPU``.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipelines.episode_state import EpisodeRecord
from pipelines.models import SceneState
from pipelines.planner import NodeKind
from pipelines.settings import Settings


def node_latencies(record: EpisodeRecord) -> dict[str, float]:
    """Each node's own time: model-call latency, or for a composition the time it ran (its
    record's latency also holds the wait for a free CPU, which is queueing, not work)."""
    latencies = {nid: n.latency_s for nid, n in record.nodes.items()}
    for scene, video in record.scene_videos.items():
        nid = f"compose:{scene}"
        if nid in latencies and "run_s" in video:
            latencies[nid] = min(latencies[nid], float(video["run_s"]))
    return latencies


def media_cpu_s(record: EpisodeRecord) -> float:
    """CPU seconds of the episode's own media work, as its compositions reported them."""
    return sum(float(v.get("cpu_s", 0.0)) for v in record.scene_videos.values())


def episode_entry(record: EpisodeRecord) -> dict[str, Any]:
    states = record.scene_states()
    plan = record.plan()
    latencies = node_latencies(record)
    return {
        "id": record.id,
        "status": record.status.value,
        "scenes": record.request.scenes,
        "scenes_completed": sum(1 for s in states if s is SceneState.DONE),
        "wall_s": _round(record.wall_s),
        "sequential_s": _round(sum(latencies.values())),
        "critical_path_s": _round(plan.critical_path(latencies)),
        "cost_usd": round(record.cost_usd, 6),
        "cpu_s": round(media_cpu_s(record), 4),
        "output_dir": record.output_dir,
        "files": dict(record.files),
        "error": record.error,
    }


@dataclass(frozen=True)
class SlotsBound:
    """What a resource of a few places (a provider's clip jobs, at most N at once) forces on a
    run: its work cannot start before the earliest of its nodes could (``head_s``), takes the
    places some time (``spread_s``, see :func:`packed_s`), and the least an episode still needs
    after one of its nodes follows the last (``tail_s``)."""

    head_s: float
    spread_s: float
    tail_s: float

    @property
    def total_s(self) -> float:
        return self.head_s + self.spread_s + self.tail_s


def packed_s(lengths: Sequence[float], slots: int) -> float:
    """The least time jobs of these lengths keep ``slots`` places busy when they start in the
    given order (a provider draws a job's length when it is created), each the moment a place
    is free and with nothing lost between jobs. Never less than their sum ÷ ``slots``."""
    free = [0.0] * slots
    for length in lengths:
        heapq.heappush(free, heapq.heappop(free) + length)
    return max(free, default=0.0)


def slots_bound(records: Iterable[EpisodeRecord], kind: NodeKind, spread_s: float
                ) -> SlotsBound:
    """The bound for the ``kind`` nodes' work taking ``spread_s`` on its places, with the
    measured latencies of the other nodes; all zero when no node of ``kind`` exists."""
    heads: list[float] = []
    tails: list[float] = []
    for record in records:
        plan = record.plan()
        latencies = node_latencies(record)
        finish = plan.earliest_finish(latencies)
        after = plan.longest_after(latencies)
        for node in plan.nodes.values():
            if node.kind is kind:
                heads.append(max((finish[d] for d in node.deps), default=0.0))
                tails.append(after[node.id])
    if not heads:
        return SlotsBound(0.0, 0.0, 0.0)
    return SlotsBound(min(heads), spread_s, min(tails))


def provider_bounds(
    settings: Settings, provider_stats: Mapping[str, Mapping[str, Any]]
) -> dict[str, float]:
    """Seconds each provider's limits alone force on the run's calls and tokens."""
    bounds: dict[str, float] = {}
    for kind, stats in provider_stats.items():
        limits = settings.provider(kind)  # type: ignore[arg-type]
        attempts = stats["ok"] + sum(stats["errors"].values())
        if limits.rpm:
            rate = limits.rpm / 60
            burst = max(1.0, rate * limits.burst_s)
            bounds[f"{kind} requests"] = max(0.0, attempts - burst) / rate
        if limits.tpm:
            rate = limits.tpm / 60
            burst = max(1.0, rate * limits.burst_s)
            tokens = stats["tokens_in"] + stats["tokens_out"]
            bounds[f"{kind} tokens"] = max(0.0, tokens - burst) / rate
    return bounds


def job_cap_bound(records: list[EpisodeRecord], settings: Settings,
                  provider_stats: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Seconds the video provider's cap of jobs at once (``VIDEO__MAX_JOBS``) forces: the time
    its clip jobs were seen running, spread over the cap, after the earliest a picture existed and
    before the least that follows a clip. Empty when the run made no clip jobs."""
    job_s = float(provider_stats.get("video", {}).get("job_s", 0.0))
    if job_s <= 0:
        return {}
    spread = job_s / settings.video.max_jobs
    return {"video jobs": slots_bound(records, NodeKind.CLIP, spread).total_s}


def build_report(
    records: Iterable[EpisodeRecord],
    provider_stats: Mapping[str, Mapping[str, Any]],
    settings: Settings,
    cpus: float | None = None,
) -> dict[str, Any]:
    """``cpus``: the CPUs the run's media tasks could use (a Ray cluster's ``CPU`` resource);
    unset, this machine's, which is what a local Ray cluster has."""
    records = list(records)
    cpus = float(cpus or os.cpu_count() or 1)
    episodes = [episode_entry(r) for r in records]
    started = [r.started_at for r in records if r.started_at is not None]
    finished = [r.finished_at for r in records if r.finished_at is not None]
    wall = (max(finished) - min(started)) if started and finished else 0.0
    sequential = sum(e["sequential_s"] or 0.0 for e in episodes)
    candidates = {"critical path": max((e["critical_path_s"] or 0.0 for e in episodes),
                                       default=0.0)}
    candidates.update(provider_bounds(settings, provider_stats))
    candidates.update(job_cap_bound(records, settings, provider_stats))
    cpu_s = sum(e["cpu_s"] for e in episodes)
    candidates["CPU"] = cpu_s / cpus
    bottleneck = max(candidates, key=lambda k: candidates[k])
    lower_bound = candidates[bottleneck]
    return {
        "episodes": episodes,
        "totals": {
            "wall_s": _round(wall),
            "sequential_s": _round(sequential),
            "speedup": _ratio(sequential, wall),
            "parallel_efficiency": _ratio(lower_bound, wall),
            "lower_bound_s": _round(lower_bound),
            "bottleneck": bottleneck,
            "bounds_s": {k: round(v, 4) for k, v in candidates.items()},
            "cpu_s": round(cpu_s, 4),
            "cpus": cpus,
            "cost_usd": round(sum(e["cost_usd"] for e in episodes), 6),
            "stage_busy_s": _stage_busy(records),
            "providers": {
                kind: _provider_entry(stats) for kind, stats in provider_stats.items()
            },
        },
    }


def _provider_entry(stats: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "calls": stats["calls"],
        "ok": stats["ok"],
        "rate_limited": stats["rate_limited"],
        "retries": stats["retries"],
        "errors": sum(stats["errors"].values()),
        "tokens_in": stats["tokens_in"],
        "tokens_out": stats["tokens_out"],
        "cost_usd": stats["cost_usd"],
        "limiter_wait_s": stats["limiter_wait_s"],
    }


def _stage_busy(records: list[EpisodeRecord]) -> dict[str, float]:
    busy: dict[str, float] = {}
    for record in records:
        for stage, seconds in record.stage_busy_s().items():
            busy[stage] = round(busy.get(stage, 0.0) + seconds, 4)
    return busy


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 4) if denominator > 0 else None

