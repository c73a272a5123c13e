"""Without Ray the metrics go nowhere; the dashboard queries only metrics that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from actors import metrics
from actors.stats import ProviderStats

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "showrunner.json"


class Recording:
    """A sink that keeps what it is told, to show the counters and the metrics agree."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[object, ...]]] = []

    def __getattr__(self, name: str) -> object:
        return lambda *args: self.events.append((name, args))


def test_the_plain_classes_need_no_ray_and_default_to_no_metrics() -> None:
    stats = ProviderStats()
    assert stats.metrics is metrics.NO_METRICS
    for name in ("succeeded", "gave_up", "rate_limited", "retried", "waited", "job_ended",
                 "episodes", "stage"):
        assert callable(getattr(metrics.NO_METRICS, name))


def test_stats_count_and_tell_their_sink_the_same() -> None:
    sink = Recording()
    stats = ProviderStats(metrics=sink)  # type: ignore[arg-type]
    stats.started()
    stats.waited("http://h:1", 0.25)
    stats.attempt_failed("http://h:1", "RateLimited", rate_limited=True)
    stats.retried("http://h:1")
    stats.waited("http://h:1", 0.5)
    stats.succeeded("http://h:1", latency_s=0.1, tokens_in=10, tokens_out=5, units=0,
                    cost_usd=0.01)
    snap = stats.snapshot()
    assert (snap["calls"], snap["ok"], snap["failed"], snap["rate_limited"], snap["retries"]) == (
        1, 1, 0, 1, 1)
    assert snap["errors"] == {"RateLimited": 1} and snap["limiter_wait_s"] == 0.75
    assert (snap["tokens_in"], snap["tokens_out"], snap["latency"]["count"]) == (10, 5, 1)
    assert [name for name, _ in sink.events] == [
        "waited", "rate_limited", "retried", "waited", "succeeded"]


def test_names_are_prefixed_and_unique() -> None:
    names = [spec.name for spec in metrics.SPECS]
    assert len(set(names)) == len(names)
    assert all(name.startswith("showrunner_") for name in names)


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    return [p for panel in panels for p in (panel, *_panels(panel.get("panels", [])))]


def test_the_dashboard_queries_only_metrics_that_exist_and_shows_them_all() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = {name: spec for spec in metrics.SPECS for name in spec.exported()}
    shown: set[str] = set()
    graphs = [p for p in _panels(dashboard["panels"]) if p["type"] != "row"]
    assert graphs
    for panel in graphs:
        assert panel["datasource"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            named = set(re.findall(r"\bray_showrunner_\w+", target["expr"]))
            assert named, f"{panel['title']}: {target['expr']}"
            assert named <= exported.keys(), f"{panel['title']}: {named - exported.keys()}"
            assert 'SessionName=~"$SessionName"' in target["expr"], panel["title"]
            shown |= {exported[name].name for name in named}
    assert shown == {spec.name for spec in metrics.SPECS}  # no metric left off the dashboard
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    assert {"SessionName", "Cluster"} <= variables.keys()
    ids = [p["id"] for p in _panels(dashboard["panels"])]
    assert len(set(ids)) == len(ids)
