"""The server's options that make it answer as other providers do, without a process: their
flags (bad ones: test_local_server_cli) and checks, the flex latency, where the model and flex
checks fall in the order of checks, and how many pictures are kept for their links."""

from __future__ import annotations

import json
from typing import Any

import pytest

from local_server.config import ServerConfig
from local_server.files import ImageFiles
from local_server.process import flags_of
from local_server.state import ServerState
from local_server.tiers import Tier
from tests.unit.local_app import CHAT, Make, apps
from tests.unit.test_local_server_cli import parse

make = pytest.fixture(apps, name="make")
BODY = {"model": "gpt-test", "messages": [{"role": "user", "content": "Premise: owls at sea."}]}


def test_the_flags_set_the_options() -> None:
    default = ServerConfig()
    assert (default.flex_latency_factor, default.flex_unavailable_rate, default.flex_models,
            default.image_answer, default.speech_format, default.models) == (
        3.0, 0.0, None, "b64_json", None, None)
    config = parse("--flex-latency-factor", "5", "--flex-unavailable-rate", "0.25",
                   "--flex-models", "o3, o4-mini", "--image-answer", "url",
                   "--speech-format", "mp3", "--models", "gpt-x,tts-x")
    assert (config.flex_latency_factor, config.flex_unavailable_rate) == (5.0, 0.25)
    assert (config.flex_models, config.models) == (("o3", "o4-mini"), ("gpt-x", "tts-x"))
    assert (config.image_answer, config.speech_format) == ("url", "mp3")
    assert config == ServerConfig(flex_latency_factor=5, flex_unavailable_rate=0.25,
                                  flex_models=["o3", "o4-mini"], image_answer="url",
                                  speech_format="mp3", models=["gpt-x", "tts-x"])


def test_local_server_options_of_names_become_comma_separated_flags() -> None:
    assert flags_of({"models": ["gpt-x", "tts-x"], "flex_models": ("o3",)}) == [
        "--models", "gpt-x,tts-x", "--flex-models", "o3"]


@pytest.mark.parametrize(("options", "says"), [
    ({"models": "gpt-x"}, "a list of names"),
    ({"flex_models": []}, "at least one model"),
    ({"speech_format": "ogg"}, "speech_format"),
    ({"image_answer": "png"}, "image_answer"),
    ({"flex_latency_factor": -1}, "flex_latency_factor"),
])
def test_a_config_refuses_impossible_options(options: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        ServerConfig(**options)


def test_flex_latency_is_the_factor_times_the_default_tiers() -> None:
    endpoints = ServerConfig().with_endpoint("chat", latency_s=0.8, jitter_s=0).endpoints
    state = ServerState(ServerConfig(endpoints=endpoints, flex_latency_factor=4))
    assert state.latency("chat") == state.latency("chat", Tier.DEFAULT) == pytest.approx(0.8)
    assert state.latency("chat", Tier.FLEX) == pytest.approx(3.2)
    assert state.latency("chat", Tier.PRIORITY) == pytest.approx(0.8)


async def test_the_model_is_checked_before_the_body(make: Make) -> None:
    client = await make(models=["gpt-test"])
    response = await client.post(CHAT, data=json.dumps({**BODY, "model": "gpt-nope", "n": 9}))
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "model_not_found"
    response = await client.post(CHAT, data=json.dumps({**BODY, "n": 9}))
    assert response.status == 400  # a model it has: the body is checked


async def test_an_exhausted_quota_comes_before_flex_capacity(make: Make) -> None:
    client = await make(quota_exhausted=True, flex_unavailable_rate=1.0)
    response = await client.post(CHAT, data=json.dumps({**BODY, "service_tier": "flex"}))
    assert response.status == 429
    assert (await response.json())["error"]["code"] == "insufficient_quota"


async def test_only_the_newest_pictures_are_kept() -> None:
    files = ImageFiles(ServerState(ServerConfig()), kept=2)
    try:
        names = [await files.add(f"png {n}".encode()) for n in range(3)]
        kept = [files.path(name) for name in names]
        assert kept[0] is None and len(set(names)) == 3
        assert [p.read_bytes() for p in kept[1:] if p is not None] == [b"png 1", b"png 2"]
    finally:
        await files.close(None)  # type: ignore[arg-type]
