"""The bundled server over loopback, driven by the real ``openai`` SDK."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import openai
import pytest
from pydantic import BaseModel, Field

from local_server.process import LocalServer, LocalServerError

Start = Callable[..., LocalServer]
MESSAGES = [{"role": "user", "content": "Premise: A choir rehearses during a blackout."}]


class Beat(BaseModel):
    title: str
    characters: list[str] = Field(min_length=2, max_length=4)
    mood: str | None


def client(server: LocalServer, **kwargs: object) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key=kwargs.pop("api_key", "test"),
                              max_retries=0, **kwargs)


async def test_structured_outputs_parse_with_the_sdk(local_server: Start) -> None:
    server = local_server()
    completion = await client(server).chat.completions.parse(
        model="any-model", messages=MESSAGES, response_format=Beat
    )
    beat = completion.choices[0].message.parsed
    assert isinstance(beat, Beat) and 2 <= len(beat.characters) <= 4
    assert completion.model == "any-model" and completion.usage.total_tokens > 0


async def test_every_200_carries_rate_limit_headers(local_server: Start) -> None:
    server = local_server(llm_rpm=600, llm_tpm=100_000)
    raw = await client(server).chat.completions.with_raw_response.create(
        model="m", messages=MESSAGES
    )
    assert raw.headers["x-ratelimit-limit-requests"] == "600"
    assert raw.headers["x-ratelimit-remaining-requests"] == "9"
    assert raw.headers["x-ratelimit-reset-requests"].endswith("ms")
    assert "x-ratelimit-remaining-tokens" in raw.headers and raw.headers["x-request-id"]
    assert raw.parse().choices[0].message.content


async def test_over_the_limit_is_a_429_with_retry_after(local_server: Start) -> None:
    server = local_server(llm_rpm=60)  # a burst of one request
    sdk = client(server)
    await sdk.chat.completions.create(model="m", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as caught:
        await sdk.chat.completions.create(model="m", messages=MESSAGES)
    headers = caught.value.response.headers
    assert 0 < int(headers["retry-after-ms"]) <= 1000 and headers["retry-after"] == "1"
    assert caught.value.code == "rate_limit_exceeded"
    stats = server.stats()["chat"]
    assert (stats["accepted"], stats["rate_limited"]) == (1, 1)
    assert server.reset_stats()["chat"]["accepted"] == 0


async def test_exhausted_quota_and_wrong_key(local_server: Start) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        await client(local_server(quota_exhausted=True)).chat.completions.create(
            model="m", messages=MESSAGES)
    assert caught.value.code == "insufficient_quota"
    assert "retry-after" not in caught.value.response.headers
    with pytest.raises(openai.AuthenticationError):
        await client(local_server(require_key="k1"), api_key="k2").chat.completions.create(
            model="m", messages=MESSAGES)


async def test_fault_modes(local_server: Start) -> None:
    with pytest.raises(openai.InternalServerError):
        await client(local_server(fault_rate=1.0)).chat.completions.create(
            model="m", messages=MESSAGES)
    with pytest.raises(openai.APITimeoutError):
        await client(local_server(hang_rate=1.0), timeout=0.3).chat.completions.create(
            model="m", messages=MESSAGES)
    malformed = client(local_server(malformed_rate=1.0))
    raw = await malformed.chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
    with pytest.raises(ValueError):  # the SDK's json.loads of a broken body
        raw.parse()
    with pytest.raises(openai.BadRequestError) as bad:
        await client(local_server()).chat.completions.create(model="m", messages=[])
    assert bad.value.param == "messages"


async def test_max_tokens_cuts_the_answer(local_server: Start) -> None:
    completion = await client(local_server()).chat.completions.create(
        model="m", messages=MESSAGES, max_tokens=3)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens <= 3


async def test_models_list(local_server: Start) -> None:
    models = await client(local_server()).models.list()
    assert "local-chat" in [m.id for m in models.data]


def test_the_child_process_is_gone_after_exit() -> None:
    with LocalServer(latency_scale=0) as server:
        pid = server.pid
        assert pid is not None and server.stats()["chat"]["accepted"] == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_bad_flags_fail_to_start_with_the_reason() -> None:
    with pytest.raises(LocalServerError, match="fault-rate"), LocalServer(fault_rate=2):
        pass


async def test_speech_is_real_audio_and_voices_differ(local_server: Start) -> None:
    import io
    import wave

    sdk = client(local_server(tts_rpm=600))
    spoken = {}
    for voice in ("onyx", "shimmer"):
        audio = await sdk.audio.speech.create(model="tts", voice=voice, response_format="wav",
                                              input="The lamp is still broken, Ben.")
        data = audio.content
        with wave.open(io.BytesIO(data)) as file:
            assert (file.getnchannels(), file.getsampwidth()) == (1, 2)
            seconds = file.getnframes() / file.getframerate()
        assert 1.0 < seconds < 6.0  # a short sentence, spoken
        spoken[voice] = data
    assert spoken["onyx"] != spoken["shimmer"]
    with pytest.raises(openai.BadRequestError, match="wav"):
        await sdk.audio.speech.create(model="tts", voice="alloy", input="x",
                                      response_format="mp3")


async def test_images_are_pngs_of_the_asked_size(local_server: Start) -> None:
    import base64
    import io

    from PIL import Image

    result = await client(local_server()).images.generate(
        model="img", prompt="The Lighthouse. Ada and Ben on the gallery.", size="1024x1024")
    png = base64.b64decode(result.data[0].b64_json)
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size == (1024, 1024)
        assert len(image.getcolors(maxcolors=100_000) or []) > 10  # a picture, not a flat fill


def _probe(path: str) -> str:
    """What ffmpeg says about a media file (its stream and duration lines)."""
    import subprocess

    import imageio_ffmpeg

    run = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", path],
                         capture_output=True, text=True)
    return run.stderr


async def test_video_jobs_progress_complete_and_download(local_server: Start,
                                                         tmp_path: Path) -> None:
    import asyncio
    import time

    server = local_server(latency_scale=0.03)  # a 60 s job takes about 2 s
    sdk = client(server)
    job = await sdk.videos.create(prompt="A ferry in fog. The horn sounds.", seconds="4",
                                  size="1280x720")
    assert job.status == "queued" and job.progress == 0
    seen = {job.status}
    deadline = time.monotonic() + 30
    while job.status not in ("completed", "failed"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
        job = await sdk.videos.retrieve(job.id)
        seen.add(job.status)
    assert job.status == "completed" and "in_progress" in seen and job.progress == 100
    content = await sdk.videos.download_content(job.id)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(content.content)
    info = _probe(str(clip))
    assert "Video: h264" in info and "1280x720" in info and "Duration: 00:00:04" in info


async def test_video_jobs_fail_on_cue_and_refuse_early_downloads(local_server: Start) -> None:
    import asyncio
    import time

    sdk = client(local_server(latency_scale=0.03, video_fail_rate=1.0))
    job = await sdk.videos.create(prompt="x", seconds="4")
    with pytest.raises(openai.ConflictError):  # not ready yet
        await sdk.videos.download_content(job.id)
    deadline = time.monotonic() + 30
    while job.status != "failed":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
        job = await sdk.videos.retrieve(job.id)
    assert job.error is not None and job.error.code == "video_generation_failed"
    with pytest.raises(openai.NotFoundError):
        await sdk.videos.retrieve("video_nope")
    with pytest.raises(openai.BadRequestError, match="seconds"):
        await sdk.videos.create(prompt="x", seconds="5")  # type: ignore[arg-type]
