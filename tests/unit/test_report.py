"""The run report's lower bound: the critical path, the providers' limits, and the CPUs."""

from __future__ import annotations

from typing import Any

import pytest

from pipelines.composition import ComposedScene
from pipelines.episode_state import EpisodeRecord, NodeRecord
from pipelines.episode_view import EpisodeView
from pipelines.models import EpisodeRequest, EpisodeStatus
from pipelines.planner import NodeKind, compose_id
from pipelines.report import build_report, episode_entry, packed_s, slots_bound
from pipelines.settings import ProviderKind, Settings

# A one-scene, one-line episode: outline → content → dialogue → speech ┐
#                                          content → image → clip ─────┴→ compose → stitch
LATENCY = {"outline:1": 1.0, "content:1": 1.0, "dialogue:1": 1.0, "speech:1.1": 0.5,
           "image:1": 2.0, "clip:1": 0.1, "compose:1": 9.0, "stitch:0": 0.2}


def record(episode: str, *, cpu_s: float, run_s: float = 0.0) -> EpisodeRecord:
    request = EpisodeRequest(premise="A lighthouse.", scenes=1, lines_per_scene=1)
    rec = EpisodeRecord(id=episode, request=request, submitted_at=0.0, started_at=100.0,
                        finished_at=120.0, status=EpisodeStatus.COMPLETED)
    rec.engine.done.update(rec.plan().nodes)
    rec.nodes = {nid: NodeRecord(latency_s=LATENCY[str(nid)]) for nid in rec.plan().nodes}
    rec.results[compose_id(1)] = ComposedScene(length_s=3.0, cues=(), cpu_s=cpu_s, run_s=run_s)
    return rec


def test_a_composition_counts_the_time_it_ran_not_its_wait_for_a_cpu() -> None:
    queued = episode_entry(EpisodeView.of(record("a", cpu_s=0.5)))  # no run_s: as recorded
    ran = episode_entry(EpisodeView.of(record("a", cpu_s=0.5, run_s=1.0)))
    # image (2) + clip (0.1) after outline and content, then compose and stitch.
    assert queued["critical_path_s"] == pytest.approx(2 + 2.1 + 9.0 + 0.2)
    assert ran["critical_path_s"] == pytest.approx(2 + 2.1 + 1.0 + 0.2)
    assert ran["cpu_s"] == 0.5


def test_the_cpus_bound_the_run_when_its_media_work_outweighs_the_graph() -> None:
    records = [record(f"e{i}", cpu_s=6.0, run_s=1.0) for i in range(4)]  # 24 CPU-s of work
    report = build_report(records, {}, Settings(), cpus=2)
    totals = report["totals"]
    assert totals["cpu_s"] == 24.0 and totals["cpus"] == 2.0
    assert totals["bottleneck"] == "CPU" and totals["lower_bound_s"] == pytest.approx(12.0)
    assert totals["bounds_s"]["critical path"] == pytest.approx(5.3)
    assert totals["parallel_efficiency"] == pytest.approx(12.0 / 20.0)
    on_eight = build_report(records, {}, Settings(), cpus=8)["totals"]
    assert on_eight["bottleneck"] == "critical path"  # 3 s of CPU each: the graph is longer
    assert on_eight["lower_bound_s"] == pytest.approx(5.3)


def test_without_a_cpu_count_the_report_uses_this_machines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    totals = build_report([record("a", cpu_s=40.0)], {}, Settings())["totals"]
    assert totals["cpus"] == 4.0 and totals["bounds_s"]["CPU"] == pytest.approx(10.0)


def test_a_script_only_run_has_no_cpu_term_to_speak_of() -> None:
    rec = record("a", cpu_s=0.0)
    rec.results.clear()
    totals = build_report([rec], {}, Settings(), cpus=2)["totals"]
    assert totals["cpu_s"] == 0.0 and totals["bounds_s"]["CPU"] == 0.0
    assert totals["bottleneck"] == "critical path"


def test_a_capped_resource_bounds_from_the_first_moment_its_work_can_start() -> None:
    records = [record("a", cpu_s=0.5, run_s=1.0), record("b", cpu_s=0.5, run_s=1.0)]
    bound = slots_bound(records, NodeKind.CLIP, spread_s=3.0)
    # No clip before its picture (outline, content, image: 4 s); 3 s on the places; then the
    # scene's composition (1 s, as it ran) and the stitch.
    assert (bound.head_s, bound.spread_s) == pytest.approx((4.0, 3.0))
    assert bound.tail_s == pytest.approx(1.2)
    assert bound.total_s == pytest.approx(8.2)
    assert slots_bound(records, NodeKind.OUTLINE, spread_s=0.0).head_s == 0.0  # waits for none
    text = EpisodeRecord(id="t", request=EpisodeRequest(premise="A lighthouse.", scenes=1,
                                                        media=False),
                         submitted_at=0.0)
    assert slots_bound([text], NodeKind.CLIP, 3.0).total_s == 0.0  # no clips at all


@pytest.mark.parametrize(
    ("lengths", "slots", "expected"),
    [
        ([], 10, 0.0),
        ([2.0] * 20, 10, 4.0),  # even: the sum over the places
        ([1.0, 1.0, 3.0], 2, 4.0),  # the third starts at 1 on a freed place
        ([3.0, 1.0, 1.0, 1.0], 2, 3.0),  # the short ones fill the other place meanwhile
        ([1.0, 1.0, 1.0, 3.0], 2, 4.0),  # the long one drawn last ends alone
        ([5.0, 1.0], 4, 5.0),  # never less than the longest job
    ],
)
def test_jobs_packed_on_places_in_the_order_drawn(lengths: list[float], slots: int,
                                                  expected: float) -> None:
    assert packed_s(lengths, slots) == pytest.approx(expected)
    assert packed_s(lengths, slots) >= sum(lengths) / slots


def _video_stats(job_s: float) -> dict[str, Any]:
    return {"calls": 20, "ok": 20, "rate_limited": 0, "retries": 0, "errors": {},
            "tokens_in": 0, "tokens_out": 0, "cost_usd": 0.0, "limiter_wait_s": 0.0,
            "job_s": job_s}


def test_a_video_providers_cap_of_jobs_bounds_the_run() -> None:
    records = [record("a", cpu_s=0.5, run_s=1.0), record("b", cpu_s=0.5, run_s=1.0)]
    settings = Settings(video={"max_jobs": 10, "rpm": None})  # requests bound nothing here
    jobs = {ProviderKind.VIDEO: _video_stats(300.0)}
    totals = build_report(records, jobs, settings, cpus=2)["totals"]
    # Clips wait for a picture (4 s), 300 s of jobs on 10 places, then compose and stitch.
    assert totals["bounds_s"]["video jobs"] == pytest.approx(4.0 + 30.0 + 1.2)
    assert totals["bottleneck"] == "video jobs"
    wider = build_report(records, jobs,
                         Settings(video={"max_jobs": 100, "rpm": None}), cpus=2)["totals"]
    assert wider["bounds_s"]["video jobs"] == pytest.approx(4.0 + 3.0 + 1.2)
    # The recorded clip nodes' own latency is their download's: the jobs' time lies on the
    # path too, so this term is never below the critical path through a clip.
    assert wider["bounds_s"]["critical path"] == pytest.approx(5.3)
    no_jobs = build_report(records, {ProviderKind.VIDEO: _video_stats(0.0)}, settings,
                           cpus=2)["totals"]
    assert "video jobs" not in no_jobs["bounds_s"]
