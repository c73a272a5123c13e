"""The bundled server as a child process over loopback, driven by the real ``openai`` SDK.

One server per configuration, shared by the module's tests (a start costs about 0.3 s); a test
that counts requests reads the counters of a server no other test uses.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import BaseModel, Field

from local_server.process import LocalServer, LocalServerError
from tests.support import wait_for, wait_for_async

pytestmark = pytest.mark.integration

MESSAGES: list[Any] = [{"role": "user",
                        "content": "Premise: A choir rehearses during a blackout.\n"
                                   "Characters: Ines, Tomas, Bea"}]


class Voice(BaseModel):
    name: str
    part: str | None


class Rehearsal(BaseModel):
    title: str
    setting: str
    voices: list[Voice] = Field(min_length=2, max_length=3)
    lines: list[str] = Field(min_length=1, max_length=4)


def _server(**flags: Any) -> Iterator[LocalServer]:
    with LocalServer(latency_scale=flags.pop("latency_scale", 0.0), **flags) as server:
        yield server


@pytest.fixture(scope="module")
def plain() -> Iterator[LocalServer]:
    yield from _server(llm_rpm=60_000, llm_tpm=10_000_000)  # limited, but never reached here


@pytest.fixture(scope="module")
def tight() -> Iterator[LocalServer]:
    yield from _server(llm_rpm=60)  # a burst of one request, one more a second


def client(server: LocalServer, **options: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, max_retries=0,
                              api_key=options.pop("api_key", "test"), **options)


async def test_structured_outputs_parse_with_the_sdk(plain: LocalServer) -> None:
    async with client(plain) as sdk:
        completion = await sdk.chat.completions.parse(model="any-model", messages=MESSAGES,
                                                      response_format=Rehearsal)
    rehearsal = completion.choices[0].message.parsed
    assert isinstance(rehearsal, Rehearsal) and 2 <= len(rehearsal.voices) <= 3
    assert {v.name for v in rehearsal.voices} <= {"Ines", "Tomas", "Bea"}
    assert completion.model == "any-model" and completion.id.startswith("chatcmpl-")
    assert completion.usage is not None and completion.usage.total_tokens > 0


async def test_plain_text_completion(plain: LocalServer) -> None:
    async with client(plain) as sdk:
        completion = await sdk.chat.completions.create(model="m", messages=MESSAGES)
        cut = await sdk.chat.completions.create(model="m", messages=MESSAGES, max_tokens=3)
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert any(w in choice.message.content for w in ("choir", "rehearses", "blackout"))
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 3


async def test_a_200_carries_the_rate_limit_headers(plain: LocalServer) -> None:
    async with client(plain) as sdk:
        raw = await sdk.chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
    headers = raw.headers
    assert headers["x-ratelimit-limit-requests"] == "60000"
    assert 0 <= int(headers["x-ratelimit-remaining-requests"]) < 1000
    assert headers["x-ratelimit-limit-tokens"] == "10000000"
    assert int(headers["x-ratelimit-remaining-tokens"]) < 10_000_000 // 60
    assert headers["x-ratelimit-reset-requests"].endswith("ms")
    assert headers["x-ratelimit-reset-tokens"].endswith("ms")
    assert headers["x-request-id"].startswith("req_")
    assert raw.parse().choices[0].message.content


async def test_over_the_limit_is_a_rate_limit_error_the_server_counts(tight: LocalServer
                                                                      ) -> None:
    tight.reset_stats()
    async with client(tight) as sdk:
        await sdk.chat.completions.create(model="m", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError) as caught:
            await sdk.chat.completions.create(model="m", messages=MESSAGES)
    error = caught.value
    assert error.code == "rate_limit_exceeded" and error.type == "requests"
    assert 0 < int(error.response.headers["retry-after-ms"]) <= 1000
    assert error.response.headers["retry-after"] == "1"
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    counted = tight.stats()["chat"]
    assert (counted["accepted"], counted["rate_limited"]) == (1, 1)
    assert tight.reset_stats()["chat"]["rate_limited"] == 0


async def test_exhausted_quota_is_a_rate_limit_error_without_retry_after() -> None:
    with LocalServer(latency_scale=0, quota_exhausted=True) as server:
        async with client(server) as sdk:
            with pytest.raises(openai.RateLimitError) as caught:
                await sdk.chat.completions.create(model="m", messages=MESSAGES)
        assert server.stats()["chat"]["quota_rejected"] == 1
    assert caught.value.code == "insufficient_quota"
    assert "retry-after" not in caught.value.response.headers
    assert "retry-after-ms" not in caught.value.response.headers


async def test_a_wrong_key_is_an_authentication_error() -> None:
    with LocalServer(latency_scale=0, require_key="sk-right") as server:
        async with client(server, api_key="sk-wrong-key") as wrong:
            with pytest.raises(openai.AuthenticationError) as caught:
                await wrong.chat.completions.create(model="m", messages=MESSAGES)
        async with client(server, api_key="sk-right") as right:
            assert (await right.chat.completions.create(model="m", messages=MESSAGES)).choices
    assert caught.value.code == "invalid_api_key"


async def test_injected_server_errors_are_internal_server_errors() -> None:
    with LocalServer(latency_scale=0, fault_rate=1.0) as server:
        async with client(server) as sdk:
            with pytest.raises(openai.InternalServerError) as caught:
                await sdk.chat.completions.create(model="m", messages=MESSAGES)
        assert server.stats()["chat"]["faults"]["server_error"] == 1
    assert caught.value.status_code in (500, 502, 503)


async def test_a_malformed_body_is_a_json_decode_error_not_an_api_error() -> None:
    with LocalServer(latency_scale=0, malformed_rate=1.0) as server:
        async with client(server) as sdk:
            with pytest.raises(json.JSONDecodeError) as caught:
                await sdk.chat.completions.create(model="m", messages=MESSAGES)
        assert server.stats()["chat"]["faults"]["malformed"] == 1
    assert not isinstance(caught.value, openai.APIError)  # callers must catch ValueError too


async def test_a_hang_is_a_timeout_and_frees_the_server() -> None:
    with LocalServer(latency_scale=0, hang_rate=1.0) as server:
        async with client(server, timeout=0.5) as sdk:
            with pytest.raises(openai.APITimeoutError):
                await sdk.chat.completions.create(model="m", messages=MESSAGES)
        await wait_for_async(lambda: not server.stats()["chat"]["inflight"], 10,
                             "the hanging handler to end with its client")
        assert server.stats()["chat"]["faults"]["hang"] == 1


async def test_a_bad_body_is_a_bad_request_error(plain: LocalServer) -> None:
    async with client(plain) as sdk:
        with pytest.raises(openai.BadRequestError) as empty:
            await sdk.chat.completions.create(model="m", messages=[])
        with pytest.raises(openai.BadRequestError, match="streaming"):
            await sdk.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    assert empty.value.param == "messages"


async def test_models_are_listed(plain: LocalServer) -> None:
    async with client(plain) as sdk:
        models = await sdk.models.list()
    assert {"local-llm", "local-tts", "local-image"} <= {m.id for m in models.data}


def test_the_child_process_is_gone_after_exit() -> None:
    with LocalServer(latency_scale=0) as server:
        pid = server.pid
        assert pid is not None and server.stats()["chat"]["accepted"] == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert server.returncode == 0  # it stopped on SIGTERM by itself, not by a kill


def test_stopping_with_a_request_hanging_is_prompt_and_clean() -> None:
    with LocalServer(latency_scale=0, hang_rate=1.0) as server:
        body = json.dumps({"model": "m", "messages": MESSAGES}).encode()
        request = urllib.request.Request(f"{server.base_url}/chat/completions", data=body)
        caller = threading.Thread(target=_ignore_errors, args=(request,), daemon=True)
        caller.start()
        wait_for(lambda: server.stats()["chat"]["inflight"], 10, "the request to arrive",
                 interval=0.01)
    assert server.returncode == 0  # on SIGTERM, within the grace period: not killed
    caller.join(timeout=5)
    assert not caller.is_alive()


def _ignore_errors(request: urllib.request.Request) -> None:
    try:
        urllib.request.urlopen(request, timeout=30).read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        pass  # the server went away: what the test wants


def test_bad_flags_fail_to_start_with_the_reason() -> None:
    with pytest.raises(LocalServerError, match="fault-rate: must be from 0 to 1"):
        LocalServer(fault_rate=2).start()


# -- media endpoints ------------------------------------------------------------------------------


async def test_speech_is_real_audio_and_voices_differ(plain: LocalServer) -> None:
    spoken = {}
    async with client(plain) as sdk:
        for voice in ("onyx", "shimmer"):
            audio = await sdk.audio.speech.create(model="tts", voice=voice,
                                                  response_format="wav",
                                                  input="The lamp is still broken, Ben.")
            with wave.open(io.BytesIO(audio.content)) as file:
                assert (file.getnchannels(), file.getsampwidth()) == (1, 2)
                seconds = file.getnframes() / file.getframerate()
            assert 1.0 < seconds < 6.0  # a short sentence, spoken
            spoken[voice] = audio.content
        with pytest.raises(openai.BadRequestError, match="mp3") as unknown:
            await sdk.audio.speech.create(model="tts", voice="alloy", input="x",
                                          response_format="ogg")  # type: ignore[arg-type]
    assert spoken["onyx"] != spoken["shimmer"]
    assert unknown.value.param == "response_format"


async def test_images_are_pngs_of_the_asked_size(plain: LocalServer) -> None:
    import base64

    from PIL import Image

    async with client(plain) as sdk:
        result = await sdk.images.generate(model="img", size="1024x1024",
                                           prompt="The Lighthouse. Ada and Ben on the gallery.")
    png = base64.b64decode(result.data[0].b64_json or "")
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size == (1024, 1024)
        assert len(image.getcolors(maxcolors=100_000) or []) > 10  # a picture, not a fill


def _probe(path: Path) -> str:
    """What ffmpeg says about a media file (its stream and duration lines)."""
    import imageio_ffmpeg

    run = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                         capture_output=True, text=True)
    return run.stderr


async def _until_over(sdk: openai.AsyncOpenAI, job_id: str, interval: float,
                      seen: set[str] | None = None) -> Any:
    """Poll a video job until it is over; return its last state."""

    async def over() -> Any:
        job = await sdk.videos.retrieve(job_id)
        if seen is not None:
            seen.add(job.status)
        return job if job.status in ("completed", "failed") else None

    return await wait_for_async(over, 30, f"video job {job_id} to end", interval=interval)


async def test_video_jobs_progress_complete_and_download(tmp_path: Path) -> None:
    with LocalServer(latency_scale=0.03) as server:  # a 60 s job takes about 2 s
        async with client(server) as sdk:
            created = time.monotonic()
            job = await sdk.videos.create(prompt="A ferry in fog. The horn sounds.",
                                          seconds="4", size="1280x720")
            assert job.status == "queued" and job.progress == 0
            seen = {job.status}
            job = await _until_over(sdk, job.id, 0.1, seen)
            assert job.status == "completed" and "in_progress" in seen and job.progress == 100
            took = time.monotonic() - created
            content = await sdk.videos.download_content(job.id)
        # The server says how long it drew the job to take (60 s ± 15 s, scaled): it took that.
        [drawn] = server.stats()["video"]["jobs_s"]
        assert 45 * 0.03 <= drawn <= 75 * 0.03 and drawn <= took
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(content.content)
    info = _probe(clip)
    assert "Video: h264" in info and "1280x720" in info and "Duration: 00:00:04" in info


async def test_clips_can_be_rendered_small_whatever_size_the_job_asks(tmp_path: Path) -> None:
    with LocalServer(latency_scale=0.01, video_render_size="320x180",
                     video_render_fps=8) as server:
        async with client(server) as sdk:
            job = await sdk.videos.create(prompt="A ferry in fog.", seconds="4", size="1280x720")
            job = await _until_over(sdk, job.id, 0.05)
            assert job.status == "completed" and job.size == "1280x720"  # as asked, on paper
            content = await sdk.videos.download_content(job.id)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(content.content)
    info = _probe(clip)
    assert "320x180" in info and " 8 fps" in info and "Duration: 00:00:04" in info


async def test_video_jobs_fail_on_cue_and_refuse_early_downloads() -> None:
    with LocalServer(latency_scale=0.03, video_fail_rate=1.0, video_max_jobs=1) as server:
        async with client(server) as sdk:
            job = await sdk.videos.create(prompt="x", seconds="4")
            with pytest.raises(openai.ConflictError):  # not ready yet
                await sdk.videos.download_content(job.id)
            with pytest.raises(openai.RateLimitError) as busy:  # one job at a time
                await sdk.videos.create(prompt="y", seconds="4")
            job = await _until_over(sdk, job.id, 0.1)
            assert job.status == "failed"
            with pytest.raises(openai.NotFoundError):
                await sdk.videos.retrieve("video_nope")
            with pytest.raises(openai.BadRequestError, match="seconds"):
                await sdk.videos.create(prompt="x", seconds="5")  # type: ignore[arg-type]
        assert server.stats()["video"]["rate_limited"] == 1
    assert busy.value.code == "too_many_jobs"
    assert job.error is not None and job.error.code == "video_generation_failed"
