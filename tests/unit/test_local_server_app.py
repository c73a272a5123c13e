"""The server's HTTP behaviour in-process (aiohttp's test server, a fake clock for the buckets):
response shapes, the order of checks, 429 details, faults and counters."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel, Field

from local_server.config import ServerConfig
from tests.support import wait_for_async
from tests.unit.local_app import CHAT, FakeClock, Make, apps

BODY = {"model": "gpt-test", "messages": [{"role": "user", "content": "Premise: owls at sea."}]}



class Pitch(BaseModel):
    title: str
    characters: list[str] = Field(min_length=2, max_length=3)


make = pytest.fixture(apps, name="make")


async def chat(client: TestClient, body: Any = BODY, **headers: str) -> aiohttp.ClientResponse:
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    response = await client.post(CHAT, data=data, headers={"Authorization": "Bearer k",
                                                           **headers})
    await response.read()
    return response


async def stats(client: TestClient) -> dict[str, Any]:
    response = await client.get("/stats")
    return (await response.json())["chat"]


async def test_a_completion_has_openais_shape(make: Make) -> None:
    client = await make()
    response = await chat(client)
    assert response.status == 200
    body = await response.json()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert isinstance(body["created"], int) and body["model"] == "gpt-test"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens"] == 6  # ceil(22 characters / 4)
    assert response.headers["x-request-id"].startswith("req_")
    assert not any(h.startswith("x-ratelimit") for h in response.headers)  # no limits set


async def test_structured_outputs_and_max_tokens(make: Make) -> None:
    client = await make()
    fmt = {"type": "json_schema", "json_schema": {"name": "Pitch", "strict": True,
                                                  "schema": to_strict_json_schema(Pitch)}}
    body = await (await chat(client, {**BODY, "response_format": fmt})).json()
    Pitch.model_validate_json(body["choices"][0]["message"]["content"])
    cut = await (await chat(client, {**BODY, "max_completion_tokens": 2})).json()
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["usage"]["completion_tokens"] == 2


async def test_over_the_request_limit_is_a_429_with_retry_after(make: Make) -> None:
    clock = FakeClock()
    client = await make(clock=clock, **_chat(rpm=120))  # a burst of 2, one every 0.5 s
    assert [(await chat(client)).status for _ in range(2)] == [200, 200]
    refused = await chat(client)
    assert refused.status == 429
    error = (await refused.json())["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
    assert error["message"].startswith("Rate limit reached for requests")
    assert refused.headers["retry-after-ms"] == "500" and refused.headers["retry-after"] == "1"
    assert refused.headers["x-ratelimit-limit-requests"] == "120"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"] == "1s"
    clock.now = 0.5
    assert (await chat(client)).status == 200
    counted = await stats(client)
    assert (counted["accepted"], counted["rate_limited"]) == (3, 1)


async def test_tokens_are_charged_prompt_plus_completion(make: Make) -> None:
    clock = FakeClock()
    client = await make(clock=clock, **_chat(tpm=60_000))  # 1,000 tokens of burst
    first = await chat(client)
    used = (await first.json())["usage"]["total_tokens"]
    assert first.headers["x-ratelimit-remaining-tokens"] == str(1000 - used)
    assert (await stats(client))["tokens"] == used
    big = {**BODY, "messages": [{"role": "user", "content": "x" * 4000}]}  # 1,000 tokens
    refused = await chat(client, big)
    assert refused.status == 429 and (await refused.json())["error"]["type"] == "tokens"
    assert first.headers["x-ratelimit-limit-tokens"] == "60000"


async def test_auth_comes_first_then_the_body_then_quota(make: Make) -> None:
    client = await make(require_key="right", quota_exhausted=True, **_chat(rpm=60))
    wrong = await chat(client, "not json", Authorization="Bearer wrong-key-123")
    assert wrong.status == 401
    assert (await wrong.json())["error"]["code"] == "invalid_api_key"
    missing = await client.post(CHAT, json=BODY)
    assert missing.status == 401
    bad = await chat(client, "not json", Authorization="Bearer right")
    assert bad.status == 400
    broke = await chat(client, Authorization="Bearer right")
    error = (await broke.json())["error"]
    assert broke.status == 429 and error["code"] == error["type"] == "insufficient_quota"
    assert "retry-after" not in broke.headers and "retry-after-ms" not in broke.headers
    counted = await stats(client)
    assert (counted["unauthorized"], counted["bad_request"], counted["quota_rejected"],
            counted["rate_limited"], counted["accepted"]) == (2, 1, 1, 0, 0)


@pytest.mark.parametrize(("body", "param"), [
    ("{not json", None),
    ([1, 2], None),
    ({"messages": BODY["messages"]}, "model"),
    ({"model": "m"}, "messages"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": ["hi"]}, "messages[0]"),
    ({**BODY, "stream": True}, "stream"),
    ({**BODY, "max_tokens": 0}, "max_tokens"),
    ({**BODY, "n": 2}, "n"),
    ({**BODY, "response_format": {"type": "yaml"}}, "response_format"),
    ({**BODY, "response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
     "response_format.json_schema.name"),
    ({**BODY, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "integer", "minimum": 3, "maximum": 1}}}},
     "response_format"),
])
async def test_invalid_bodies_are_400s_in_openais_shape(make: Make, body: Any,
                                                        param: str | None) -> None:
    client = await make()
    response = await chat(client, body)
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param
    assert (await stats(client))["bad_request"] == 1


async def test_server_errors(make: Make) -> None:
    client = await make(fault_rate=1.0, **_chat(rpm=6000))
    statuses = set()
    for _ in range(12):
        response = await chat(client)
        statuses.add(response.status)
        assert (await response.json())["error"]["type"] == "server_error"
        assert response.headers["x-request-id"]
    assert statuses <= {500, 502, 503} and len(statuses) > 1
    assert (await stats(client))["faults"]["server_error"] == 12


async def test_malformed_answers_are_200s_that_are_not_json(make: Make) -> None:
    client = await make(malformed_rate=1.0, **_chat(rpm=600))
    response = await chat(client)
    assert response.status == 200 and response.headers["x-ratelimit-limit-requests"] == "600"
    with pytest.raises(ValueError):
        json.loads(await response.read())
    counted = await stats(client)
    assert counted["faults"]["malformed"] == 1 and counted["accepted"] == 0


async def test_a_hang_holds_the_answer(make: Make) -> None:
    client = await make(hang_rate=1.0, hang_s=0.2)
    started = time.monotonic()
    response = await chat(client)
    assert response.status == 200 and time.monotonic() - started >= 0.2
    assert (await stats(client))["faults"]["hang"] == 1


async def test_a_client_that_gives_up_frees_the_hanging_handler(make: Make) -> None:
    client = await make(hang_rate=1.0, hang_s=600)
    with pytest.raises(asyncio.TimeoutError):
        await client.post(CHAT, json=BODY, timeout=aiohttp.ClientTimeout(total=0.2))
    async def freed() -> dict | None:
        counted = await stats(client)
        return None if counted["inflight"] else counted

    counted = await wait_for_async(freed, 5, "the handler to be cancelled", interval=0.02)
    assert counted["max_inflight"] == 1 and counted["faults"]["hang"] == 1


async def test_faults_replay_for_a_seed(make: Make) -> None:
    async def statuses(seed: int) -> list[int]:
        client = await make(seed=seed, fault_rate=0.5)
        return [(await chat(client)).status for _ in range(30)]

    first = await statuses(3)
    assert first == await statuses(3)
    assert first != await statuses(4)
    assert 200 in first and set(first) - {200}


async def test_latency_is_slept_and_in_flight_requests_counted(make: Make) -> None:
    client = await make(latency_scale=1.0, **_chat(latency_s=0.2, jitter_s=0.0))
    started = time.monotonic()
    responses = await asyncio.gather(*(chat(client) for _ in range(5)))
    assert all(r.status == 200 for r in responses)
    assert time.monotonic() - started >= 0.2  # slept (a lower bound: never flaky)
    counted = await stats(client)
    assert (counted["inflight"], counted["max_inflight"]) == (0, 5)  # all five at once
    reset = await (await client.delete("/stats")).json()
    assert reset["chat"]["accepted"] == reset["chat"]["max_inflight"] == 0


async def test_every_response_has_a_request_id_and_unknown_urls_are_json_404s(
    make: Make,
) -> None:
    client = await make()
    ids = set()
    for method, path in (("GET", "/v1/nowhere"), ("GET", CHAT), ("GET", "/v1/models"),
                         ("GET", "/stats"), ("POST", "/v1/videos/x/remix")):
        response = await client.request(method, path)
        ids.add(response.headers["x-request-id"])
        if response.status == 404:
            error = (await response.json())["error"]
            assert error["message"] == f"Invalid URL ({method} {path})"
    assert len(ids) == 5
    models = await (await client.get("/v1/models")).json()
    assert models["object"] == "list" and "local-llm" in [m["id"] for m in models["data"]]


def _chat(**changes: float) -> dict[str, Any]:
    """Config options with the chat endpoint's settings changed (``rpm=60``)."""
    return {"endpoints": ServerConfig().with_endpoint("chat", **changes).endpoints}
