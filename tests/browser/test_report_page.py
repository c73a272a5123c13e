"""The run report's page in a real browser: opened from a file, offline, with its timeline drawn.

"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from pipelines.composition import ComposedScene
from pipelines.episode_state import EpisodeRecord, NodeRecord
from pipelines.models import EpisodeRequest, EpisodeStatus
from pipelines.planner import NodeKind
from pipelines.report import build_report
from pipelines.settings import Settings
from pipelines.timeline import build_timeline, episode_part
from showrunner.report_page import report_html, timeline_js

# Seconds a node of each kind takes, roughly: text is quick, media slower, a clip slowest.
TYPICAL_S = {NodeKind.OUTLINE: 2.0, NodeKind.CONTENT: 1.2, NodeKind.DIALOGUE: 1.5,
             NodeKind.SPEECH: 0.4, NodeKind.IMAGE: 2.5, NodeKind.CLIP: 3.0,
             NodeKind.COMPOSE: 1.0, NodeKind.STITCH: 0.5}
SETTINGS = Settings(llm={"rpm": 300}, tts={"rpm": 600}, image={"rpm": 60},
                    video={"base_url": "http://video.invalid/v1", "rpm": 30})


def simulated(episode: str, started_at: float, scenes: int, seed: int) -> EpisodeRecord:
    """An episode run as the planner would: each node starts once its inputs exist, after a
    short wait for its provider, and takes about its kind's typical time; a composition spends
    about half of it queued for a CPU."""
    rng = random.Random(seed)
    request = EpisodeRequest(premise="A lighthouse keeper's last night.", scenes=scenes,
                             lines_per_scene=2)
    rec = EpisodeRecord(id=episode, request=request, submitted_at=started_at,
                        started_at=started_at, status=EpisodeStatus.COMPLETED)
    finish: dict[Any, float] = {}
    for node in rec.plan().nodes.values():
        start = max((finish[d] for d in node.deps), default=0.0) + rng.uniform(0.0, 0.3)
        latency = TYPICAL_S[node.kind] * rng.uniform(0.6, 1.4)
        finish[node.id] = start + latency
        local = node.kind in (NodeKind.COMPOSE, NodeKind.STITCH)
        rec.nodes[node.id] = NodeRecord(started_s=start, finished_s=finish[node.id],
                                        latency_s=latency, calls=0 if local else 1,
                                        wait_s=0.0 if local else rng.uniform(0.0, 0.2),
                                        cost_usd=0.0 if local else 0.0004)
        if node.kind is NodeKind.COMPOSE:
            rec.results[node.id] = ComposedScene(length_s=1.0, cues=(), run_s=latency / 2)
    rec.finished_at = started_at + max(finish.values())
    return rec


def report_of(records: list[EpisodeRecord]) -> dict[str, Any]:
    report = build_report(records, {}, SETTINGS, cpus=4)
    report["timeline"] = build_timeline(records, SETTINGS, report["totals"]["bounds_s"])
    return report


@pytest.fixture
def report() -> dict[str, Any]:
    records = [simulated("3f9a1c0be7d2", 1000.0, 4, 1), simulated("8e21d4f6a0c9", 1001.5, 3, 2),
               simulated("c47b02e9d158", 1003.0, 4, 3)]
    records[1].error = "</script><script>window.pwned = 1</script>"  # must stay text
    return report_of(records)


def offline(page: Any) -> list[str]:
    """Refuse every http(s) request the page makes; returns the list of those it tried."""
    tried: list[str] = []

    def refuse(route: Any) -> None:
        if route.request.url.startswith(("http://", "https://")):
            tried.append(route.request.url)
            route.abort()
        else:
            route.continue_()

    page.route("**/*", refuse)
    return tried


def open_file(page: Any, path: Path, text: str) -> list[str]:
    path.write_text(text, encoding="utf-8")
    tried = offline(page)
    page.goto(path.as_uri())
    page.wait_for_selector("svg.timeline")
    return tried


def test_the_report_page_draws_the_run_offline_from_a_file(page: Any, tmp_path: Path,
                                                           report: dict[str, Any]) -> None:
    tried = open_file(page, tmp_path / "report.html", report_html(report))
    timeline = report["timeline"]
    assert page.locator(".bar").count() == len(timeline["bars"])
    waited = [bar for bar in timeline["bars"] if bar["wait_s"] > 0]
    assert page.locator(".bar-wait").count() == len(waited) > 0
    critical = page.locator(".bar.critical")
    assert critical.count() == len(timeline["critical_path"]["nodes"]) > 0
    label = page.locator(".lower-bound-label").text_content() or ""
    assert "lower bound" in label and label.endswith(f"set by {timeline['bottleneck']}")
    charts = page.locator("g.provider")
    assert charts.count() == len(timeline["providers"]) == 4  # llm, tts, image, video
    for at, provider in enumerate(timeline["providers"]):
        chart = charts.nth(at)
        assert chart.locator("line.limit").count() == 1
        # Above the limit by one burst: where the rate line may reach with the limit kept.
        burst, limit = (float(chart.locator(f"line.{name}").get_attribute("y1") or "nan")
                        for name in ("burst", "limit"))
        assert burst < limit  # higher on screen
        assert f"bursts to {provider['burst_rps']:g}" in (chart.text_content() or "")
    svg = page.locator("svg.timeline")
    assert svg.get_attribute("role") == "img"
    assert f"set by {timeline['bottleneck']}" in (svg.get_attribute("aria-label") or "")
    first = page.locator(".bar").first
    assert first.get_attribute("data-node") == timeline["bars"][0]["node"]
    assert (first.locator("title").text_content() or "").startswith(timeline["bars"][0]["node"])
    # The error text is shown as text and ran nothing.
    assert page.evaluate("window.pwned") is None
    assert page.get_by_text("window.pwned = 1", exact=False).count() == 1
    assert tried == []


def draw(page: Any, path: Path, *timelines: dict[str, Any]) -> list[str]:
    """As the live page does: the module's drawTimeline, called once for each of `timelines`."""
    calls = "".join(f"drawTimeline(box, {json.dumps(t)});\n" for t in timelines)
    script = (f"{timeline_js()}\nconst box = document.getElementById('box');\n{calls}"
              "document.body.dataset.drawn = 'yes';")
    text = f'<!doctype html><div id="box"></div><script type="module">{script}</script>'
    tried = open_file(page, path, text)
    page.wait_for_selector("body[data-drawn=yes]")
    return tried


def apart(a: dict[str, float], b: dict[str, float]) -> bool:
    """Whether two bounding boxes do not overlap on screen (touching edges is apart)."""
    return (a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"]
            or a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"])


def test_drawing_again_replaces_the_picture(page: Any, tmp_path: Path,
                                            report: dict[str, Any]) -> None:
    timeline = report["timeline"]
    part = episode_part(timeline, timeline["lanes"][0]["episode"])
    tried = draw(page, tmp_path / "again.html", timeline, part)
    assert page.locator("svg").count() == 1
    assert page.locator(".bar").count() == len(part["bars"]) < len(timeline["bars"])
    assert tried == []


def test_a_report_without_a_timeline_says_so(page: Any, tmp_path: Path,
                                             report: dict[str, Any]) -> None:
    del report["timeline"]
    (tmp_path / "old.html").write_text(report_html(report), encoding="utf-8")
    page.goto((tmp_path / "old.html").as_uri())
    assert page.locator("#no-timeline").is_visible()
    assert page.locator("svg").count() == 0


def test_bars_running_at_once_in_a_lane_are_stacked_and_bars_in_turn_share_a_row(
        page: Any, tmp_path: Path) -> None:
    def bar(lane: int, node: str, stage: str, start: float, end: float) -> dict[str, Any]:
        return {"lane": lane, "node": node, "stage": stage, "start_s": start, "end_s": end,
                "status": "done", "calls": 1, "cost_usd": 0.0, "critical": node == "image"}

    # A scene's picture runs over both of its speech lines, which run one after the other.
    bars = [bar(0, "image", "image", 0.0, 4.0), bar(0, "speech 1", "speech", 1.0, 2.0),
            bar(0, "speech 2", "speech", 2.5, 3.0), bar(0, "clip", "clip", 4.0, 5.0),
            bar(1, "other", "image", 0.0, 5.0)]
    timeline = {"version": 1, "started_at": 0.0, "wall_s": 5.0, "stages": ["speech", "image"],
                "lanes": [{"episode": "e", "scene": 1, "label": "e · scene 1"},
                          {"episode": "e", "scene": 2, "label": "e · scene 2"}],
                "bars": bars, "providers": [], "critical_path": None, "lower_bound_s": 0.0,
                "bottleneck": None, "bounds_s": {}}
    draw(page, tmp_path / "stacked.html", timeline)
    box = {b["node"]: page.locator(f'.bar[data-node="{b["node"]}"]').bounding_box()
           for b in bars}
    assert apart(box["image"], box["speech 1"]) and apart(box["image"], box["speech 2"])
    assert box["speech 1"]["y"] == box["speech 2"]["y"] != box["image"]["y"]
    assert box["clip"]["y"] == box["image"]["y"]  # starts as the picture ends
    # The next lane starts below all of this lane's rows.
    assert box["other"]["y"] >= box["speech 1"]["y"] + box["speech 1"]["height"]


def test_no_two_bars_overlap_on_screen(page: Any, tmp_path: Path,
                                       report: dict[str, Any]) -> None:
    timeline = report["timeline"]
    open_file(page, tmp_path / "report.html", report_html(report))
    drawn = page.locator(".bar")
    boxes = [drawn.nth(at).bounding_box() for at in range(drawn.count())]
    overlapping = [(a["node"], b["node"]) for i, a in enumerate(timeline["bars"])
                   for j, b in enumerate(timeline["bars"][:i])
                   if a["lane"] == b["lane"] and not apart(boxes[i], boxes[j])]
    assert overlapping == []
    same_time = [(a, b) for i, a in enumerate(timeline["bars"]) for b in timeline["bars"][:i]
                 if a["lane"] == b["lane"] and a["start_s"] < b["end_s"]
                 and b["start_s"] < a["end_s"]]
    assert same_time  # the simulated run does run nodes of a scene at once


def test_a_bars_waiting_part_is_drawn_over_its_start_and_only_where_it_waited(
        page: Any, tmp_path: Path) -> None:
    def bar(node: str, stage: str, start: float, end: float, calls: int,
            wait: float | None) -> dict[str, Any]:
        drawn = {"lane": 0, "node": node, "stage": stage, "start_s": start, "end_s": end,
                 "status": "done", "calls": calls, "cost_usd": 0.0, "critical": False}
        return drawn if wait is None else {**drawn, "wait_s": wait}  # None: data from before

    bars = [bar("image:1", "image", 0.0, 4.0, 1, 1.0),
            bar("compose:1", "compose", 4.0, 10.0, 0, 4.5),
            bar("speech:1.1", "speech", 0.0, 1.0, 1, 0.0),
            bar("clip:1", "clip", 1.0, 3.0, 0, None)]
    timeline = {"version": 1, "started_at": 0.0, "wall_s": 10.0, "stages": ["image", "compose"],
                "lanes": [{"episode": "e", "scene": 1, "label": "e · scene 1"}],
                "bars": bars, "providers": [], "critical_path": None, "lower_bound_s": 0.0,
                "bottleneck": None, "bounds_s": {}}
    tried = draw(page, tmp_path / "waits.html", timeline)
    assert page.locator(".bar").count() == len(bars)
    assert page.locator(".bar-wait").count() == 2
    assert page.locator(".bar-wait[data-node]").count() == 0  # the node is its .bar's alone
    for node, share in (("image:1", 1.0 / 4.0), ("compose:1", 4.5 / 6.0)):
        whole = page.locator(f'.bar[data-node="{node}"]')
        box = whole.bounding_box()
        waits = [page.locator(".bar-wait").nth(at).bounding_box() for at in range(2)]
        wait = next(w for w in waits if w["x"] == pytest.approx(box["x"], abs=0.5)
                    and w["y"] == pytest.approx(box["y"], abs=0.5))
        assert wait["width"] < box["width"]
        assert wait["width"] == pytest.approx(box["width"] * share, abs=1.0)
    image = page.locator('.bar[data-node="image:1"] title').text_content() or ""
    compose = page.locator('.bar[data-node="compose:1"] title').text_content() or ""
    assert "waited 1.00 s for the provider's limit" in image
    assert "waited 4.50 s for a CPU" in compose
    for node in ("speech:1.1", "clip:1"):  # no wait, or none known: all of it is work
        assert "waited" not in (page.locator(f'.bar[data-node="{node}"] title').text_content()
                                or "")
    assert page.get_by_text("waiting (for a CPU or a rate limit)").count() == 1
    assert tried == []
