"""The call cache, the ledger and budgets, end to end: a coordinator on real gateways over
loopback to the bundled server, a real SQLite store, real media files (no Ray here). Paid calls
are counted where they are paid: at the server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from actors.coordinator import EpisodeCoordinator
from actors.gateway import ProviderGateway
from actors.state_store import StateStore
from local_server.process import LocalServer
from pipelines.episode_folder import Artifact
from pipelines.errors import BadRequest
from pipelines.models import EpisodeRequest, EpisodeStatus
from pipelines.settings import (
    ImageSettings,
    LLMSettings,
    Prices,
    ProviderKind,
    ServiceSettings,
    Settings,
    TTSSettings,
)
from pipelines.storage import Storage
from pipelines.tenancy import DailyBudgetSpent
from tests.support import wait_for_async

Start = Callable[..., LocalServer]
ENDPOINTS = ("chat", "speech", "image")
PRICES = {
    ProviderKind.LLM: Prices(input_per_1m_tokens=2.5, output_per_1m_tokens=10.0),
    ProviderKind.TTS: Prices(per_1m_speech_chars=15.0),
    ProviderKind.IMAGE: Prices(per_image=0.04),
}
OPEN: list[ProviderGateway | EpisodeCoordinator] = []


@pytest.fixture(autouse=True)
async def _close() -> AsyncIterator[None]:
    yield
    while OPEN:
        await OPEN.pop().close()


def build(server: LocalServer, root: Path, wrap: Callable[[Any], Any] | None = None,
          **settings: Any) -> tuple[EpisodeCoordinator, dict[ProviderKind, ProviderGateway]]:
    """A coordinator whose gateways write the ledger of ``root``'s store and keep its cache,
    as ``showrunner run`` makes them (``wrap``: around the language model's)."""
    state_url = f"sqlite+aiosqlite:///{root / 'state.db'}"
    conf = {
        ProviderKind.LLM: LLMSettings(model="test", rpm=None, tpm=None, prices=PRICES[
            ProviderKind.LLM]),
        ProviderKind.TTS: TTSSettings(rpm=None, max_attempts=5, prices=PRICES[ProviderKind.TTS]),
        ProviderKind.IMAGE: ImageSettings(rpm=None, max_attempts=5,
                                          prices=PRICES[ProviderKind.IMAGE]),
    }
    gateways = {kind: ProviderGateway(kind, c, local_base_url=server.base_url,
                                      state_url=state_url, storage=Storage(str(root)))
                for kind, c in conf.items()}
    coordinator = EpisodeCoordinator(
        Settings(llm=conf[ProviderKind.LLM], tts=conf[ProviderKind.TTS],
                 image=conf[ProviderKind.IMAGE],
                 encoding={"width": 320, "height": 180, "fps": 8, "x264_preset": "ultrafast"},
                 **settings),
        {**gateways, **({ProviderKind.LLM: wrap(gateways[ProviderKind.LLM])} if wrap else {})},
        storage=Storage(str(root)), state_url=state_url)
    OPEN.extend([*gateways.values(), coordinator])
    return coordinator, gateways


def paid(server: LocalServer) -> dict[str, int]:
    stats = server.stats()
    return {name: int(stats[name]["accepted"]) for name in ENDPOINTS}


def premise(**fields: Any) -> EpisodeRequest:
    asked: dict[str, Any] = {"scenes": 2, "lines_per_scene": 2, **fields}
    return EpisodeRequest(premise="A lighthouse keeper adopts a seagull.", **asked)


async def run(coordinator: EpisodeCoordinator, request: EpisodeRequest, owner: str = "t1"
              ) -> Any:
    [view] = await coordinator.submit_many([request], owner=owner)
    [done] = await coordinator.wait([view.id])
    return done


async def test_the_same_episode_again_pays_for_nothing_and_says_what_it_saved(
        local_server: Start, tmp_path: Path) -> None:
    server = local_server(latency_scale=0.02)
    coordinator, gateways = build(server, tmp_path)
    first = await run(coordinator, premise())
    assert first.status is EpisodeStatus.COMPLETED, first.error
    before = paid(server)
    assert all(before.values())

    again = await run(coordinator, premise())  # a new episode, asked alike
    assert again.status is EpisodeStatus.COMPLETED, again.error
    assert paid(server) == before  # not one call paid twice
    assert again.figures.cost_usd == 0.0
    video = tmp_path / again.id / Artifact.VIDEO.value
    assert video.stat().st_size > 0
    for kind, gateway in gateways.items():
        stats = gateway.snapshot()
        assert stats["cache_hits"] == stats["ok"] > 0, kind  # each call once paid, once not
        assert stats["saved_usd"] == pytest.approx(stats["cost_usd"], abs=2e-6), kind
    spoken = sorted((tmp_path / first.id).rglob("*.wav"))
    assert spoken and [p.read_bytes() for p in spoken] == [
        (tmp_path / again.id / p.relative_to(tmp_path / first.id)).read_bytes() for p in spoken]

    # The ledger has every paid call once, and what they cost is what the episode cost.
    store = await StateStore.open(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
    try:
        assert await store.spent("t1", 0) == pytest.approx(first.figures.cost_usd, abs=1e-6)
    finally:
        await store.close()


async def test_the_cache_is_per_owner_and_can_be_turned_off(local_server: Start,
                                                          tmp_path: Path) -> None:
    server = local_server(latency_scale=0.02)
    coordinator, _ = build(server, tmp_path)
    script = premise(media=False)
    await run(coordinator, script)
    once = paid(server)["chat"]
    await run(coordinator, script, owner="t2")  # another tenant is never given t1's answers
    assert paid(server)["chat"] == 2 * once
    done = await run(coordinator, script.model_copy(update={"cache": False}))
    assert done.status is EpisodeStatus.COMPLETED and done.figures.cost_usd > 0
    assert paid(server)["chat"] == 3 * once
    await run(coordinator, script.model_copy(update={"seed": 12345}))  # another seed: asked anew
    assert paid(server)["chat"] == 4 * once


async def test_identical_calls_at_once_are_paid_once(local_server: Start, tmp_path: Path) -> None:
    server = local_server(latency_scale=0.2)
    _, gateways = build(server, tmp_path)
    llm = gateways[ProviderKind.LLM]
    messages = [{"role": "user", "content": "Name a seagull."}]
    answers = await asyncio.gather(*(llm.chat(messages, owner="t1", cache=True, seed=3,
                                              max_tokens=50) for _ in range(5)))
    assert paid(server)["chat"] == 1
    assert len({a.text for a in answers}) == 1 and sum(a.cache_hit for a in answers) == 4


async def test_an_episode_never_spends_past_its_budget(local_server: Start,
                                                       tmp_path: Path) -> None:
    server = local_server(latency_scale=0.02)
    coordinator, _ = build(server, tmp_path)
    budget = 0.03  # the outline and a few calls more, not the whole episode
    done = await run(coordinator, premise(scenes=4, budget_usd=budget, cache=False))
    assert done.status is EpisodeStatus.FAILED
    assert done.error.startswith("budget_exceeded:") and "$0.0300" in done.error, done.error
    assert 0 < done.figures.cost_usd <= budget
    store = await StateStore.open(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
    try:
        assert await store.spent("t1", 0) <= budget  # what the server billed, by the ledger
    finally:
        await store.close()


async def test_a_daily_budget_holds_across_episodes_and_a_restart(local_server: Start,
                                                                 tmp_path: Path) -> None:
    server = local_server(latency_scale=0.02)
    daily = 0.05
    coordinator, _ = build(server, tmp_path, service=ServiceSettings(daily_budget_usd=daily))
    views = await coordinator.submit_many(
        [premise(scenes=3, media=False, cache=False) for _ in range(6)], owner="t1")
    ended = await coordinator.wait([v.id for v in views])
    refused = [v for v in ended if v.status is EpisodeStatus.FAILED]
    assert refused and all(v.error.startswith("daily_budget_exceeded:") for v in refused)
    today = await coordinator.daily_budget("t1")
    assert today is not None and 0 < today.spent_usd <= daily and today.held_usd == 0
    assert await coordinator.daily_budget("t2") is not None  # another key has its own day
    spent = today.spent_usd
    await coordinator.close()
    OPEN.remove(coordinator)

    again, _ = build(server, tmp_path, service=ServiceSettings(daily_budget_usd=daily))
    after_restart = await again.daily_budget("t1")
    assert after_restart is not None and after_restart.spent_usd == pytest.approx(spent)
    assert 0 < after_restart.resets_at - time.time() <= 86_400
    await again.close()
    OPEN.remove(again)

    lower, _ = build(server, tmp_path, service=ServiceSettings(daily_budget_usd=spent / 2))
    with pytest.raises(DailyBudgetSpent, match="daily budget of"):  # the ledger says it is spent
        await lower.submit_many([premise(media=False)], owner="t1")
    assert [v.owner for v in await lower.submit_many([premise(media=False)], owner="t2")] == ["t2"]


async def test_a_coordinator_with_a_retention_removes_what_finished_long_ago(
        local_server: Start, tmp_path: Path) -> None:
    server = local_server(latency_scale=0.02)
    coordinator, _ = build(server, tmp_path)
    done = await run(coordinator, premise(media=False))
    assert (tmp_path / done.id / "script.json").is_file()
    await coordinator.close()
    OPEN.remove(coordinator)
    await asyncio.sleep(0.2)

    kept, _ = build(server, tmp_path, retention_days=1e-6)  # 0.09 s: it finished before that
    await kept.ready()
    await wait_for_async(lambda: not (tmp_path / done.id).exists(), 10, "its folder removed")
    assert await kept.view(done.id) is None
    again = await run(kept, premise(media=False))  # asked again: answered by the cache
    assert again.status is EpisodeStatus.COMPLETED and again.figures.saved_usd > 0


async def test_a_failed_call_spoils_no_other_so_a_run_again_pays_only_for_what_failed(
        local_server: Start, tmp_path: Path) -> None:
    server = local_server(latency_scale=0.02)
    script = premise(scenes=4, media=False)
    failing, _ = build(server, tmp_path, wrap=lambda llm: FailFor(llm, "Write scene 2:"))
    failed = await run(failing, script)
    assert failed.status is EpisodeStatus.FAILED
    answered_before = paid(server)["chat"]
    assert answered_before > 1
    await failing.close()
    OPEN.remove(failing)

    coordinator, gateways = build(server, tmp_path)
    done = await run(coordinator, script)  # asked alike: the same seeds, the same calls
    assert done.status is EpisodeStatus.COMPLETED, done.error
    llm = gateways[ProviderKind.LLM].snapshot()
    assert llm["cache_hits"] == answered_before  # every call answered before, even those after
    assert paid(server)["chat"] == answered_before + llm["calls"]  # the failure, paid once


class FailFor:
    """The real gateway, refusing the calls whose prompt mentions ``marker`` (a fault on cue)."""

    def __init__(self, gateway: ProviderGateway, marker: str) -> None:
        self.gateway, self.marker = gateway, marker

    async def chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        if self.marker in messages[-1]["content"]:
            raise BadRequest("injected fault", provider="llm", status=400)
        return await self.gateway.chat(messages, **kwargs)
