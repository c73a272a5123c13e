"""The coordinator as the named Ray actor, calling the provider actor: the product's real path."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import ray

from local_server.process import LocalServer
from pipelines import launcher
from pipelines.models import EpisodeRequest
from pipelines.settings import LLMSettings, Settings
from tests.support import processes

pytestmark = pytest.mark.usefixtures("ray_session")


async def test_events_stream_and_cancel_through_ray(
    local_server: Callable[..., LocalServer], tmp_path: Path
) -> None:
    server = local_server(latency_scale=1.5)
    settings = Settings(llm=LLMSettings(model="m", rpm=None, tpm=None), max_parallel_scenes=4)
    run = launcher.start_run(settings, tmp_path, server.base_url, prefix="test-actor")
    [eid] = await run.coordinator.submit_many.remote(
        [EpisodeRequest(media=False, premise="A night ferry.", scenes=6, continuity="none")]
    )
    # Long-poll the events the way an SSE stream does, resuming from the last seq seen.
    seen: list[str] = []
    last = 0
    deadline = time.monotonic() + 30
    while "node_finished" not in seen:
        assert time.monotonic() < deadline
        events = await run.coordinator.events.remote(eid, after=last, timeout_s=5)
        seen += [e.kind for e in events]
        last = events[-1].seq if events else last
    assert seen[:2] == ["queued", "started"]
    provider = run.providers["llm"]
    while (await provider.stats.remote())["deployments"][0]["inflight"] == 0:
        assert time.monotonic() < deadline, "no content call went out"
        await asyncio.sleep(0.02)
    started = time.monotonic()
    assert await run.coordinator.cancel.remote(eid) == "cancelled"
    assert time.monotonic() - started < 1.0
    deadline = time.monotonic() + 5
    while (await provider.stats.remote())["deployments"][0]["inflight"]:
        assert time.monotonic() < deadline, "the provider actor's calls were not cancelled"
        await asyncio.sleep(0.05)
    status = await run.coordinator.status.remote(eid)
    assert status["status"] == "cancelled" and status["percent"] > 0
    tail = await run.coordinator.events.remote(eid, after=last)
    assert tail[-1].kind == "cancelled"
    for actor in (run.coordinator, provider):
        ray.kill(actor)


def _ray_worker_processes() -> int:
    return len(processes(lambda cmdline: cmdline.startswith(b"ray::")))


async def test_a_thousand_scenes_in_flight_are_coroutines_not_processes(
    local_server: Callable[..., LocalServer], tmp_path: Path
) -> None:
    server = local_server(latency_scale=5.0, llm_jitter=0.0)  # every call takes 4 s
    llm = LLMSettings(model="m", rpm=None, tpm=None, max_inflight=2000)
    settings = Settings(llm=llm, max_parallel_episodes=50, max_parallel_scenes=20)
    run = launcher.start_run(settings, tmp_path, server.base_url, prefix="test-thousand")
    await run.coordinator.list_episodes.remote()
    workers_before = _ray_worker_processes()
    requests = [EpisodeRequest(media=False, premise=f"Story {i}", scenes=20, lines_per_scene=1,
                               continuity="none") for i in range(50)]
    ids = await run.coordinator.submit_many.remote(requests)
    summaries = await run.coordinator.wait.remote(ids)
    assert {s["status"] for s in summaries} == {"completed"}
    assert server.stats()["chat"]["max_inflight"] >= 1000
    assert _ray_worker_processes() <= workers_before + 2
    for actor in (run.coordinator, *run.providers.values()):
        ray.kill(actor)


def test_a_run_is_ready_once_every_actor_answers(
    local_server: Callable[..., LocalServer], tmp_path: Path
) -> None:
    """What a Serve replica waits for before taking requests: every actor answering. A run
    whose coordinator is gone never comes up ready."""
    server = local_server()
    run = launcher.start_run(Settings(), tmp_path, server.base_url, prefix="test-ready")
    run.wait_ready()
    assert ray.get(run.coordinator.list_episodes.remote()) == []
    ray.kill(run.coordinator)
    deadline = time.monotonic() + 30
    while True:  # the kill lands a moment after the call returns: until a call sees it
        try:
            ray.get(run.coordinator.ping.remote(), timeout=10)
        except ray.exceptions.RayActorError:
            break
        assert time.monotonic() < deadline
    with pytest.raises(ray.exceptions.RayActorError):
        run.wait_ready(timeout_s=10)
    for actor in run.providers.values():
        ray.kill(actor)
