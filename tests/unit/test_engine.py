"""The episode engine as a pure state machine: no event loop, no I/O."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.engine import (
    UNWINDOWED,
    ConcurrencyWindow,
    EngineState,
    EpisodeEngine,
    NodeState,
)
from pipelines.models import Continuity, EpisodeStatus
from pipelines.planner import (
    STITCH_ID,
    EpisodePlan,
    NodeId,
    clip_id,
    compose_id,
    content_id,
    dialogue_id,
    image_id,
    outline_id,
    plan_episode,
    speech_id,
)


def engine(scenes: int = 3, mode: str = "chain", lines: int = 0, *, skip: bool = False,
           window: int = 100, state: EngineState | None = None) -> EpisodeEngine:
    plan = plan_episode(scenes, Continuity.parse(mode), lines)
    return EpisodeEngine(plan, state or EngineState(), skip_failed_scenes=skip,
                         max_window=window)


def started(e: EpisodeEngine) -> list[NodeId]:
    return [n.id for n in e.start_ready()]


def run_through(e: EpisodeEngine, *nids: NodeId) -> None:
    for nid in nids:
        assert nid in e.running, f"{nid} is not running"
        e.mark_done(nid)


def test_nodes_start_the_moment_their_inputs_exist() -> None:
    e = engine(3, "chain")
    assert started(e) == [outline_id(1)] and started(e) == []
    assert e.state_of(content_id(1)) is NodeState.PENDING
    e.mark_done(outline_id(1))
    assert e.state_of(content_id(1)) is NodeState.READY
    assert started(e) == [content_id(1), content_id(2), content_id(3)]
    e.mark_done(content_id(2))
    assert started(e) == []  # dialogue:2 waits for dialogue:1 under chain
    run_through(e, content_id(1))
    assert started(e) == [dialogue_id(1)]
    run_through(e, dialogue_id(1))
    assert started(e) == [dialogue_id(2)]
    assert e.state_of(dialogue_id(2)) is NodeState.RUNNING and not e.is_over


def test_the_window_holds_back_all_but_clip_jobs_and_urgent_nodes_go_first() -> None:
    e = engine(2, "none", lines=2, window=2)
    run_through(e, *started(e))  # outline
    assert started(e) == [content_id(1), content_id(2)]
    run_through(e, content_id(1), content_id(2))
    # Two places: dialogues and pictures are equally far from the end, so scene 1 goes first.
    assert started(e) == [dialogue_id(1), image_id(1)]
    e.mark_done(image_id(1))
    assert started(e) == [clip_id(1), dialogue_id(2)]  # the clip takes no place
    assert _windowed(e) == 2 and clip_id(1) in e.running
    while not e.is_over:
        started(e)
        assert _windowed(e) <= 2
        for nid in sorted(e.running):
            e.mark_done(nid)
    assert e.done == set(e.plan.nodes)
    assert e.outcome().status is EpisodeStatus.COMPLETED


def test_a_failure_stops_new_work_and_fails_the_episode_by_default() -> None:
    e = engine(3, "none")
    run_through(e, *started(e))
    started(e)
    e.mark_failed(content_id(2))
    assert e.stopping and started(e) == [] and not e.is_over  # the others still run
    e.mark_done(content_id(1))
    assert started(e) == []  # dialogue:1 is ready but nothing new starts
    e.mark_done(content_id(3))
    assert e.is_over
    outcome = e.outcome()
    assert outcome.status is EpisodeStatus.FAILED and outcome.reason is None
    assert outcome.failed == (content_id(2),)


def test_skip_leaves_out_the_failed_scene_and_the_rest_goes_on() -> None:
    e = engine(3, "chain", lines=1, skip=True)
    run_through(e, *started(e))
    started(e)
    e.mark_failed(content_id(2))
    same_scene = {dialogue_id(2), speech_id(2, 1), image_id(2), clip_id(2), compose_id(2)}
    assert e.skipped == same_scene
    while not e.is_over:
        for nid in sorted(e.running):
            assert nid.scene != 2
            e.mark_done(nid)
        started(e)
    # dialogue:3 went on without dialogue:2 under chain; the stitch without scene 2.
    assert {dialogue_id(3), STITCH_ID} <= e.done
    outcome = e.outcome()
    assert outcome.status is EpisodeStatus.COMPLETED
    assert outcome.reason == "completed without scene(s) [2]"
    assert e.state.scene_states(e.plan)[1].value == "failed"


def test_a_node_of_no_scene_fails_the_episode_even_under_skip() -> None:
    e = engine(2, "none", skip=True)
    [outline] = started(e)
    e.mark_failed(outline)
    assert e.is_over and e.outcome().status is EpisodeStatus.FAILED
    assert e.skipped == set()  # nothing is skipped: the whole episode failed


def test_a_stop_from_outside_lets_what_runs_finish() -> None:
    e = engine(2, "none")
    run_through(e, *started(e))
    started(e)
    e.stop("budget of $1.00 spent")
    e.stop("a second reason is not kept")
    assert started(e) == [] and not e.is_over
    run_through(e, content_id(1), content_id(2))
    assert e.is_over
    assert e.outcome().reason == "budget of $1.00 spent"
    assert e.outcome().status is EpisodeStatus.FAILED


def test_abandoned_nodes_run_again_and_a_saved_state_resumes_from_its_finished_nodes() -> None:
    e = engine(3, "none")
    run_through(e, *started(e))
    started(e)
    e.mark_done(content_id(1))
    assert set(e.abandon()) == {content_id(2), content_id(3)}
    assert e.running == set() and e.state_of(content_id(2)) is NodeState.READY
    saved = EngineState.model_validate_json(e.state.model_dump_json())
    saved.running.add(dialogue_id(1))  # a checkpoint taken while it ran: it runs again
    again = EpisodeEngine(e.plan, saved, skip_failed_scenes=False, max_window=100)
    assert saved.running == set()
    assert set(started(again)) == {content_id(2), content_id(3), dialogue_id(1)}
    assert outline_id(1) in again.done and again.state_of(outline_id(1)) is NodeState.DONE


def test_marking_a_node_that_does_not_run_is_a_bug() -> None:
    e = engine(1)
    with pytest.raises(ValueError, match="not running"):
        e.mark_done(content_id(1))


def test_concurrency_window_halves_on_429s_and_recovers() -> None:
    window = ConcurrencyWindow(maximum=8)
    for _ in range(8):
        window.on_result(rate_limited=True)
    assert window.limit == 4  # one cut per window's worth of results, not eight
    for _ in range(4):
        window.on_result(rate_limited=True)
    assert window.limit == 2
    for _ in range(100):
        window.on_result(rate_limited=False)
    assert window.limit == 8


def _windowed(e: EpisodeEngine) -> int:
    return sum(1 for n in e.running if n.kind not in UNWINDOWED)


def _resolved(e: EpisodeEngine, nid: NodeId) -> bool:
    return nid in e.done or (e.skip_failed_scenes and (nid in e.failed or nid in e.skipped))


@settings(max_examples=120, deadline=None)
@given(
    scenes=st.integers(1, 6),
    mode=st.sampled_from(["chain", "none", "window:2", "batch:2"]),
    lines=st.integers(0, 2),
    skip=st.booleans(),
    window=st.integers(1, 6),
    fail_rate=st.sampled_from([0.0, 0.1, 0.3]),
    seed=st.integers(0, 2**16),
    checkpoint_at=st.integers(0, 40),
)
def test_every_node_runs_at_most_once_and_never_before_its_inputs(
    scenes: int, mode: str, lines: int, skip: bool, window: int, fail_rate: float, seed: int,
    checkpoint_at: int,
) -> None:
    rng = random.Random(seed)
    e = engine(scenes, mode, lines, skip=skip, window=window)
    plan: EpisodePlan = e.plan
    ever_started: list[NodeId] = []
    step = 0
    while not e.is_over:
        step += 1
        if step == checkpoint_at:  # save, then go on from the saved state with a new engine
            saved = EngineState.model_validate_json(e.state.model_dump_json())
            assert e.abandon() == sorted(saved.running)
            ever_started = [n for n in ever_started if n not in saved.running]
            e = EpisodeEngine(plan, saved, skip_failed_scenes=skip, max_window=window)
        before = _windowed(e)
        for node in e.start_ready():
            assert all(_resolved(e, d) for d in node.deps), f"{node.id} started too early"
            assert node.id not in ever_started, f"{node.id} started twice"
            ever_started.append(node.id)
        # A shrinking window starts nothing more; it does not stop what runs.
        assert _windowed(e) <= max(before, e.window.limit)
        sets = [e.pending, set(e.ready), e.running, e.done, e.failed, e.skipped]
        assert sum(map(len, sets)) == len(plan.nodes)  # each node in exactly one state
        assert set().union(*sets) == set(plan.nodes)
        finishing = [n for n in sorted(e.running) if rng.random() < 0.6] or sorted(e.running)[:1]
        for nid in finishing:
            if rng.random() < fail_rate:
                e.mark_failed(nid, rate_limited=rng.random() < 0.2)
            else:
                e.mark_done(nid, rate_limited=rng.random() < 0.2)
    outcome = e.outcome()
    if not e.failed:
        assert e.done == set(plan.nodes) and outcome.status is EpisodeStatus.COMPLETED
    elif not skip or any(n.scene is None for n in e.failed):
        assert outcome.status is EpisodeStatus.FAILED
    else:  # skipped: every node ran, failed, or belongs to a failed node's scene downstream
        assert outcome.status is EpisodeStatus.COMPLETED
        assert e.done | e.failed | e.skipped == set(plan.nodes)
        for nid in e.skipped:
            assert any(nid in plan.downstream([f]) and f.scene == nid.scene for f in e.failed)
