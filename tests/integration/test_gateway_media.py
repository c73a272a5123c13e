"""Speech, images and clips through the same gateway, limiter and retries as text."""

from __future__ import annotations

import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from actors.gateway import ProviderGateway
from local_server.process import LocalServer
from pipelines.errors import (
    GenerationFailed,
    MalformedResponse,
    ProviderTimeout,
    ProviderUnavailable,
)
from pipelines.settings import ImageSettings, ProviderKind, TTSSettings, VideoSettings
from pipelines.storage import Storage

Start = Callable[..., LocalServer]
Build = Callable[..., ProviderGateway]
KINDS = {ProviderKind.TTS: TTSSettings, ProviderKind.IMAGE: ImageSettings,
         ProviderKind.VIDEO: VideoSettings}


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Build]:
    """Gateways writing their files into a storage at ``tmp_path`` (keys are paths under it)."""
    made: list[ProviderGateway] = []

    def build(kind: ProviderKind, base_url: str, **fields: Any) -> ProviderGateway:
        settings = KINDS[kind](**{"rpm": None, "timeout_s": 10.0, **fields})
        made.append(ProviderGateway(kind, settings, local_base_url=base_url,
                                    storage=Storage(str(tmp_path))))
        return made[-1]

    yield build
    for g in made:
        await g.close()


async def test_speech_is_written_to_a_file_and_billed_per_character(
    local_server: Start, gateway: Build, tmp_path: Path
) -> None:
    gw = gateway(ProviderKind.TTS, local_server().base_url)
    text = "I kept the lantern lit for you."
    result = await gw.speech(text, voice="nova", out="a/line.wav",
                             episode_id="ep")
    with wave.open(str(tmp_path / result.key)) as file:
        assert file.getnframes() / file.getframerate() > 0.5
    assert result.units == len(text)
    assert result.size_bytes == (tmp_path / result.key).stat().st_size
    assert result.cost_usd == pytest.approx(len(text) * 15.0 / 1e6)
    assert gw.snapshot()["units"] == len(text)


async def test_images_are_written_as_png(local_server: Start, gateway: Build,
                                         tmp_path: Path) -> None:
    gw = gateway(ProviderKind.IMAGE, local_server().base_url)
    result = await gw.image("A lighthouse at dawn.", out="scene.png",
                            size="1024x1024")
    assert (tmp_path / result.key).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.cost_usd == pytest.approx(0.04)


async def test_speech_faults_are_retried_then_reported(local_server: Start, gateway: Build,
                                                       tmp_path: Path) -> None:
    server = local_server(fault_rate=1.0)
    gw = gateway(ProviderKind.TTS, server.base_url, max_attempts=2)
    with pytest.raises(ProviderUnavailable):
        await gw.speech("x", voice="alloy", out="x.wav")
    assert server.stats()["speech"]["faults"]["server_error"] == 2
    assert not (tmp_path / "x.wav").exists()  # nothing half-written


async def test_a_clip_is_polled_to_completion_from_the_scene_image(
    local_server: Start, gateway: Build, tmp_path: Path
) -> None:
    server = local_server(latency_scale=0.03)
    image = await gateway(ProviderKind.IMAGE, server.base_url).image(
        "The ferry.", out="scene.png", size="1024x1024")
    gw = gateway(ProviderKind.VIDEO, server.base_url, poll_initial_s=0.1, poll_max_s=0.3,
                 prices={"per_video_second": 0.10})
    result = await gw.clip("The ferry leaves.", image=image.key, seconds="4",
                           out="clip.mp4", episode_id="ep")
    data = (tmp_path / result.key).read_bytes()
    assert data[4:8] == b"ftyp" and result.units == 4
    stats = gw.snapshot()
    assert stats["calls"] >= 3  # create, at least one poll, download: each through the limiter
    assert stats["cost_usd"] == pytest.approx(0.4)


async def test_a_failed_clip_job_is_started_again_then_reported(
    local_server: Start, gateway: Build, tmp_path: Path
) -> None:
    server = local_server(latency_scale=0.01, video_fail_rate=1.0)
    gw = gateway(ProviderKind.VIDEO, server.base_url, poll_initial_s=0.05, poll_max_s=0.1,
                 max_attempts=2)
    with pytest.raises(GenerationFailed, match="on purpose"):
        await gw.clip("x", out="clip.mp4")
    stats = gw.snapshot()
    assert stats["errors"]["GenerationFailed"] == 2 and stats["retries"] >= 1
    assert not (tmp_path / "clip.mp4").exists()


async def test_a_clip_job_that_outlives_its_timeout_has_failed(
    local_server: Start, gateway: Build, tmp_path: Path
) -> None:
    server = local_server(latency_scale=1.0, video_latency=0, video_job_s=3600)  # never ends
    gw = gateway(ProviderKind.VIDEO, server.base_url, poll_initial_s=0.05, poll_max_s=0.1,
                 clip_timeout_s=0.5)
    with pytest.raises(ProviderTimeout, match="clip timeout"):  # its hour never waited out
        await gw.clip("x", out="clip.mp4")


async def test_clip_jobs_never_exceed_the_providers_job_cap(
    local_server: Start, gateway: Build, tmp_path: Path
) -> None:
    """Many clips at once: the gateway holds a job slot until a job ends, so the server's
    cap of 2 jobs in progress never answers 429, and every clip is made."""
    import asyncio

    # Small renders: a job's length is the one drawn, not how long a busy machine took to encode.
    server = local_server(latency_scale=0.01, video_max_jobs=2, video_render_size="320x180",
                          video_render_fps=8)
    gw = gateway(ProviderKind.VIDEO, server.base_url, max_jobs=2, max_inflight=10,
                 poll_initial_s=0.02, poll_max_s=0.05)
    results = await asyncio.gather(*(
        gw.clip(f"clip {i}", out=f"clip{i}.mp4") for i in range(8)))
    assert all((tmp_path / r.key).read_bytes()[4:8] == b"ftyp" for r in results)
    assert gw.snapshot()["rate_limited"] == 0
    assert server.stats()["video"]["rate_limited"] == 0
    # Eight jobs measured (60 s ± 15 s at 1/100): they now time the first poll.
    assert 0.3 < gw.clips.durations.first_poll_s() < 1.0
    # How long the jobs were seen running, for the report's bound: polled near each job's end,
    # most of what the server drew; never more than the jobs ran (a render can overrun what was
    # drawn on a busy machine: the server measures what they ran).
    video = server.stats()["video"]
    assert 0.5 * sum(video["jobs_s"]) < gw.snapshot()["job_s"] < sum(video["jobs_ran_s"])


async def test_a_speech_answer_that_is_not_audio_is_malformed_retried_and_reported(
    local_server: Start, gateway: Build, tmp_path: Path
) -> None:
    server = local_server(malformed_rate=1.0)  # 200s whose bodies are broken JSON
    gw = gateway(ProviderKind.TTS, server.base_url, max_attempts=2)
    out = tmp_path / "line.wav"
    with pytest.raises(MalformedResponse) as caught:
        await gw.speech("The lamp is lit.", voice="nova", out="line.wav")
    message = str(caught.value)
    assert "not WAV audio" in message and "bytes of application/json" in message
    assert "chatcmpl-broken" in message  # what came back, its first bytes
    stats = gw.snapshot()
    assert stats["errors"] == {"MalformedResponse": 2} and stats["retries"] == 1
    assert not out.exists()  # nothing that is not audio is written


async def test_malformed_job_answers_are_retried_like_a_5xx_and_counted(
    local_server: Start, gateway: Build, tmp_path: Path
) -> None:
    """Creates, polls and downloads that answer broken bodies are retried; the clip is made and
    the counters say what happened."""
    server = local_server(latency_scale=0.01, malformed_rate=0.3, seed=3,
                          video_render_size="320x180", video_render_fps=8)
    gw = gateway(ProviderKind.VIDEO, server.base_url, poll_initial_s=0.05, poll_max_s=0.1,
                 max_attempts=8)
    results = [await gw.clip(f"clip {i}", out=f"clip{i}.mp4")
               for i in range(3)]
    assert all((tmp_path / r.key).read_bytes()[4:8] == b"ftyp" for r in results)
    stats = gw.snapshot()
    malformed = server.stats()["video"]["faults"]["malformed"]
    assert malformed > 0 and stats["errors"]["MalformedResponse"] == malformed
    assert stats["retries"] >= malformed and stats["failed"] == 0
