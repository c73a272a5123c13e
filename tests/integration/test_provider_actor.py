"""Provider actors in a real local Ray: one per name, shared, typed errors across the boundary."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import ray

from actors.remote import provider_actor
from local_server.process import LocalServer
from pipelines.errors import QuotaExhausted
from pipelines.settings import ProviderKind, ProviderSettings

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
