"""The run timeline: a picture of a run drawn from its episodes' records. Pure, no Ray.

The data (JSON, drawn by ``showrunner/studio/static/timeline.js``)::

    lanes       one per scene of each episode that started, and one per episode for the nodes
                of no scene (outline chunks, the stitch), the episode's lane first
    bars        one per node that started, on the run's clock: t=0 is the earliest start; its
                ``wait_s``, the seconds of its span spent waiting before it worked: work done
                here (a composition, the stitch, a clip made here) for a free CPU (its span less
                the time it ran), a provider's node in the provider's limiter (its calls' wait)
    providers   per model provider and bucket of time, the requests in flight at its start and
                those sent per second over the second (or the bucket, if longer) up to its end,
                against the provider's limit and the most the limiter lets that rate reach (the
                limit, plus its bucket's burst spent within one window: ``burst_rps``)
    critical_path, lower_bound_s, bottleneck, bounds_s
                the longest chain of the episode with the longest one, and the bound no
                schedule could beat with what set it (as the run report says)

What the records cannot say is estimated, and only for the provider series: a node's request
goes out at ``finished - latency`` (its limiter wait comes before), its calls spread evenly
over its latency. A node still running has sent nothing the record knows of yet, so it is in
no provider series until it ends. Compositions and the stitch (and clips made here when no
video provider is configured) are this cluster's CPU work, not a provider's: they have bars but
no provider series, since no rate limit applies to them.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pipelines.composition import LocalWork
from pipelines.episode_state import EpisodeRecord, NodeRecord
from pipelines.planner import EpisodePlan, NodeId, NodeKind
from pipelines.report import build_report
from pipelines.settings import ProviderKind, Settings

VERSION = 1
STAGES = [kind.value for kind in NodeKind]
# The provider that answers each kind of node; a clip's only when a video provider is set.
PROVIDER_OF = {NodeKind.OUTLINE: ProviderKind.LLM, NodeKind.CONTENT: ProviderKind.LLM,
               NodeKind.DIALOGUE: ProviderKind.LLM, NodeKind.SPEECH: ProviderKind.TTS,
               NodeKind.IMAGE: ProviderKind.IMAGE, NodeKind.CLIP: ProviderKind.VIDEO}
# Bucket sizes of the provider series, by decade: 80 to 200 buckets whatever the run's length.
NICE_STEPS = (1.0, 2.0, 5.0)
MAX_BUCKETS = 200
MIN_BUCKET_S = 0.001
# A request rate is measured over at least a second, the window providers judge a limit in
# (they quantize per-minute limits to per-second ones): over a tenth of a second, one request
# alone reads as ten a second, far over a limit it kept to.
RATE_WINDOW_S = 1.0
SHORT_ID = 8  # of an episode id in a lane's label: enough to tell a run's episodes apart


class BarStatus(StrEnum):
    DONE = "done"
    FAILED = "failed"  # its own failure, or cut off when its episode ended
    RUNNING = "running"


def episode_part(timeline: dict[str, Any], episode_id: str) -> dict[str, Any]:
    """The same timeline restricted to one episode's lanes and bars (lanes renumbered).

    Providers stay the run's: a provider's limit is shared by every episode, so its load is
    only meaningful whole. The critical path stays only if it is this episode's; another
    episode's cannot be recomputed from the timeline alone, so it becomes ``None``.
    """
    renumber: dict[int, int] = {}
    lanes = []
    for at, lane in enumerate(timeline["lanes"]):
        if lane["episode"] == episode_id:
            renumber[at] = len(lanes)
            lanes.append(lane)
    bars = [{**bar, "lane": renumber[bar["lane"]]} for bar in timeline["bars"]
            if bar["lane"] in renumber]
    critical = timeline.get("critical_path")
    if critical is not None and critical.get("episode") != episode_id:
        critical = None
        bars = [{**bar, "critical": False} for bar in bars]
    return {**timeline, "lanes": lanes, "bars": bars, "critical_path": critical}


def build_timeline(records: Sequence[EpisodeRecord], settings: Settings,
                   bounds_s: Mapping[str, float] | None = None,
                   now: float | None = None) -> dict[str, Any]:
    """The timeline of ``records``. ``bounds_s``: the run report's candidate lower bounds (its
    ``totals.bounds_s``, which knows the providers' counters); without them, the graph's and the
    CPUs' bounds as the report would compute them. ``now`` (epoch s): where running nodes end;
    unset, at the last end seen."""
    started = [r for r in records if r.started_at is not None]
    t0 = min((r.started_at for r in started if r.started_at is not None), default=None)
    critical = _critical_path(started)
    bounds = dict(bounds_s) if bounds_s is not None else _own_bounds(records, settings)
    bottleneck = max(bounds, key=lambda k: bounds[k]) if bounds else None
    timeline: dict[str, Any] = {
        "version": VERSION, "started_at": t0, "wall_s": 0.0, "stages": STAGES,
        "lanes": [], "bars": [], "providers": [], "critical_path": critical,
        "lower_bound_s": round(bounds[bottleneck], 4) if bottleneck else 0.0,
        "bottleneck": bottleneck, "bounds_s": {k: round(v, 4) for k, v in bounds.items()},
    }
    if t0 is None:
        return timeline
    spans = list(_spans(started, t0, now))
    wall = max((s.end for s in spans if s.status is not BarStatus.RUNNING), default=0.0)
    wall = max(wall, (now - t0) if now is not None else 0.0)
    on_path = {(critical["episode"], node) for node in critical["nodes"]} if critical else set()
    lanes, lane_of = _lanes(started)
    timeline["lanes"] = lanes
    timeline["bars"] = [s.bar(lane_of[s.record.id, s.node.scene], max(s.end, wall),
                              (s.record.id, str(s.node)) in on_path) for s in spans]
    timeline["wall_s"] = round(max((b["end_s"] for b in timeline["bars"]), default=wall), 4)
    timeline["providers"] = _providers(spans, settings, timeline["wall_s"])
    return timeline


@dataclass(frozen=True, slots=True)
class _Span:
    """One started node on the run's clock. A running one's ``end`` is provisional: it ends
    at the run's last end, known once every span is."""

    record: EpisodeRecord
    node: NodeId
    figures: NodeRecord
    start: float
    end: float
    status: BarStatus

    def bar(self, lane: int, running_end: float, critical: bool) -> dict[str, Any]:
        end = running_end if self.status is BarStatus.RUNNING else self.end
        return {"lane": lane, "node": str(self.node), "stage": self.node.kind.value,
                "start_s": round(self.start, 4), "end_s": round(end, 4),
                "wait_s": round(self.waited(end - self.start), 4),
                "status": self.status.value, "calls": self.figures.calls,
                "cost_usd": round(self.figures.cost_usd, 6), "critical": critical}

    def waited(self, span: float) -> float:
        """Seconds of its ``span`` spent waiting, at its start: work done here waited for a
        free CPU for what of its span it did not run (as ``node_latencies`` counts it); a
        provider's node waited in the limiter, never longer than its span."""
        result = self.record.results.get(self.node)
        if isinstance(result, LocalWork) and result.run_s > 0:
            return max(0.0, span - result.run_s)
        return min(max(span, 0.0), max(self.figures.wait_s, 0.0))


def _spans(records: Sequence[EpisodeRecord], t0: float, now: float | None) -> Iterator[_Span]:
    for record in records:
        offset = (record.started_at or t0) - t0
        # A node that never finished in an episode that ended was cut off (cancelled, or its
        # episode failed): it ends with the episode, as failed, not running for ever.
        ended = (record.finished_at - t0) if record.finished_at is not None else None
        for nid, figures in record.nodes.items():
            if figures.started_s is None:
                continue
            start = offset + figures.started_s
            if figures.finished_s is not None:
                end = offset + figures.finished_s
                status = BarStatus.DONE if figures.error is None else BarStatus.FAILED
            elif ended is not None:
                end, status = max(start, ended), BarStatus.FAILED
            else:
                end = max(start, now - t0) if now is not None else start
                status = BarStatus.RUNNING
            yield _Span(record, nid, figures, start, end, status)


def _lanes(records: Sequence[EpisodeRecord]
           ) -> tuple[list[dict[str, Any]], dict[tuple[str, int | None], int]]:
    """Every started episode's lanes, even of scenes not begun: a live page shows what is left."""
    lanes: list[dict[str, Any]] = []
    lane_of: dict[tuple[str, int | None], int] = {}
    for record in records:
        short = record.id[:SHORT_ID]
        for scene in (None, *range(1, record.request.scenes + 1)):
            lane_of[record.id, scene] = len(lanes)
            label = f"{short} · episode" if scene is None else f"{short} · scene {scene}"
            lanes.append({"episode": record.id, "scene": scene, "label": label})
    return lanes, lane_of


def _critical_path(records: Sequence[EpisodeRecord]) -> dict[str, Any] | None:
    """The longest chain of the episode whose chain is longest, with the measured latencies
    (as the report's ``critical path`` bound measures it)."""
    best: tuple[float, EpisodeRecord, EpisodePlan, dict[NodeId, float]] | None = None
    for record in records:
        plan, latencies = record.plan(), record.node_latencies()
        length = plan.critical_path(latencies)
        if best is None or length > best[0]:
            best = (length, record, plan, latencies)
    if best is None:
        return None
    length, record, plan, latencies = best
    nodes = plan.critical_nodes(latencies)
    return {"episode": record.id, "nodes": [str(n) for n in nodes], "length_s": round(length, 4)}


def _own_bounds(records: Sequence[EpisodeRecord], settings: Settings) -> dict[str, float]:
    """The report's bounds with no provider counters: the critical path and the CPUs."""
    return dict(build_report(records, {}, settings)["totals"]["bounds_s"])


def bucket_size(wall_s: float) -> float:
    """The smallest of 1, 2, 5 × 10^k seconds that cuts ``wall_s`` into at most MAX_BUCKETS:
    between 80 and 200 buckets, on round numbers an axis can show."""
    wanted = max(wall_s / MAX_BUCKETS, MIN_BUCKET_S)
    decade = 10.0 ** math.floor(math.log10(wanted))
    return next(round(step * decade, 9) for step in (*NICE_STEPS, 10.0)
                if step * decade >= wanted)


def _providers(spans: Sequence[_Span], settings: Settings, wall_s: float
               ) -> list[dict[str, Any]]:
    requests: dict[ProviderKind, tuple[list[float], list[float], list[float]]] = {}
    video_here = settings.video.base_url is None  # clips are then made on this cluster's CPUs
    for span in spans:
        kind = PROVIDER_OF.get(span.node.kind)
        sent = span.figures.calls - span.figures.cache_hits  # cache hits reach no provider
        if kind is None or span.status is BarStatus.RUNNING or sent <= 0:
            continue
        if kind is ProviderKind.VIDEO and video_here:
            continue
        latency = min(span.figures.latency_s, span.end - span.start)
        begin = span.end - latency
        starts, ends, sends = requests.setdefault(kind, ([], [], []))
        starts.append(begin)
        ends.append(span.end)
        sends.extend(begin + latency * i / sent for i in range(sent))
    bucket = bucket_size(wall_s)
    window = max(bucket, RATE_WINDOW_S)
    count = max(1, math.ceil(wall_s / bucket - 1e-9))
    series = []
    for kind in ProviderKind:  # a stable order: llm, tts, image, video
        if kind not in requests:
            continue
        starts, ends, sends = (sorted(values) for values in requests[kind])
        provider = settings.provider(kind)
        limit = provider.rpm / 60 if provider.rpm else None
        series.append({
            "kind": kind.value,
            "limit_rps": round(limit, 4) if limit else None,
            # The most the rate line reaches while the limiter keeps the limit: a full bucket
            # (a burst, at least one request) spent within one window, on top of the limit.
            "burst_rps": (round(limit + max(1.0, limit * provider.burst_s) / window, 4)
                          if limit else None),
            "bucket_s": bucket,
            "rate_window_s": window,
            "points": [{"t_s": round(i * bucket, 4),
                        "in_flight": _in_flight(starts, ends, i * bucket),
                        "rate_rps": round(_sent(sends, (i + 1) * bucket, window, i == count - 1)
                                          / window, 4)} for i in range(count)],
        })
    return series


def _sent(sends: list[float], until: float, window: float, last: bool) -> int:
    """Requests sent in the ``window`` before ``until`` (sorted times); the last bucket also
    takes any sent at its very end."""
    upto = len(sends) if last else bisect.bisect_left(sends, until)
    return upto - bisect.bisect_left(sends, until - window)


def _in_flight(starts: list[float], ends: list[float], t: float) -> int:
    """Requests sent at or before ``t`` and not yet answered (both lists sorted)."""
    return bisect.bisect_right(starts, t) - bisect.bisect_right(ends, t)
