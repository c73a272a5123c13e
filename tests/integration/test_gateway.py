"""The provider gateway against the real bundled server over loopback, with the real SDK."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from actors.gateway import ProviderGateway
from local_server.process import LocalServer
from pipelines.errors import (
    AuthFailed,
    MalformedResponse,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExhausted,
)
from pipelines.settings import DeploymentSettings, ProviderKind, ProviderSettings
from tests.support import wait_for_async

Start = Callable[..., LocalServer]
Build = Callable[..., ProviderGateway]
MESSAGES = [{"role": "user", "content": "A lighthouse keeper finds a message in a bottle."}]


@pytest.fixture
async def gateway() -> AsyncIterator[Build]:
    """Build gateways for a test; their HTTP sessions are closed after it."""
    made: list[ProviderGateway] = []

    def build(base_url: str | None, **settings: Any) -> ProviderGateway:
        fields: dict[str, Any] = {"model": "test-model", "rpm": None, "timeout_s": 10.0}
        fields.update(settings)
        made.append(ProviderGateway(ProviderKind.LLM, ProviderSettings(**fields),
                                    local_base_url=base_url))
        return made[-1]

    yield build
    for g in made:
        await g.close()


def server_count(server: LocalServer, field: str) -> int:
    return int(server.stats()["chat"][field])


async def test_chat_returns_text_usage_and_cost(gateway: Build, local_server: Start) -> None:
    server = local_server()
    gw = gateway(
        server.base_url,
        prices={"input_per_1m_tokens": 1.0, "output_per_1m_tokens": 2.0},
    )
    result = await gw.chat(MESSAGES, episode_id="ep1", max_tokens=200)
    assert result.text and result.finish_reason in ("stop", "length")
    assert result.tokens_in > 0 and result.tokens_out > 0 and result.attempts == 1
    assert result.request_id and result.deployment.startswith("http://127.0.0.1:")
    stats = gw.snapshot()
    assert (stats["calls"], stats["ok"], stats["retries"]) == (1, 1, 0)
    expected = (result.tokens_in * 1.0 + result.tokens_out * 2.0) / 1e6
    assert stats["cost_usd"] == pytest.approx(expected, rel=1e-3)
    assert stats["latency"]["count"] == 1


async def test_structured_output_follows_the_schema(gateway: Build, local_server: Start) -> None:
    server = local_server()
    schema = {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "characters": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        },
        "required": ["title", "characters"],
        "additionalProperties": False,
    }
    result = await gateway(server.base_url).chat(
        MESSAGES,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "outline", "schema": schema, "strict": True},
        },
        max_tokens=2000,
    )
    data = json.loads(result.text)
    assert isinstance(data["title"], str) and len(data["characters"]) >= 2


async def test_unreachable_server_fails_naming_the_setting_without_a_storm(gateway: Build) -> None:
    gw = gateway("http://127.0.0.1:9/v1")  # nothing listens on the discard port
    with pytest.raises(ProviderUnavailable) as caught:
        await gw.chat(MESSAGES)
    assert "SHOWRUNNER_LLM__BASE_URL" in str(caught.value)
    stats = gw.snapshot()
    assert stats["retries"] == gw.policy.max_attempts - 1 and stats["failed"] == 1


async def test_invalid_key_fails_at_once(gateway: Build, local_server: Start) -> None:
    server = local_server(require_key="right-key")
    gw = gateway(server.base_url, api_key="wrong-key")
    with pytest.raises(AuthFailed) as caught:
        await gw.chat(MESSAGES)
    assert caught.value.status == 401 and "SHOWRUNNER_LLM__API_KEY" in str(caught.value)
    assert "wrong-key" not in str(caught.value)
    assert server_count(server, "unauthorized") == 1  # never retried


async def test_exhausted_quota_fails_at_once(gateway: Build, local_server: Start) -> None:
    server = local_server(quota_exhausted=True)
    gw = gateway(server.base_url)
    with pytest.raises(QuotaExhausted, match="credit"):
        await gw.chat(MESSAGES)
    assert server_count(server, "quota_rejected") == 1
    assert gw.snapshot()["retries"] == 0


@pytest.mark.parametrize(
    ("flags", "error"),
    [({"fault_rate": 1.0}, ProviderUnavailable), ({"malformed_rate": 1.0}, MalformedResponse)],
)
async def test_faults_are_retried_up_to_max_attempts_then_reported(
    gateway: Build, local_server: Start, flags: dict[str, float], error: type
) -> None:
    server = local_server(**flags)
    gw = gateway(server.base_url, max_attempts=3)
    with pytest.raises(error):
        await gw.chat(MESSAGES)
    stats = gw.snapshot()
    assert stats["retries"] == 2 and stats["errors"] == {error.__name__: 3}
    faults = server.stats()["chat"]["faults"]
    assert sum(faults.values()) == 3


async def test_a_hanging_server_times_out_and_is_retried(
    gateway: Build, local_server: Start
) -> None:
    server = local_server(hang_rate=1.0)
    gw = gateway(server.base_url, timeout_s=0.3, max_attempts=2)
    with pytest.raises(ProviderTimeout):
        await gw.chat(MESSAGES)
    assert gw.snapshot()["errors"] == {"ProviderTimeout": 2}


async def test_429s_pause_everyone_and_the_limit_is_learned_from_headers(
    gateway: Build,
    local_server: Start,
) -> None:
    server = local_server(llm_rpm=600)  # 10 per second, 10 of burst
    gw = gateway(server.base_url, rpm=60_000)  # misconfigured a hundred times too high
    results = await asyncio.gather(*(gw.chat(MESSAGES, episode_id=f"e{i % 3}") for i in range(30)))
    assert len(results) == 30
    first_wave = server_count(server, "rate_limited")
    # The first burst overshoots once; after that the server's headers set our pace.
    assert 0 < first_wave <= 25
    assert gw.snapshot()["rate_limited"] == first_wave
    assert gw.deployments[0].limiter._requests.rate == pytest.approx(10)
    await asyncio.gather(*(gw.chat(MESSAGES) for _ in range(15)))
    assert server_count(server, "rate_limited") == first_wave  # no further 429


async def test_a_failing_deployment_is_avoided(gateway: Build, local_server: Start) -> None:
    good = local_server()
    gw = gateway(
        None,
        max_attempts=3,
        deployments=[
            DeploymentSettings(base_url="http://127.0.0.1:9/v1"),
            DeploymentSettings(base_url=good.base_url),
        ],
    )
    results = await asyncio.gather(*(gw.chat(MESSAGES) for _ in range(12)))
    assert {r.deployment for r in results} == {gw.deployments[1].label}
    assert server_count(good, "accepted") == 12
    assert gw.deployments[0].cooldown_until > 0  # the dead one was cooled down


async def test_cancelling_a_call_frees_its_slot(gateway: Build, local_server: Start) -> None:
    server = local_server(hang_rate=1.0)
    gw = gateway(server.base_url, timeout_s=30, max_inflight=1)
    task = asyncio.create_task(gw.chat(MESSAGES))
    await wait_for_async(lambda: server_count(server, "inflight"), 5, "the request to arrive")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gw.deployments[0].limiter.inflight == 0
    await wait_for_async(lambda: server_count(server, "inflight") == 0, 5,
                         "the HTTP request to be aborted too")
