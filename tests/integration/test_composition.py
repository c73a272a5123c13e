"""Scenes composed and episodes stitched with the real ffmpeg, from real speech and clips."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import imageio_ffmpeg
import pytest

from local_server.images import scene_card
from local_server.speech import speaker as get_speaker
from pipelines.composition import GAP_S, Line, compose_scene, run_ffmpeg, stitch, wav_seconds
from tests.support import processes


def probe(path: Path) -> tuple[str, float]:
    info = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                          capture_output=True, text=True).stderr
    h, m, s = re.search(r"Duration: (\d+):(\d+):([\d.]+)", info).groups()
    return info, int(h) * 3600 + int(m) * 60 + float(s)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("media")
    speaker = get_speaker()
    lines = []
    for i, (who, text, voice) in enumerate([
        ("Ada", "The lamp is still broken.", "nova"),
        ("Ben", "Then we light it by hand.", "onyx"),
        ("Ada", "Before the ferry comes in.", "nova"),
    ]):
        path = root / f"line{i}.wav"
        path.write_bytes(speaker.wav(text, voice))
        lines.append(Line(who, text, str(path)))
    image = root / "scene.png"
    image.write_bytes(scene_card("The gallery. Wind and spray.", "1024x1024"))
    clip = root / "clip.mp4"  # a 2 s clip: shorter than the lines, so it must loop
    run_ffmpeg(["-loop", "1", "-i", str(image), "-t", "2", "-r", "24", "-vf",
                "scale=1280:720,format=yuv420p", "-c:v", "libx264", "-preset", "ultrafast",
                str(clip)])
    return {"root": root, "lines": lines, "clip": str(clip), "image": str(image)}


def test_a_scene_has_its_lines_length_video_audio_and_subtitles(media: dict) -> None:
    out = Path(media["root"]) / "scenes" / "scene1.mp4"
    scene = compose_scene(media["lines"], media["clip"], str(out))
    expected = sum(wav_seconds(line.audio) for line in media["lines"]) + GAP_S * 3
    info, duration = probe(out)
    assert "Video: h264" in info and "Audio: aac" in info and "1280x720" in info
    assert duration == pytest.approx(expected, rel=0.10)
    assert [text for _, _, text in scene["cues"]][0] == "Ada: The lamp is still broken."
    assert not list(out.parent.glob(".compose-*"))  # its work folder is gone


def test_an_episode_is_its_scenes_in_order_with_subtitles_and_a_poster(media: dict) -> None:
    root = Path(media["root"])
    first = compose_scene(media["lines"], media["clip"], str(root / "ep" / "s1.mp4"))
    second = compose_scene(media["lines"][:1], media["clip"], str(root / "ep" / "s2.mp4"))
    files = stitch([first, second], media["image"], str(root / "ep"))
    info, duration = probe(Path(files["video"]))
    assert "Video: h264" in info and "Audio: aac" in info
    assert duration == pytest.approx(first["length_s"] + second["length_s"], rel=0.10)
    subtitles = Path(files["subtitles"]).read_text()
    assert subtitles.count(" --> ") == 4 and subtitles.startswith("1\n00:00:00,000 --> ")
    assert Path(files["poster"]).read_bytes()[:4] == b"\x89PNG"


def _ffmpeg_writing(target: Path) -> list[int]:
    folder = str(target.parent).encode()
    return processes(lambda cmdline: b"ffmpeg" in cmdline and folder in cmdline)


@pytest.mark.usefixtures("ray_session")
def test_cancelling_a_composition_task_leaves_no_ffmpeg_behind(media: dict) -> None:
    import time

    import ray

    from actors.remote import compose_scene_task

    long_scene = media["lines"] * 12  # about a minute of speech: seconds of encoding
    target = Path(media["root"]) / "cancelled" / "scene.mp4"
    ref = compose_scene_task.remote(long_scene, media["clip"], str(target))
    deadline = time.monotonic() + 60
    while not _ffmpeg_writing(target):
        assert time.monotonic() < deadline, "ffmpeg never started"
        time.sleep(0.05)
    ray.cancel(ref)
    with pytest.raises((ray.exceptions.TaskCancelledError, ray.exceptions.RayTaskError)):
        ray.get(ref, timeout=60)
    deadline = time.monotonic() + 10
    while _ffmpeg_writing(target):
        assert time.monotonic() < deadline, "an ffmpeg process outlived its cancelled task"
        time.sleep(0.05)
    assert not target.exists()  # nothing half-written
