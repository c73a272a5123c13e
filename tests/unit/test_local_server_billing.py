"""What the bundled server bills, body by body (``/stats``' ``paid`` and ``duplicate_paid``): a
benchmark reads it to see a call paid for twice across a crash, which no client can count."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from local_server.billing import Ledger, body_digest
from local_server.config import ServerConfig
from tests.support import wait_for_async
from tests.unit.local_app import CHAT, FakeClock, Make, apps


def body(premise: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": f"Premise: {premise}"}]}



make = pytest.fixture(apps, name="make")


async def post(client: TestClient, json: Any, **options: Any) -> int:
    response = await client.post(CHAT, json=json, **options)
    await response.read()
    return response.status


async def stats(client: TestClient, endpoint: str = "chat") -> dict[str, Any]:
    return (await (await client.get("/stats")).json())[endpoint]


def billed(counted: dict[str, Any]) -> tuple[int, int]:
    return counted["paid"], counted["duplicate_paid"]


async def test_a_body_answered_twice_is_one_duplicate(make: Make) -> None:
    client = await make()
    for premise in ("owls at sea", "owls at sea", "a lighthouse", "owls at sea"):
        assert await post(client, body(premise)) == 200
    counted = await stats(client)
    assert billed(counted) == (4, 2) and counted["arrived"] == 4
    reset = (await (await client.delete("/stats")).json())["chat"]
    assert billed(reset) == (0, 0)
    assert await post(client, body("owls at sea")) == 200  # a new ledger: not a duplicate
    assert billed(await stats(client)) == (1, 0)


@pytest.mark.parametrize("fault", ["fault_rate", "malformed_rate", "hang_rate"])
async def test_a_faulted_answer_is_not_billed(make: Make, fault: str) -> None:
    client = await make(**{fault: 1.0}, hang_s=0.05)
    for _ in range(3):
        await post(client, body("owls at sea"))
    counted = await stats(client)
    assert sum(counted["faults"].values()) == 3  # they were answered, faulted
    assert billed(counted) == (0, 0)


async def test_a_429_is_not_billed_and_the_retry_that_passes_is_billed_once(make: Make) -> None:
    clock = FakeClock()
    endpoints = ServerConfig().with_endpoint("chat", rpm=60).endpoints  # a burst of one
    client = await make(clock=clock, endpoints=endpoints)
    assert [await post(client, body("owls")) for _ in range(3)] == [200, 429, 429]
    clock.now = 1.0
    assert await post(client, body("gulls")) == 200
    assert billed(await stats(client)) == (2, 0)


async def test_a_client_that_leaves_before_its_answer_is_not_billed(make: Make) -> None:
    client = await make(latency_scale=1.0,
                        endpoints=ServerConfig().with_endpoint("chat", latency_s=600,
                                                               jitter_s=0).endpoints)
    with pytest.raises(asyncio.TimeoutError):
        await post(client, body("owls"), timeout=aiohttp.ClientTimeout(total=0.1))

    async def left() -> dict[str, Any] | None:
        counted = await stats(client)
        return None if counted["inflight"] else counted

    counted = await wait_for_async(left, 5, "the handler to be cancelled", interval=0.02)
    assert billed(counted) == (0, 0) and counted["arrived"] == 1


def clip_form() -> aiohttp.FormData:
    """A clip's creation, as the SDK sends it: multipart, with a boundary drawn per request."""
    form = aiohttp.FormData()
    form.add_field("model", "sora-2")
    form.add_field("prompt", "A gull over the harbour at dawn.")
    form.add_field("seconds", "4")
    form.add_field("size", "1280x720")
    form.add_field("input_reference", b"\x89PNG not really", filename="scene.png",
                   content_type="image/png")
    return form


async def test_a_clip_job_is_billed_when_made_and_refunded_when_it_fails(make: Make) -> None:
    # Jobs last 2 s and fail: billed on creation, each refunded when it fails.
    endpoints = ServerConfig().with_endpoint("video", latency_s=0, jitter_s=0).endpoints
    client = await make(latency_scale=1.0, endpoints=endpoints, video_job_s=2.0,
                        video_job_jitter_s=0.0, video_fail_rate=1.0)
    for _ in range(2):  # the same clip asked twice: two boundaries, one body
        response = await client.post("/v1/videos", data=clip_form())
        assert response.status == 200, await response.text()
    assert billed(await stats(client, "video")) == (2, 1)

    async def refunded() -> bool:
        return billed(await stats(client, "video")) == (0, 0)

    await wait_for_async(refunded, 10, "the failed jobs to be refunded", interval=0.05)


def test_a_refund_is_taken_once() -> None:
    ledger = Ledger()
    first = ledger.bill(body_digest(b"{}"))
    ledger.bill(body_digest(b"{}"))
    first()
    first()
    assert (ledger.paid, ledger.duplicate_paid) == (1, 0)
