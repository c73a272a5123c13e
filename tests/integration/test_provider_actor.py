"""Provider actors in a real local Ray: one per name, shared, typed errors across the boundary."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest
import ray

from actors.call_results import ChatResult
from actors.remote import ProviderProxy, provider_actor
from local_server.process import LocalServer
from pipelines.errors import BadRequest, QuotaExhausted
from pipelines.settings import ProviderKind, ProviderSettings
from tests.support import wait_for_async

pytestmark = pytest.mark.usefixtures("ray_session")
MESSAGES = [{"role": "user", "content": "Two rivals share a taxi in the rain."}]


def settings(**fields: object) -> ProviderSettings:
    return ProviderSettings(**{"model": "test-model", "rpm": None, **fields})


async def test_one_shared_actor_per_name_serves_many_episodes(
    local_server: Callable[..., LocalServer],
) -> None:
    server = local_server(llm_rpm=3000)
    first = provider_actor(ProviderKind.LLM, settings(rpm=3000), local_base_url=server.base_url,
                           name="test:shared")
    again = provider_actor(ProviderKind.LLM, settings(rpm=1), local_base_url=server.base_url,
                           name="test:shared")
    assert first._actor_id == again._actor_id  # got, not created twice
    results = await asyncio.gather(
        *(first.chat.remote(MESSAGES, episode_id=f"ep{i % 4}") for i in range(40))
    )
    assert all(r.text for r in results)
    stats = await again.stats.remote()
    assert (stats["calls"], stats["ok"], stats["rate_limited"]) == (40, 40, 0)
    assert server.stats()["chat"]["rate_limited"] == 0
    ray.kill(first)


async def test_the_actor_holds_no_cpu(local_server: Callable[..., LocalServer]) -> None:
    server = local_server()
    before = ray.available_resources().get("CPU", 0)
    actor = provider_actor(ProviderKind.LLM, settings(), local_base_url=server.base_url,
                           name="test:cpu")
    await actor.stats.remote()
    assert ray.available_resources().get("CPU", 0) == before
    ray.kill(actor)


async def test_typed_errors_cross_the_actor_boundary(
    local_server: Callable[..., LocalServer],
) -> None:
    server = local_server(quota_exhausted=True)
    actor = provider_actor(ProviderKind.LLM, settings(), local_base_url=server.base_url,
                           name="test:quota")
    with pytest.raises(QuotaExhausted) as caught:
        await actor.chat.remote(MESSAGES)
    assert caught.value.status == 429 and caught.value.provider == "llm"
    assert "credit" in str(caught.value)
    ray.kill(actor)


def _batches(actor: Any) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: self.batches))


async def test_calls_made_together_go_as_one_batch_each_with_its_own_answer(
    local_server: Callable[..., LocalServer],
) -> None:
    server = local_server()
    actor = provider_actor(ProviderKind.LLM, settings(), local_base_url=server.base_url,
                           name="test:batch")
    proxy = ProviderProxy("test:batch", ProviderKind.LLM)
    bad_format = {"type": "no-such-format"}  # the server refuses this one call, 400
    calls = [proxy.chat(MESSAGES, episode_id=f"ep{i % 3}", max_tokens=20,
                        response_format=bad_format if i == 7 else None) for i in range(30)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert _batches(actor) == 1  # one Ray call for the thirty
    refused = results.pop(7)
    assert isinstance(refused, BadRequest) and refused.status == 400
    assert all(isinstance(r, ChatResult) and r.text for r in results), results
    alone = await proxy.chat(MESSAGES)  # a call alone in its turn goes as a plain Ray call
    assert alone.text and _batches(actor) == 1
    ray.kill(actor)


async def test_a_call_cancelled_in_its_batch_stops_at_the_provider(
    local_server: Callable[..., LocalServer],
) -> None:
    server = local_server(latency_scale=50.0)  # every call hangs for the test's length
    actor = provider_actor(ProviderKind.LLM, settings(), local_base_url=server.base_url,
                           name="test:batch-cancel")
    proxy = ProviderProxy("test:batch-cancel", ProviderKind.LLM)
    calls = [asyncio.ensure_future(proxy.chat(MESSAGES, episode_id=f"ep{i}")) for i in range(6)]

    async def in_flight() -> int:
        return (await actor.stats.remote())["deployments"][0]["inflight"]

    def in_flight_is(expected: int) -> Any:
        async def check() -> bool:
            return await in_flight() == expected
        return check

    await wait_for_async(in_flight_is(6), 30, "six calls in flight")
    calls[0].cancel()
    await wait_for_async(in_flight_is(5), 10, "the cancelled call to stop")
    assert not any(c.done() for c in calls[1:])  # the others go on
    for call in calls[1:]:
        call.cancel()
    await wait_for_async(in_flight_is(0), 10, "every call to stop")
    assert server.stats()["chat"]["paid"] == 0
    ray.kill(actor)


def test_provider_actors_run_at_ordinary_priority(
    local_server: Callable[..., LocalServer],
) -> None:
    """Ray starts workers at niceness 15, below every ordinary process (see normal_priority)."""
    server = local_server()
    actor = provider_actor(ProviderKind.LLM, settings(), local_base_url=server.base_url,
                           name="test:priority")
    nice = ray.get(actor.__ray_call__.remote(lambda self: {
        os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir("/proc/self/task")}))
    # Raising a priority takes root (or CAP_SYS_NICE); without it, Ray's niceness stays.
    assert nice == ({0} if os.geteuid() == 0 else {15})
    ray.kill(actor)
