"""The coordinator as the named Ray actor, calling the provider actor: the product's real path."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import ray

from local_server.process import LocalServer
from pipelines.episode_state import EventKind
from pipelines.models import EpisodeRequest, EpisodeStatus
from pipelines.settings import EncodingSettings, LLMSettings, ProviderKind, Settings
from pipelines.storage import Storage
from showrunner import launcher
from tests.support import descendants, parent_of, processes, wait_for, wait_for_async

pytestmark = pytest.mark.usefixtures("ray_session")


async def test_events_stream_and_cancel_through_ray(
    local_server: Callable[..., LocalServer], tmp_path: Path
) -> None:
    server = local_server(latency_scale=1.5)
    settings = Settings(llm=LLMSettings(model="m", rpm=None, tpm=None), max_parallel_scenes=4)
    run = launcher.start_run(settings, Storage(str(tmp_path)), server.base_url,
                             prefix="test-actor")
    [queued] = await run.coordinator.submit_many.remote(
        [EpisodeRequest(media=False, premise="A night ferry.", scenes=6, continuity="none")]
    )
    eid = queued.id
    # Long-poll the events the way an SSE stream does, resuming from the last seq seen.
    seen: list[EventKind] = []

    async def a_node_finished() -> bool:
        events = await run.coordinator.events.remote(eid, after=len(seen), timeout_s=5)
        seen.extend(e.kind for e in events)
        return EventKind.NODE_FINISHED in seen

    await wait_for_async(a_node_finished, 30, "a node to finish", interval=0)
    assert seen[:2] == [EventKind.QUEUED, EventKind.STARTED]
    provider = run.providers[ProviderKind.LLM]

    async def inflight() -> int:
        return (await provider.stats.remote())["deployments"][0]["inflight"]

    await wait_for_async(inflight, 30, "a content call to go out", interval=0.02)
    assert await run.coordinator.cancel.remote(eid) is EpisodeStatus.CANCELLED

    async def idle() -> bool:
        return await inflight() == 0

    await wait_for_async(idle, 5, "the provider actor's calls to end")
    # Ended by the cancel, not waited for: the calls in flight were cut off at the server,
    # unanswered and unpaid (each takes seconds at this latency).
    assert server.stats()["chat"]["left"] >= 1
    [view] = await run.coordinator.views.remote([eid])
    assert view.status is EpisodeStatus.CANCELLED and view.percent > 0
    tail = await run.coordinator.events.remote(eid, after=len(seen))
    assert tail[-1].kind is EventKind.CANCELLED
    run.stop()


def _ray_worker_processes() -> int:
    """Ray workers of this test session's own Ray (started below this process): other Rays on
    the machine, such as the command tests' beside this lane, come and go on their own."""
    ours = set(descendants(os.getpid()))
    return len([pid for pid in processes(lambda cmdline: cmdline.startswith(b"ray::"))
                if pid in ours])


async def test_a_thousand_scenes_in_flight_are_coroutines_not_processes(
    local_server: Callable[..., LocalServer], tmp_path: Path
) -> None:
    # Every call takes 8 s: long enough for all 1,000 to be sent before the first ends, on a
    # busy two-core machine too.
    server = local_server(latency_scale=10.0, llm_jitter=0.0)
    llm = LLMSettings(model="m", rpm=None, tpm=None, max_inflight=2000)
    settings = Settings(llm=llm, max_parallel_episodes=50, max_parallel_scenes=20)
    run = launcher.start_run(settings, Storage(str(tmp_path)), server.base_url,
                             prefix="test-thousand")
    run.wait_ready()
    workers_before = _ray_worker_processes()
    requests = [EpisodeRequest(media=False, premise=f"Story {i}", scenes=20, lines_per_scene=1,
                               continuity="none") for i in range(50)]
    queued = await run.coordinator.submit_many.remote(requests)
    ids = [v.id for v in queued]
    # Once the scenes' first calls are all out, the point is made: cancel the rest (the
    # episodes' second stage would take as long again).
    wait_for(lambda: server.stats()["chat"]["max_inflight"] >= 1000, 60,
             lambda: f"1,000 calls in flight; the server saw {server.stats()['chat']}")
    assert _ray_worker_processes() <= workers_before + 2
    for episode in ids:
        await run.coordinator.cancel.remote(episode)
    views = await run.coordinator.wait.remote(ids)
    assert {v.status for v in views} == {EpisodeStatus.CANCELLED}
    run.stop()


def test_a_run_is_ready_once_every_actor_answers(
    local_server: Callable[..., LocalServer], tmp_path: Path
) -> None:
    """What a Serve replica waits for before taking requests: every actor answering. A run
    whose coordinator is gone never comes up ready."""
    server = local_server()
    run = launcher.start_run(Settings(), Storage(str(tmp_path)), server.base_url,
                             prefix="test-ready")
    run.wait_ready()
    assert ray.get(run.coordinator.views.remote([])) == []
    ray.kill(run.coordinator)

    def dead() -> bool:  # the kill lands a moment after the call returns: until a call sees it
        try:
            ray.get(run.coordinator.ping.remote(), timeout=10)
        except ray.exceptions.RayActorError:
            return True
        return False

    wait_for(dead, 30, "the coordinator's death to show", interval=0)
    with pytest.raises(ray.exceptions.RayActorError):
        run.wait_ready(timeout_s=10)
    for actor in run.providers.values():
        ray.kill(actor)


def test_the_service_does_not_take_up_a_runs_coordinator(
    local_server: Callable[..., LocalServer], tmp_path: Path
) -> None:
    """The service gets its actors by name, to share them between replicas. Where a CLI run
    goes on, that name is the run's coordinator, which ends with the run: the service used to
    take it up and lose it then."""
    server = local_server()
    run = launcher.start_run(Settings(), Storage(str(tmp_path / "run")), server.base_url,
                             prefix="test-service-joins")
    try:
        with pytest.raises(launcher.RunInProgress, match="start the service once it has ended"):
            launcher.start_run(Settings(), Storage(str(tmp_path / "service")), server.base_url,
                               prefix="test-service-joins", detached=True)
        run.wait_ready(timeout_s=10)  # the run's actors, untouched
    finally:
        run.stop()


def _compositions(root: Path) -> list[int]:
    """Pids of the ffmpeg processes composing a scene under ``root``."""
    return processes(lambda cmdline: b"ffmpeg" in cmdline and b".compose-" in cmdline
                     and str(root).encode() in cmdline)


def _kill_a_composition(root: Path, which: str, spare: int = 0) -> int:
    """SIGKILL an ffmpeg composing a scene under ``root`` (not ``spare``), or the worker running
    it; returns the ffmpeg's pid."""
    def started() -> list[int]:
        return [pid for pid in _compositions(root) if pid != spare]

    ffmpeg = wait_for(started, 120, "a composition to start", interval=0.01)[0]
    victim = parent_of(ffmpeg) if which == "worker" else ffmpeg
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    return ffmpeg


async def test_killed_workers_and_encoders_cost_a_rerun_not_the_episode(
    local_server: Callable[..., LocalServer], tmp_path: Path
) -> None:
    server = local_server()
    settings = Settings(llm=LLMSettings(model="m", rpm=None, tpm=None),
                        encoding=EncodingSettings(width=640, height=360, fps=24))
    run = launcher.start_run(settings, Storage(str(tmp_path)), server.base_url,
                             prefix="test-kills")
    [queued] = await run.coordinator.submit_many.remote(
        [EpisodeRequest(premise="A lighthouse keeper's last night.", scenes=3,
                        continuity="none")])
    # The Ray task's process (WorkerCrashedError), then an encoder alone (an "ffmpeg failed:"
    # that said nothing): each was an episode's "internal error".
    first = _kill_a_composition(tmp_path, "worker")
    _kill_a_composition(tmp_path, "ffmpeg", spare=first)
    [view] = await run.coordinator.wait.remote([queued.id])
    assert view.status is EpisodeStatus.COMPLETED, view.error
    [record] = await run.coordinator.records_of.remote([queued.id])
    assert sum(n.reruns for n in record.nodes.values()) >= 2
    leftovers = [p for p in tmp_path.rglob(".*") if p.name.startswith((".compose-", ".stitch-"))]
    assert leftovers == []  # no scratch folder of a killed attempt is left
    assert not _compositions(tmp_path)
    run.stop()


def _pid(actor: ray.actor.ActorHandle) -> int:
    return ray.get(actor.__ray_call__.remote(lambda _: os.getpid()))


async def test_a_killed_provider_actor_costs_its_calls_in_flight_not_the_episodes(
    local_server: Callable[..., LocalServer], tmp_path: Path
) -> None:
    server = local_server(latency_scale=0.5)
    settings = Settings(llm=LLMSettings(model="m", rpm=None, tpm=None))
    run = launcher.start_run(settings, Storage(str(tmp_path)), server.base_url,
                             prefix="test-provider-kill")
    ids = launcher.submit(run, [EpisodeRequest(media=False, premise=f"Ferry {n}.", scenes=4)
                                for n in range(3)])
    llm = run.providers[ProviderKind.LLM]

    async def inflight() -> int:
        return (await llm.stats.remote())["deployments"][0]["inflight"]

    await wait_for_async(inflight, 30, "calls in flight", interval=0.02)
    os.kill(_pid(llm), signal.SIGKILL)
    views = await run.coordinator.wait.remote(ids)
    assert [v.status for v in views] == [EpisodeStatus.COMPLETED] * 3, [v.error for v in views]
    records = await run.coordinator.records_of.remote(ids)
    assert sum(n.reruns for r in records for n in r.nodes.values()) >= 1
    report = launcher.collect_report(run, ids)  # the restarted actor answers for its stats
    assert [e["status"] for e in report["episodes"]] == ["completed"] * 3
    run.stop()


async def test_a_killed_coordinator_takes_its_episodes_up_again_from_the_store(
    local_server: Callable[..., LocalServer], tmp_path: Path
) -> None:
    server = local_server(latency_scale=0.3)
    # At most 2 × 2 nodes in flight: what a kill may cost again, and no more.
    settings = Settings(llm=LLMSettings(model="m", rpm=None, tpm=None), max_parallel_episodes=2,
                        max_parallel_scenes=2)
    run = launcher.start_run(settings, Storage(str(tmp_path)), server.base_url,
                             prefix="test-coordinator-kill")
    requests = [EpisodeRequest(media=False, premise=f"Harbour {n}.", scenes=5) for n in range(3)]
    ids = launcher.submit(run, requests)

    async def half_settled() -> bool:
        views = await run.coordinator.views.remote(ids)
        return sum(v.percent for v in views) >= 100  # a third of the whole, or more

    await wait_for_async(half_settled, 60, "a third of the work to settle", interval=0.05)
    before = await run.coordinator.records_of.remote(ids)
    done_before = {(r.id, nid): r.results[nid] for r in before for nid in r.engine.done}
    os.kill(_pid(run.coordinator), signal.SIGKILL)

    async def finished() -> list | None:
        try:  # (calls fail while it restarts)
            views = await run.coordinator.views.remote(ids)
        except ray.exceptions.RayActorError:
            return None
        return views if all(v.finished for v in views) else None

    views = await wait_for_async(finished, 120, "the episodes to finish after the restart")
    assert [v.status for v in views] == [EpisodeStatus.COMPLETED] * 3, [v.error for v in views]
    after = await run.coordinator.records_of.remote(ids)
    # What was done before is kept as it was, not made again.
    # (compared as data: a stage's answer is of a subclass the store does not bring back)
    changed = [(r.id, str(nid)) for r in after for nid in r.engine.done if (r.id, nid) in
               done_before and r.results[nid].model_dump() != done_before[r.id, nid].model_dump()]
    assert not changed, changed[:2]
    taken_up = [e for r in after for e in r.events if "taken up again" in e.message]
    assert taken_up, "no episode says it was taken up again"
    total = sum(len(r.plan().nodes) for r in after)
    # Paid again at most: the calls in flight at the kill (4 at most: the provider actor still
    # finishes them for the dead caller) and nodes that finished in the moment before it, not
    # yet committed. Never the whole run again.
    assert total <= server.stats()["chat"]["accepted"] <= total + 8
    run.stop()
