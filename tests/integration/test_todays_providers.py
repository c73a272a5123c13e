"""What today's providers answer, through the gateway against the bundled server over loopback
with the real SDK: the flex tier (billed at its own prices, busy at times, waited out or fallen
back from), a model the provider does not serve, pictures answered as links, and speech in
another format than the one asked."""

from __future__ import annotations

import asyncio
import io
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from actors.audio_formats import sniff
from actors.gateway import ProviderGateway
from local_server.process import LocalServer
from pipelines.errors import FlexBusy, ModelNotFound
from pipelines.models import EpisodeStatus
from pipelines.report import build_report
from pipelines.settings import ImageSettings, LLMSettings, ProviderKind, TTSSettings
from pipelines.storage import Storage
from tests.integration.test_coordinator import make, script

Start = Callable[..., LocalServer]
Build = Callable[..., ProviderGateway]
MESSAGES = [{"role": "user", "content": "A lighthouse keeper finds a message in a bottle."}]
PRICES = {"input_per_1m_tokens": 2.0, "output_per_1m_tokens": 8.0}


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Build]:
    made: list[ProviderGateway] = []

    def build(server: LocalServer, kind: ProviderKind = ProviderKind.LLM,
              **fields: Any) -> ProviderGateway:
        conf = {ProviderKind.LLM: LLMSettings, ProviderKind.TTS: TTSSettings,
                ProviderKind.IMAGE: ImageSettings}[kind]
        settings = conf(**{"model": "test-model", "rpm": None, "tpm": None, "timeout_s": 10.0,
                           **fields})
        made.append(ProviderGateway(kind, settings, local_base_url=server.base_url,
                                    storage=Storage(str(tmp_path))))
        return made[-1]

    yield build
    for g in made:
        await g.close()


def tier_stats(server: LocalServer, tier: str) -> dict[str, int]:
    return server.stats()["chat"]["by_tier"][tier]


async def test_flex_calls_go_as_flex_and_cost_half(gateway: Build, local_server: Start) -> None:
    server = local_server()
    gw = gateway(server, prices=PRICES)
    flex = await gw.chat(MESSAGES, max_tokens=50, seed=1, tier="flex")
    standard = await gw.chat(MESSAGES, max_tokens=50, seed=1)
    assert (flex.tier, standard.tier) == ("flex", "standard")
    assert tier_stats(server, "flex")["paid"] == 1 and tier_stats(server, "default")["paid"] == 1
    # The same answer (same seed), at half the price; what flex saved is the other half.
    assert (flex.tokens_in, flex.tokens_out) == (standard.tokens_in, standard.tokens_out)
    assert flex.cost_usd == pytest.approx(standard.cost_usd / 2)
    assert flex.flex_saved_usd == pytest.approx(standard.cost_usd / 2)
    tiers = gw.snapshot()["tiers"]
    assert tiers["flex"]["calls"] == 1 and tiers["standard"]["calls"] == 1
    assert tiers["flex"]["saved_usd"] == pytest.approx(flex.flex_saved_usd, abs=1e-6)


async def test_a_flex_price_table_of_its_own_is_used(gateway: Build,
                                                     local_server: Start) -> None:
    server = local_server()
    gw = gateway(server, prices=PRICES,
                 flex_prices={"input_per_1m_tokens": 0.0, "output_per_1m_tokens": 1.0})
    result = await gw.chat(MESSAGES, max_tokens=50, tier="flex")
    assert result.cost_usd == pytest.approx(result.tokens_out * 1.0 / 1e6)


async def test_busy_flex_answers_are_waited_out_without_pausing_standard_calls(
        gateway: Build, local_server: Start) -> None:
    server = local_server(flex_unavailable_rate=0.6, seed=3)
    gw = gateway(server, flex_wait_s=120)
    flex = [gw.chat(MESSAGES, max_tokens=20, episode_id=f"f{i}", tier="flex") for i in range(8)]
    standard = [gw.chat(MESSAGES, max_tokens=20, episode_id=f"s{i}") for i in range(8)]
    results = await asyncio.gather(*flex, *standard)
    assert [r.tier for r in results] == ["flex"] * 8 + ["standard"] * 8
    stats = gw.snapshot()
    assert stats["flex_busy"] > 0 and stats["flex_busy"] == server.stats()["chat"]["unavailable"]
    # No pause, no cool-down, no 429 counted: the standard calls were never held up.
    assert stats["rate_limited"] == 0 and stats["flex_fell_back"] == 0
    deployment = gw.deployments[0]
    assert deployment.cooldown_until == 0.0 and deployment.failures_in_a_row == 0
    assert deployment.limiter.paused_for == 0
    assert all(r.attempts == 1 for r in results)  # busy answers use none of max_attempts


async def test_a_flex_call_goes_on_at_standard_once_its_wait_is_over(
        gateway: Build, local_server: Start) -> None:
    server = local_server(flex_unavailable_rate=1.0)
    gw = gateway(server, prices=PRICES, flex_wait_s=0.5)
    result = await gw.chat(MESSAGES, max_tokens=20, tier="flex")
    assert result.tier == "standard" and result.flex_saved_usd == 0.0
    assert tier_stats(server, "default")["paid"] == 1 and tier_stats(server, "flex")["paid"] == 0
    assert gw.snapshot()["flex_fell_back"] == 1


async def test_without_a_fallback_a_busy_flex_call_fails_saying_so(
        gateway: Build, local_server: Start) -> None:
    server = local_server(flex_unavailable_rate=1.0)
    gw = gateway(server, flex_wait_s=0.3, flex_fallback=False)
    with pytest.raises(FlexBusy, match="flex_fallback"):
        await gw.chat(MESSAGES, max_tokens=20, tier="flex")
    assert tier_stats(server, "default")["accepted"] == 0  # never sent at standard


async def test_a_model_the_provider_does_not_serve_fails_at_once_naming_the_setting(
        gateway: Build, local_server: Start) -> None:
    server = local_server(models=["gpt-5-mini"])
    gw = gateway(server, model="gpt-4o-mini", max_attempts=5)
    with pytest.raises(ModelNotFound, match="SHOWRUNNER_LLM__MODEL") as found:
        await gw.chat(MESSAGES, max_tokens=20)
    assert found.value.status == 404
    # Sent once, though five attempts were allowed: retrying cannot help, so it fails at once.
    assert server.stats()["chat"]["model_not_found"] == 1
    pictures = gateway(server, ProviderKind.IMAGE, model="gpt-image-1")
    with pytest.raises(ModelNotFound, match="SHOWRUNNER_IMAGE__MODEL"):
        await pictures.image("a gull", out="gull.png", size="256x256")


async def test_a_picture_answered_as_a_link_is_downloaded(
        gateway: Build, local_server: Start, tmp_path: Path) -> None:
    server = local_server(image_answer="url")
    gw = gateway(server, ProviderKind.IMAGE)
    result = await gw.image("a gull over the pier", out="gull.png", size="256x256")
    picture = (tmp_path / "gull.png").read_bytes()
    assert picture.startswith(b"\x89PNG") and result.size_bytes == len(picture)


async def test_speech_in_another_format_than_asked_is_converted(
        gateway: Build, local_server: Start, tmp_path: Path) -> None:
    server = local_server(speech_format="mp3")
    gw = gateway(server, ProviderKind.TTS)
    await gw.speech("The lamp is still broken, Ben.", voice="onyx", out="line.wav")
    spoken = (tmp_path / "line.wav").read_bytes()
    assert sniff(spoken) == "wav"
    with wave.open(io.BytesIO(spoken)) as file:
        assert 0.8 < file.getnframes() / file.getframerate() < 6.0


async def test_an_episode_on_flex_is_billed_at_flex_prices_and_says_what_it_saved(
        local_server: Start, tmp_path: Path) -> None:
    server = local_server(flex_unavailable_rate=0.3, seed=5)
    coordinator, llm = make(server, tmp_path, attempts=2)
    flex = await coordinator.submit(script(premise="A ferry that never docks.", scenes=2,
                                           tier="flex", flex_wait_s=60))
    standard = await coordinator.submit(script(premise="A ferry that never docks.", scenes=2,
                                               seed=11))
    views = await coordinator.wait([flex, standard])
    assert [v.status for v in views] == [EpisodeStatus.COMPLETED] * 2
    report = build_report(coordinator.records.values(), {ProviderKind.LLM: llm.snapshot()},
                          coordinator.settings)
    tiers = report["totals"]["providers"]["llm"]["tiers"]
    by_tier = server.stats()["chat"]["by_tier"]
    assert tiers["flex"]["calls"] == by_tier["flex"]["paid"] > 0
    assert tiers["standard"]["calls"] == by_tier["default"]["paid"] > 0
    assert report["totals"]["flex_saved_usd"] == pytest.approx(tiers["flex"]["cost_usd"])
    assert report["totals"]["providers"]["llm"]["flex_busy"] == server.stats()["chat"][
        "unavailable"]
