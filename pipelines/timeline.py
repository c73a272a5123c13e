"""The run timeline: a picture of a run drawn from its episodes' records. Pure, no Ray.

The data (JSON, drawn by ``showrunner/studio/static/timeline.js``) has one lane per scene of
each episode, one bar per node that started, each provider's calls in flight and request rate
against its limit, the critical path, and the lower bound with what set it.
"""

from __future__ import annotations

from typing import Any


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
