"""The run timeline: lanes, bars, the critical path, the providers' load, the lower bound."""

from __future__ import annotations

import html
import itertools
import json
import random
from pathlib import Path
from typing import Any

import pytest

from pipelines.composition import ComposedScene
from pipelines.episode_state import EpisodeRecord, MediaFile, NodeRecord
from pipelines.models import Continuity, EpisodeRequest, EpisodeStatus
from pipelines.planner import NodeId, plan_episode
from pipelines.report import build_report
from pipelines.settings import Settings
from pipelines.storage import Storage
from pipelines.timeline import STAGES, bucket_size, build_timeline, episode_part
from showrunner import launcher
from showrunner.report_page import report_html

pytestmark = pytest.mark.usefixtures("clean_env")

# A one-scene, one-line episode: outline → content → dialogue → speech ┐
#                                          content → image → clip ─────┴→ compose → stitch
# node: (started_s, finished_s, latency_s, calls), relative to the episode's start. Its clip
# is made here (no video provider): no calls.
DONE = {"outline:1": (0.0, 1.0, 1.0, 1), "content:1": (1.0, 2.0, 1.0, 1),
        "dialogue:1": (2.0, 3.0, 1.0, 1), "speech:1.1": (3.0, 3.5, 0.5, 1),
        "image:1": (2.0, 4.0, 2.0, 1), "clip:1": (4.0, 4.1, 0.1, 0),
        "compose:1": (4.1, 6.0, 1.9, 0), "stitch:0": (6.0, 6.2, 0.2, 0)}
CRITICAL = ["outline:1", "content:1", "image:1", "clip:1", "compose:1", "stitch:0"]  # 6.2 s


def record(episode: str, started_at: float, nodes: dict[str, tuple[float, float | None, float,
                                                                      int]],
           finished_at: float | None = None) -> EpisodeRecord:
    request = EpisodeRequest(premise="A lighthouse.", scenes=1, lines_per_scene=1)
    status = EpisodeStatus.COMPLETED if finished_at is not None else EpisodeStatus.RUNNING
    rec = EpisodeRecord(id=episode, request=request, submitted_at=0.0, started_at=started_at,
                        finished_at=finished_at, status=status)
    for node, (start, end, latency, calls) in nodes.items():
        rec.nodes[NodeId.parse(node)] = NodeRecord(started_s=start, finished_s=end,
                                                   latency_s=latency, calls=calls,
                                                   cost_usd=0.001 * calls)
    return rec


def run() -> list[EpisodeRecord]:
    """Episode ``a`` done; ``b``, a second later, outlined and writing its scene's content."""
    a = record("aaaaaaaaaaaa", 100.0, DONE, finished_at=106.2)
    b = record("bbbbbbbbbbbb", 101.0, {"outline:1": (0.0, 1.5, 1.5, 1),
                                       "content:1": (1.5, None, 0.0, 0)})
    return [a, b]


def bars_by_node(timeline: dict[str, Any], episode: str) -> dict[str, dict[str, Any]]:
    lanes = {at for at, lane in enumerate(timeline["lanes"]) if lane["episode"] == episode}
    return {bar["node"]: bar for bar in timeline["bars"] if bar["lane"] in lanes}


def point_at(provider: dict[str, Any], t_s: float) -> dict[str, Any]:
    return next(p for p in provider["points"] if p["t_s"] == pytest.approx(t_s))


# -- the planner's critical chain -------------------------------------------------------------


def test_the_critical_nodes_are_the_chain_the_critical_path_measures() -> None:
    plan = plan_episode(1, Continuity("chain"), 1)
    durations = {NodeId.parse(n): latency for n, (_, _, latency, _) in DONE.items()}
    chain = plan.critical_nodes(durations)
    assert [str(n) for n in chain] == CRITICAL
    assert sum(durations[n] for n in chain) == pytest.approx(plan.critical_path(durations))
    assert plan.critical_nodes({}) == []  # nothing took any time: no chain to show


@pytest.mark.parametrize("seed", range(5))
def test_the_critical_nodes_are_a_chain_of_inputs_as_long_as_the_critical_path(seed: int
                                                                               ) -> None:
    plan = plan_episode(7, Continuity("chain"), 3)
    rng = random.Random(seed)
    durations = {nid: rng.uniform(0.1, 3.0) for nid in plan.nodes}
    chain = plan.critical_nodes(durations)
    assert all(earlier in plan.nodes[later].deps for earlier, later in itertools.pairwise(chain))
    assert not plan.nodes[chain[0]].deps  # from a node that waits for none
    assert sum(durations[n] for n in chain) == pytest.approx(plan.critical_path(durations))


# -- lanes and bars ------------------------------------------------------------------------------


def test_one_bar_per_started_node_on_lanes_per_scene_from_the_earliest_start() -> None:
    timeline = build_timeline(run(), Settings(), now=108.0)
    assert timeline["version"] == 1 and timeline["stages"] == STAGES
    assert timeline["started_at"] == 100.0
    assert len(timeline["bars"]) == len(DONE) + 2
    # Each episode: its own lane (outline, stitch), then one per scene.
    assert [(lane["episode"][0], lane["scene"]) for lane in timeline["lanes"]] == [
        ("a", None), ("a", 1), ("b", None), ("b", 1)]
    assert timeline["lanes"][1]["label"] == "aaaaaaaa · scene 1"
    assert timeline["lanes"][2]["label"] == "bbbbbbbb · episode"
    a, b = bars_by_node(timeline, "aaaaaaaaaaaa"), bars_by_node(timeline, "bbbbbbbbbbbb")
    assert timeline["lanes"][a["stitch:0"]["lane"]]["scene"] is None
    assert timeline["lanes"][a["speech:1.1"]["lane"]]["scene"] == 1
    assert (a["image:1"]["start_s"], a["image:1"]["end_s"]) == (2.0, 4.0)
    assert a["image:1"]["stage"] == "image" and a["image:1"]["status"] == "done"
    assert a["image:1"]["calls"] == 1 and a["image:1"]["cost_usd"] == 0.001
    # b started a second after a: its times are on the run's clock.
    assert (b["outline:1"]["start_s"], b["outline:1"]["end_s"]) == (1.0, 2.5)
    # Still running: it ends now.
    assert b["content:1"]["status"] == "running"
    assert (b["content:1"]["start_s"], b["content:1"]["end_s"]) == (2.5, 8.0)
    assert timeline["wall_s"] == 8.0


def test_without_now_a_running_node_ends_at_the_last_end_seen() -> None:
    timeline = build_timeline(run(), Settings())
    assert bars_by_node(timeline, "bbbbbbbbbbbb")["content:1"]["end_s"] == 6.2
    assert timeline["wall_s"] == 6.2


def test_a_failed_node_and_one_cut_off_by_its_episodes_end_are_failed() -> None:
    nodes = {"outline:1": (0.0, 1.0, 1.0, 1), "content:1": (1.0, None, 0.0, 0)}
    rec = record("c", 10.0, nodes, finished_at=13.0)
    rec.nodes[NodeId.parse("outline:1")].error = "the provider said no"
    bars = bars_by_node(build_timeline([rec], Settings()), "c")
    assert bars["outline:1"]["status"] == "failed"
    assert bars["content:1"]["status"] == "failed" and bars["content:1"]["end_s"] == 3.0


def test_no_episode_started_gives_an_empty_timeline() -> None:
    queued = record("q", 0.0, {})
    queued.started_at = None
    timeline = build_timeline([queued], Settings())
    assert timeline["started_at"] is None and timeline["bars"] == [] == timeline["lanes"]
    assert timeline["critical_path"] is None and timeline["providers"] == []


def test_a_composition_that_queued_for_a_cpu_waited_its_span_less_the_time_it_ran() -> None:
    rec = record("a", 100.0, DONE, finished_at=106.2)
    # compose:1 spans 4.1 to 6.0 s but ran 0.4 s of it: 1.5 s queued for a free CPU.
    rec.results[NodeId.parse("compose:1")] = ComposedScene(length_s=1.0, cues=(), cpu_s=0.3,
                                                           run_s=0.4)
    rec.results[NodeId.parse("clip:1")] = MediaFile(run_s=0.04)  # made here, after a queue
    bars = bars_by_node(build_timeline([rec], Settings()), "a")
    assert bars["compose:1"]["wait_s"] == 1.5
    assert bars["clip:1"]["wait_s"] == 0.06
    # No result that says how long it ran, or one that ran longer than its span: no wait.
    assert bars["stitch:0"]["wait_s"] == 0.0
    rec.results[NodeId.parse("compose:1")] = ComposedScene(length_s=1.0, cues=(), run_s=5.0)
    assert bars_by_node(build_timeline([rec], Settings()), "a")["compose:1"]["wait_s"] == 0.0


def test_a_provider_nodes_wait_is_its_calls_limiter_wait_never_more_than_its_span() -> None:
    rec = record("a", 100.0, DONE, finished_at=106.2)
    rec.nodes[NodeId.parse("image:1")].wait_s = 0.75  # of its 2 s span
    rec.nodes[NodeId.parse("speech:1.1")].wait_s = 3.0  # summed over calls, more than its 0.5 s
    timeline = build_timeline([rec], Settings())
    bars = bars_by_node(timeline, "a")
    assert bars["image:1"]["wait_s"] == 0.75
    assert bars["speech:1.1"]["wait_s"] == 0.5
    assert bars["outline:1"]["wait_s"] == 0.0
    assert all(0.0 <= bar["wait_s"] <= bar["end_s"] - bar["start_s"] for bar in timeline["bars"])


def test_a_running_nodes_wait_is_within_its_span_so_far() -> None:
    records = run()
    records[1].nodes[NodeId.parse("content:1")].wait_s = 9.0  # its calls so far waited
    bar = bars_by_node(build_timeline(records, Settings(), now=104.0), "bbbbbbbbbbbb")["content:1"]
    # It ends with the run's last end (a's 6.2 s), not at now: its span so far is 3.7 s.
    assert bar["status"] == "running" and bar["end_s"] - bar["start_s"] == pytest.approx(3.7)
    assert bar["wait_s"] == 3.7


# -- the critical path and the lower bound ------------------------------------------------------


def test_the_critical_bars_are_the_longest_episodes_critical_nodes() -> None:
    timeline = build_timeline(run(), Settings())
    assert timeline["critical_path"] == {"episode": "aaaaaaaaaaaa", "nodes": CRITICAL,
                                         "length_s": 6.2}
    assert sorted(b["node"] for b in timeline["bars"] if b["critical"]) == sorted(CRITICAL)
    assert not any(bars_by_node(timeline, "bbbbbbbbbbbb")[n]["critical"] for n in ("outline:1",
                                                                                   "content:1"))


def test_the_bounds_given_are_passed_through_with_what_set_the_lower_bound() -> None:
    bounds = {"critical path": 6.2, "llm requests": 9.0, "CPU": 1.0}
    timeline = build_timeline(run(), Settings(), bounds)
    assert timeline["bounds_s"] == bounds
    assert (timeline["lower_bound_s"], timeline["bottleneck"]) == (9.0, "llm requests")


def test_without_bounds_the_graphs_and_the_cpus_are_computed_as_the_report_does() -> None:
    timeline = build_timeline(run(), Settings())
    assert set(timeline["bounds_s"]) == {"critical path", "CPU"}
    assert timeline["bounds_s"]["critical path"] == pytest.approx(6.2)
    assert (timeline["lower_bound_s"], timeline["bottleneck"]) == (6.2, "critical path")


# -- the providers ----------------------------------------------------------------------------


def test_requests_in_flight_at_chosen_instants() -> None:
    timeline = build_timeline(run(), Settings(), now=108.0)
    # Clips made here, compositions and the stitch are this cluster's work: no provider's.
    assert [p["kind"] for p in timeline["providers"]] == ["llm", "tts", "image"]
    llm, tts, image = timeline["providers"]
    assert llm["bucket_s"] == bucket_size(8.0) == 0.05
    assert point_at(llm, 0.5)["in_flight"] == 1  # a's outline
    assert point_at(llm, 1.5)["in_flight"] == 2  # a's content, b's outline
    assert point_at(llm, 2.75)["in_flight"] == 1  # a's dialogue; b's content has sent nothing known
    assert point_at(llm, 5.0)["in_flight"] == 0
    assert point_at(tts, 3.25)["in_flight"] == 1 and point_at(image, 3.0)["in_flight"] == 1


def test_the_request_rate_over_the_last_second_against_the_providers_limit() -> None:
    settings = Settings(llm={"rpm": 120}, tts={"rpm": None})
    # Five speech calls of a node, sent one after another over its second of latency: at 3.0,
    # 3.2, 3.4, 3.6 and 3.8 s.
    nodes = {**DONE, "speech:1.1": (3.0, 4.0, 1.0, 5)}
    timeline = build_timeline([record("a", 100.0, nodes, finished_at=106.2)], settings)
    llm, tts, _ = timeline["providers"]
    assert llm["limit_rps"] == 2.0 and tts["limit_rps"] is None
    # A second's burst (2 requests) spent at once, on top of the limit, within one second.
    assert llm["burst_rps"] == 4.0 and tts["burst_rps"] is None
    assert tts["bucket_s"] == 0.05 and tts["rate_window_s"] == 1.0
    assert point_at(tts, 3.95)["rate_rps"] == 5.0  # the bucket ending at 4.0: all five
    assert point_at(tts, 3.45)["rate_rps"] == 3.0  # ending at 3.5: three in the second before
    assert point_at(tts, 4.95)["rate_rps"] == 0.0
    # Content's request at 1 s; the outline's, at 0, is more than a second before 1.55.
    assert point_at(llm, 1.5)["rate_rps"] == 1.0
    assert 60 <= len(llm["points"]) <= 200


def test_over_buckets_of_a_second_or_more_the_rate_is_each_buckets_requests() -> None:
    slow = {node: (start * 100, end * 100, latency * 100, calls)
            for node, (start, end, latency, calls) in DONE.items()}
    slow["speech:1.1"] = (300.0, 350.0, 50.0, 5)
    timeline = build_timeline([record("a", 0.0, slow, finished_at=620.0)], Settings())
    llm, tts, _ = timeline["providers"]
    assert tts["bucket_s"] == tts["rate_window_s"] == 5.0
    # A slow limit's bucket still holds one whole request: over a window of 5 s, 0.2 more.
    assert Settings(llm={"rpm": 6}).llm.burst_s == 1.0
    slow_limit = build_timeline([record("a", 0.0, slow, finished_at=620.0)],
                                Settings(llm={"rpm": 6}))["providers"][0]
    assert (slow_limit["limit_rps"], slow_limit["burst_rps"]) == (0.1, 0.3)
    assert sum(p["rate_rps"] * 5.0 for p in tts["points"]) == pytest.approx(5)
    assert sum(p["rate_rps"] * 5.0 for p in llm["points"]) == pytest.approx(3)
    assert point_at(tts, 300.0)["rate_rps"] == 0.2  # one of the five (at 300) in 5 s


def test_calls_answered_by_the_cache_reach_no_provider() -> None:
    rec = record("a", 100.0, DONE, finished_at=106.2)
    speech = rec.nodes[NodeId.parse("speech:1.1")]
    speech.cache_hits = 1
    kinds = [p["kind"] for p in build_timeline([rec], Settings())["providers"]]
    assert kinds == ["llm", "image"]


def test_a_clip_is_the_video_providers_only_when_one_is_configured() -> None:
    nodes = {**DONE, "clip:1": (4.0, 4.1, 0.1, 1)}
    here = build_timeline([record("a", 0.0, nodes, finished_at=6.2)], Settings())
    there = build_timeline([record("a", 0.0, nodes, finished_at=6.2)],
                           Settings(video={"base_url": "http://video.example/v1"}))
    assert "video" not in [p["kind"] for p in here["providers"]]
    assert [p["kind"] for p in there["providers"]][-1] == "video"


@pytest.mark.parametrize("wall", [0.0, 0.3, 8.0, 12.3, 201.0, 3600.0])
def test_buckets_are_round_and_60_to_200_of_them_cover_the_run(wall: float) -> None:
    bucket = bucket_size(wall)
    assert wall / bucket <= 200 and (wall == 0.0 or wall / bucket >= 60)


# -- one episode's part -----------------------------------------------------------------------


def test_an_episodes_part_keeps_its_lanes_renumbered_and_its_own_critical_path() -> None:
    timeline = build_timeline(run(), Settings(), now=108.0)
    b = episode_part(timeline, "bbbbbbbbbbbb")
    assert [lane["episode"] for lane in b["lanes"]] == ["bbbbbbbbbbbb"] * 2
    assert sorted(bar["lane"] for bar in b["bars"]) == [0, 1]
    assert b["critical_path"] is None and not any(bar["critical"] for bar in b["bars"])
    assert b["providers"] == timeline["providers"] and b["wall_s"] == timeline["wall_s"]
    a = episode_part(timeline, "aaaaaaaaaaaa")
    assert a["critical_path"] == timeline["critical_path"]
    assert len(a["bars"]) == len(DONE) and sum(bar["critical"] for bar in a["bars"]) == 6
    assert episode_part(timeline, "nobody")["bars"] == []


# -- the report's page --------------------------------------------------------------------------


def page_report(error: str = "") -> dict[str, Any]:
    records = run()
    report = build_report(records, {}, Settings(), cpus=2)
    report["episodes"][0]["error"] = error
    report["timeline"] = build_timeline(records, Settings(), report["totals"]["bounds_s"])
    return report


def test_the_pages_data_cannot_end_its_script_early() -> None:
    hostile = "</script><script>window.pwned = 1</script><!-- A lighthouse </SCRIPT >"
    report = page_report(error=hostile)
    page = report_html(report)
    opening = '<script type="application/json" id="report-data">'
    data = page[page.index(opening) + len(opening):]
    data = data[:data.index("</script>")]
    assert json.loads(data) == report  # the whole report, read back as it was
    assert "<" not in data
    # Everywhere else it is text, not markup.
    assert "<script>window.pwned" not in page and html.escape(hostile) in page


def test_the_page_inlines_the_timeline_module_and_draws_the_reports_timeline() -> None:
    page = report_html(page_report())
    assert '<script type="module">' in page and "export function drawTimeline" in page
    assert "drawTimeline(document.getElementById(\"timeline\"), data.timeline)" in page
    assert "<script src" not in page and "http" not in page.replace("http://www.w3.org", "")


def test_a_report_without_a_timeline_says_so_instead_of_drawing() -> None:
    report = page_report()
    del report["timeline"]
    page = report_html(report)
    assert 'id="no-timeline"' in page and "<script" not in page


def test_the_report_and_its_page_are_written_beside_each_other(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "store"))
    extra = tmp_path / "mine" / "run.json"
    extra.parent.mkdir()
    assert launcher.write_report(page_report(), storage, extra) is None
    assert json.loads((tmp_path / "store" / launcher.REPORT_FILE).read_text())["timeline"]
    assert (tmp_path / "store" / launcher.REPORT_PAGE).read_text().startswith("<!doctype html>")
    assert extra.exists() and (tmp_path / "mine" / "run.html").exists()
    named_html = tmp_path / "mine" / "run.html"  # the JSON's own name: the page goes beside it
    assert launcher.write_report(page_report(), storage, named_html) is None
    assert json.loads(named_html.read_text())["timeline"]
    assert (tmp_path / "mine" / "run.html.html").read_text().startswith("<!doctype html>")


def test_a_page_that_cannot_be_written_is_reported_as_the_json_is(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "store"))
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / launcher.REPORT_PAGE).mkdir()  # a folder where the page should go
    why = launcher.write_report(page_report(), storage, None)
    assert why is not None and why.startswith("the report was not written")
