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

from pipelines.episode_folder import Artifact, EpisodeFolder
from pipelines.episode_state import EpisodeRecord
from pipelines.episode_view import EpisodeView
from pipelines.planner import NodeKind
from pipelines.settings import ProviderKind, Settings
from pipelines.storage import Storage

# The report's names for an episode's files.
FILES = {"video": Artifact.VIDEO, "subtitles": Artifact.SUBTITLES, "poster": Artifact.POSTER}


def episode_entry(view: EpisodeView, storage: Storage | None = None) -> dict[str, Any]:
    """An episode's line in the report; with its ``storage``, where its files are."""
    folder = EpisodeFolder(view.id)
    figures = view.figures
    written = storage is not None and Artifact.SCRIPT_JSON in view.artifacts
    return {
        "id": view.id,
        "status": view.status.value,
        "scenes": figures.scenes,
        "scenes_completed": figures.scenes_completed,
        "wall_s": figures.wall_s,
        "sequential_s": figures.sequential_s,
        "critical_path_s": figures.critical_path_s,
        "cost_usd": figures.cost_usd,
        "saved_usd": figures.saved_usd,
        "cpu_s": figures.cpu_s,
        "output_dir": storage.where(folder.prefix) if written and storage is not None else None,
        "files": {name: storage.where(folder.artifact(a)) for name, a in FILES.items()
                  if a in view.artifacts} if storage is not None else {},
        "error": view.error,
        "missing": [m.model_dump() for m in view.missing],
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
        latencies = record.node_latencies()
        finish = plan.earliest_finish(latencies)
        after = plan.longest_after(latencies)
        for node in plan.of_kind(kind):
            heads.append(max((finish[d] for d in node.deps), default=0.0))
            tails.append(after[node.id])
    if not heads:
        return SlotsBound(0.0, 0.0, 0.0)
    return SlotsBound(min(heads), spread_s, min(tails))


def provider_bounds(
    settings: Settings, provider_stats: Mapping[ProviderKind, Mapping[str, Any]]
) -> dict[str, float]:
    """Seconds each provider's limits alone force on the run's calls and tokens."""
    bounds: dict[str, float] = {}
    for kind, stats in provider_stats.items():
        limits = settings.provider(kind)
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
                  provider_stats: Mapping[ProviderKind, Mapping[str, Any]]) -> dict[str, float]:
    """Seconds the video provider's cap of jobs at once (``VIDEO__MAX_JOBS``) forces: the time
    its clip jobs were seen running, spread over the cap, after the earliest a picture existed and
    before the least that follows a clip. Empty when the run made no clip jobs."""
    job_s = float(provider_stats.get(ProviderKind.VIDEO, {}).get("job_s", 0.0))
    if job_s <= 0:
        return {}
    spread = job_s / settings.video.max_jobs
    return {"video jobs": slots_bound(records, NodeKind.CLIP, spread).total_s}


def build_report(
    records: Iterable[EpisodeRecord],
    provider_stats: Mapping[ProviderKind, Mapping[str, Any]],
    settings: Settings,
    cpus: float | None = None,
    storage: Storage | None = None,
    lost: Iterable[EpisodeView] = (),
) -> dict[str, Any]:
    """``cpus``: the CPUs the run's media tasks could use (a Ray cluster's ``CPU`` resource);
    unset, this machine's, which is what a local Ray cluster has. ``storage``: where the
    episodes' files are, for the entries' file names. ``lost``: episodes whose records are gone
    (their coordinator died), as last seen: listed, not counted in the figures."""
    records = list(records)
    cpus = float(cpus or os.cpu_count() or 1)
    episodes = [episode_entry(EpisodeView.of(r), storage) for r in records]
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
        "episodes": episodes + [episode_entry(view, storage) for view in lost],
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
            "saved_usd": round(sum(e["saved_usd"] for e in episodes), 6),
            "flex_saved_usd": round(sum(t.get("saved_usd", 0.0) for s in provider_stats.values()
                                        for t in s.get("tiers", {}).values()), 6),
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
        "cache_hits": stats.get("cache_hits", 0),
        "saved_usd": stats.get("saved_usd", 0.0),
        "limiter_wait_s": stats["limiter_wait_s"],
        # Per processing tier: answered calls, their cost, and what flex saved on them.
        "tiers": stats.get("tiers", {}),
        "flex_busy": stats.get("flex_busy", 0),
        "flex_fell_back": stats.get("flex_fell_back", 0),
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

