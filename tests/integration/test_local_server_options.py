"""The bundled server's options that make it answer as other providers do, over loopback with the
real ``openai`` SDK: service tiers (flex), pictures as links, speech in another format than the
one asked, and models that do not exist.

One server per configuration; a test that counts requests reads a server no other test uses.
"""

from __future__ import annotations

import base64
import io
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import imageio_ffmpeg
import openai
import pytest
from PIL import Image

from local_server.process import LocalServer

pytestmark = pytest.mark.integration

MESSAGES: list[Any] = [{"role": "user", "content": "Premise: A ferry crosses in fog."}]
UNAVAILABLE = ("Resource unavailable. Please try again later or use the default service tier.")


def client(server: LocalServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)


@pytest.fixture(scope="module")
def plain() -> Iterator[LocalServer]:
    with LocalServer(latency_scale=0) as server:
        yield server


# -- service tiers ------------------------------------------------------------------------------


async def test_each_tier_is_echoed_and_billed_as_itself() -> None:
    with LocalServer(latency_scale=0) as server:
        async with client(server) as sdk:
            served = [(await sdk.chat.completions.create(model="m", messages=MESSAGES,
                                                         **tier)).service_tier
                      for tier in ({}, {"service_tier": "auto"}, {"service_tier": "default"},
                                   {"service_tier": "flex"}, {"service_tier": "flex"},
                                   {"service_tier": "priority"})]
            with pytest.raises(openai.BadRequestError) as unknown:
                await sdk.chat.completions.create(model="m", messages=MESSAGES,
                                                  service_tier="turbo")  # type: ignore[arg-type]
        chat = server.stats()["chat"]
    assert served == ["default", "default", "default", "flex", "flex", "priority"]
    assert unknown.value.param == "service_tier" and unknown.value.code == "invalid_value"
    billed = {tier: (s["accepted"], s["paid"], s["duplicate_paid"])
              for tier, s in chat["by_tier"].items()}
    # The two flex calls had the same body: the second was paid again, and as flex.
    assert billed == {"default": (3, 3, 0), "flex": (2, 2, 1), "priority": (1, 1, 0)}
    assert (chat["paid"], chat["duplicate_paid"], chat["unavailable"]) == (6, 1, 0)


async def test_flex_unavailable_is_a_429_that_is_neither_billed_nor_a_rate_limit() -> None:
    # One request a second, in a burst of one: had the refused flex calls taken from the bucket,
    # the default call after them would be rate-limited.
    with LocalServer(latency_scale=0, llm_rpm=60, flex_unavailable_rate=1.0) as server:
        async with client(server) as sdk:
            refused = []
            for _ in range(3):
                with pytest.raises(openai.RateLimitError) as caught:
                    await sdk.chat.completions.create(model="m", messages=MESSAGES,
                                                      service_tier="flex")
                refused.append(caught.value)
            served = await sdk.chat.completions.with_raw_response.create(model="m",
                                                                         messages=MESSAGES)
        chat = server.stats()["chat"]
    error = refused[0]
    assert error.status_code == 429 and error.code == "resource_unavailable"
    assert error.body == {"message": UNAVAILABLE, "type": "server_error", "param": None,
                          "code": "resource_unavailable"}
    assert not any(h.startswith(("x-ratelimit-", "retry-after")) for h in error.response.headers)
    assert served.headers["x-ratelimit-remaining-requests"] == "0"  # only the served call taken
    assert (chat["rate_limited"], chat["unavailable"], chat["accepted"]) == (0, 3, 1)
    assert chat["by_tier"]["flex"] == {"accepted": 0, "unavailable": 3, "paid": 0,
                                       "duplicate_paid": 0}
    assert chat["by_tier"]["default"]["paid"] == chat["paid"] == 1


async def test_some_flex_calls_are_refused_and_only_the_served_ones_billed() -> None:
    with LocalServer(latency_scale=0, flex_unavailable_rate=0.5, seed=3) as server:
        async with client(server) as sdk:
            outcomes = []
            for n in range(20):
                try:
                    await sdk.chat.completions.create(
                        model="m", service_tier="flex",
                        messages=[{"role": "user", "content": f"Scene {n}."}])
                    outcomes.append("served")
                except openai.RateLimitError as err:
                    assert err.code == "resource_unavailable"
                    outcomes.append("unavailable")
        flex = server.stats()["chat"]["by_tier"]["flex"]
    served = outcomes.count("served")
    assert 0 < served < 20
    assert (flex["accepted"], flex["paid"], flex["unavailable"]) == (served, served, 20 - served)


async def test_flex_on_a_model_that_does_not_take_it_is_a_bad_request() -> None:
    with LocalServer(latency_scale=0, flex_models=["o3", "o4-mini"]) as server:
        async with client(server) as sdk:
            with pytest.raises(openai.BadRequestError) as caught:
                await sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES,
                                                  service_tier="flex")
            served = await sdk.chat.completions.create(model="o3", messages=MESSAGES,
                                                       service_tier="flex")
            default = await sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert caught.value.param == "service_tier" and "gpt-4o" in caught.value.message
    assert (served.service_tier, default.service_tier) == ("flex", "default")


# -- images as links ----------------------------------------------------------------------------


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


async def test_an_image_asked_as_a_url_is_served_at_that_url(plain: LocalServer) -> None:
    async with client(plain) as sdk:
        linked = await sdk.images.generate(model="img", prompt="A gull. The harbour at dawn.",
                                           size="512x512", response_format="url")
        inline = await sdk.images.generate(model="img", prompt="A gull.", size="256x256")
    url = linked.data[0].url or ""
    assert url.startswith(f"{plain.url}/files/images/") and url.endswith(".png")
    assert linked.data[0].b64_json is None and inline.data[0].url is None
    status, content_type, png = _get(url)
    assert (status, content_type) == (200, "image/png")
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size == (512, 512)
    assert inline.data[0].b64_json  # b64_json stays the default
    status, _, body = _get(f"{plain.url}/files/images/img_nope.png")
    assert status == 404 and b'"code": "not_found"' in body


async def test_a_server_can_answer_links_when_no_format_is_asked() -> None:
    with LocalServer(latency_scale=0, image_answer="url") as server:
        async with client(server) as sdk:
            linked = await sdk.images.generate(model="img", prompt="A gull.", size="256x256")
            inline = await sdk.images.generate(model="img", prompt="A gull.", size="256x256",
                                               response_format="b64_json")
            with pytest.raises(openai.BadRequestError) as bad:
                await sdk.images.generate(model="img", prompt="A gull.",
                                          response_format="png")  # type: ignore[arg-type]
        status, _, png = _get(linked.data[0].url or "")
    assert status == 200 and png == base64.b64decode(inline.data[0].b64_json or "")
    assert bad.value.param == "response_format"


# -- speech formats -----------------------------------------------------------------------------


def _probe(audio: bytes) -> str:
    """ffmpeg's description of ``audio``: its container (``Input #0, <format>``) and stream."""
    with tempfile.NamedTemporaryFile(suffix=".bin") as file:
        file.write(audio)
        file.flush()
        run = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", file.name],
                             capture_output=True, text=True)
    return run.stderr


# Format asked → (content type, ffmpeg's container name, its codec).
ENCODINGS = {"mp3": ("audio/mpeg", "mp3", "Audio: mp3"),
             "opus": ("audio/ogg", "ogg", "Audio: opus"),
             "aac": ("audio/aac", "aac", "Audio: aac"),
             "flac": ("audio/flac", "flac", "Audio: flac"),
             "wav": ("audio/wav", "wav", "Audio: pcm_s16le")}


async def test_each_speech_format_is_a_real_encoding(plain: LocalServer) -> None:
    async with client(plain) as sdk:
        for fmt, (content_type, container, codec) in ENCODINGS.items():
            audio = await sdk.audio.speech.create(model="tts", voice="nova", input="Hello, Ada.",
                                                  response_format=fmt)  # type: ignore[arg-type]
            assert audio.response.headers["content-type"] == content_type, fmt
            info = _probe(audio.content)
            assert f"Input #0, {container}," in info and codec in info, info
            assert "Duration: 00:00:0" in info, info  # a second or so of speech, length known
        pcm = await sdk.audio.speech.create(model="tts", voice="nova", input="Hello, Ada.",
                                            response_format="pcm")
    assert pcm.response.headers["content-type"] == "audio/pcm" and len(pcm.content) > 10_000


@pytest.mark.parametrize(("forced", "asked"), [("mp3", ["wav", "opus", "mp3"]),
                                               ("wav", ["mp3", "flac"])])
async def test_speech_can_come_in_another_format_than_asked(forced: str,
                                                            asked: list[str]) -> None:
    content_type, container, codec = ENCODINGS[forced]
    with LocalServer(latency_scale=0, speech_format=forced) as server:
        async with client(server) as sdk:
            for fmt in asked:
                audio = await sdk.audio.speech.create(
                    model="tts", voice="alloy", input="Hello, Ben.",
                    response_format=fmt)  # type: ignore[arg-type]
                assert audio.response.headers["content-type"] == content_type
                info = _probe(audio.content)
                assert f"Input #0, {container}," in info and codec in info, info


# -- models that do not exist -------------------------------------------------------------------


async def test_a_model_the_server_does_not_have_is_not_found() -> None:
    models = ["gpt-x", "tts-x", "img-x", "sora-2"]
    with LocalServer(latency_scale=0, models=models, video_job_s=1) as server:
        async with client(server) as sdk:
            calls = {
                "chat": lambda model: sdk.chat.completions.create(model=model,
                                                                  messages=MESSAGES),
                "speech": lambda model: sdk.audio.speech.create(model=model, voice="alloy",
                                                                input="Hi."),
                "image": lambda model: sdk.images.generate(model=model, prompt="A gull.",
                                                           size="256x256"),
                "video": lambda model: sdk.videos.create(model=model, prompt="A gull.",
                                                         seconds="4"),
            }
            for (endpoint, call), known in zip(calls.items(), models, strict=True):
                with pytest.raises(openai.NotFoundError) as caught:
                    await call("gpt-nope")
                assert caught.value.body == {
                    "message": "The model `gpt-nope` does not exist or you do not have access "
                               "to it.",
                    "type": "invalid_request_error", "param": None, "code": "model_not_found"}
                await call(known)  # a model it has is served
                counted = server.stats()[endpoint]
                assert (counted["model_not_found"], counted["accepted"]) == (1, 1), endpoint
            listed = {m.id for m in (await sdk.models.list()).data}
    assert listed == set(models)
