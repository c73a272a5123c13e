"""Scenes composed and episodes stitched with the real ffmpeg, from real speech and clips."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imageio_ffmpeg
import pytest

from actors.media_tasks import ThreadMediaTasks
from local_server.images import scene_card
from local_server.speech import speaker as get_speaker
from pipelines.composition import (
    GAP_S,
    Line,
    compose_scene,
    pan_clip,
    run_ffmpeg,
    stitch,
    wav_seconds,
)
from pipelines.episode_folder import Artifact, EpisodeFolder
from pipelines.errors import DiskFull, EncoderCrashed, MediaError
from pipelines.settings import EncodingSettings
from pipelines.storage import SCRATCH_FOLDER, Storage
from tests.support import processes, small_disk, wait_for


def probe(path: Path) -> tuple[str, float]:
    info = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                          capture_output=True, text=True).stderr
    h, m, s = re.search(r"Duration: (\d+):(\d+):([\d.]+)", info).groups()
    return info, int(h) * 3600 + int(m) * 60 + float(s)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Speech, a picture and a clip in a local storage; lines, clip and image by key."""
    root = tmp_path_factory.mktemp("media")
    speaker = get_speaker()
    lines = []
    for i, (who, text, voice) in enumerate([
        ("Ada", "The lamp is still broken.", "nova"),
        ("Ben", "Then we light it by hand.", "onyx"),
        ("Ada", "Before the ferry comes in.", "nova"),
    ]):
        (root / f"line{i}.wav").write_bytes(speaker.wav(text, voice))
        lines.append(Line(who, text, f"line{i}.wav"))
    image = root / "scene.png"
    image.write_bytes(scene_card("The gallery. Wind and spray.", "1024x1024"))
    clip = root / "clip.mp4"  # a 2 s clip: shorter than the lines, so it must loop
    run_ffmpeg(["-loop", "1", "-i", str(image), "-t", "2", "-r", "24", "-vf",
                "scale=1280:720,format=yuv420p", "-c:v", "libx264", "-preset", "ultrafast",
                str(clip)])
    return {"storage": Storage(str(root)), "lines": lines, "clip": "clip.mp4",
            "image": "scene.png"}


def no_scratch_left(storage: Storage) -> bool:
    return not any(storage.path(SCRATCH_FOLDER).glob("*"))


def test_a_scene_has_its_lines_length_video_audio_and_subtitles(media: dict) -> None:
    storage = media["storage"]
    scene = compose_scene(storage, media["lines"], media["clip"], "scenes/scene1.mp4")
    expected = sum(wav_seconds(str(storage.path(line.audio))) for line in media["lines"])
    info, duration = probe(storage.path("scenes/scene1.mp4"))
    assert "Video: h264" in info and "Audio: aac" in info and "1280x720" in info
    assert duration == pytest.approx(expected + GAP_S * 3, rel=0.10)
    assert scene.cues[0].text == "Ada: The lamp is still broken."
    assert no_scratch_left(storage)  # its work folder is gone


def test_an_episode_is_its_scenes_in_order_with_subtitles_and_a_poster(media: dict) -> None:
    storage, folder = media["storage"], EpisodeFolder("ep")
    first = compose_scene(storage, media["lines"], media["clip"], folder.scene_video(1))
    second = compose_scene(storage, media["lines"][:1], media["clip"], folder.scene_video(2))
    storage.copy(media["image"], folder.image(2))
    made = stitch(storage, folder, [(1, first), (2, second)], poster_scene=2)
    assert set(made.artifacts) == {Artifact.VIDEO, Artifact.SUBTITLES, Artifact.POSTER}
    info, duration = probe(storage.path(folder.artifact(Artifact.VIDEO)))
    assert "Video: h264" in info and "Audio: aac" in info
    assert duration == pytest.approx(first.length_s + second.length_s, rel=0.10)
    subtitles = storage.read(folder.artifact(Artifact.SUBTITLES)).decode()
    assert subtitles.count(" --> ") == 4 and subtitles.startswith("1\n00:00:00,000 --> ")
    assert storage.read(folder.artifact(Artifact.POSTER)) == storage.read(folder.image(2))
    assert no_scratch_left(storage)


PREVIEW = EncodingSettings(width=320, height=180, fps=8, x264_preset="ultrafast")


def test_a_scene_follows_the_encoding_profile_and_reports_its_cpu(media: dict) -> None:
    storage = media["storage"]
    scene = compose_scene(storage, media["lines"], media["clip"], "preview/scene.mp4", PREVIEW)
    info, _ = probe(storage.path("preview/scene.mp4"))
    assert "320x180" in info and " 8 fps" in info and "Audio: aac" in info
    assert 0 < scene.cpu_s < 60 and scene.run_s > 0


def test_a_local_clip_pans_at_the_profiles_size_and_rate(media: dict) -> None:
    storage = media["storage"]
    made = pan_clip(storage, media["image"], "pan/clip.mp4", 2, PREVIEW)
    info, duration = probe(storage.path("pan/clip.mp4"))
    assert made.cpu_s > 0 and made.run_s > 0
    assert "320x180" in info and " 8 fps" in info and duration == pytest.approx(2.0, abs=0.2)


def test_run_ffmpeg_reports_its_childs_cpu_and_its_errors(tmp_path: Path) -> None:
    cpu_s = run_ffmpeg(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25:duration=2",
                        "-c:v", "libx264", "-preset", "medium", str(tmp_path / "t.mp4")])
    assert 0.05 < cpu_s < 60  # 50 frames at "medium": real work, measured on that child only
    with pytest.raises(MediaError, match=r"ffmpeg failed \(exit \d+\): (?s:.*)missing\.wav"):
        run_ffmpeg(["-i", str(tmp_path / "missing.wav"), str(tmp_path / "x.mp4")])


LONG_ENCODE = ["-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25:duration=600", "-c:v",
               "libx264", "-preset", "medium"]


def test_an_ffmpeg_killed_mid_work_is_a_crash_to_run_again(tmp_path: Path) -> None:
    """It used to be "ffmpeg failed:" with nothing after: a media error, never run again."""
    out = tmp_path / "killed.mp4"
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(run_ffmpeg, [*LONG_ENCODE, str(out)])
        [pid] = wait_for(lambda: _ffmpeg_writing(out), 30, "ffmpeg to start")
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(EncoderCrashed, match="killed by SIGKILL") as caught:
            running.result(timeout=30)
    assert caught.value.rerun


def test_an_ffmpeg_dies_with_the_worker_that_started_it(tmp_path: Path) -> None:
    """A killed Ray worker cleans nothing up: its encoder must not run on, unowned."""
    out = tmp_path / "orphan.mp4"
    worker = subprocess.Popen([sys.executable, "-c", "import sys; from pipelines.composition "
                               "import run_ffmpeg; run_ffmpeg(sys.argv[1:])", *LONG_ENCODE,
                               str(out)])
    try:
        wait_for(lambda: _ffmpeg_writing(out), 30, "ffmpeg to start")
        worker.kill()
        worker.wait()
        wait_for(lambda: not _ffmpeg_writing(out), 10, "the orphaned ffmpeg to end")
    finally:
        worker.kill()


def test_a_full_disk_is_said_so_and_leaves_no_scratch(media: dict, tmp_path: Path) -> None:
    """The stitch copies every scene once more: a disk that holds the scenes but not twice over
    fills up under it, with a real ENOSPC from the kernel."""
    storage, folder = media["storage"], EpisodeFolder("full")
    scenes = [(n, compose_scene(storage, media["lines"], media["clip"], folder.scene_video(n),
                                PREVIEW)) for n in (1, 2)]
    size = sum(storage.size(folder.scene_video(n)) for n, _ in scenes)
    with small_disk(tmp_path / "disk", size + size // 2 + 64 * 1024) as disk:
        on_disk = Storage(str(disk))
        for n, _ in scenes:
            on_disk.write(folder.scene_video(n), storage.read(folder.scene_video(n)))
        with pytest.raises(DiskFull, match="No space left on device"):
            stitch(on_disk, folder, scenes, poster_scene=None)
        assert no_scratch_left(on_disk)  # its scratch is gone, space given back
        assert not on_disk.exists(folder.artifact(Artifact.VIDEO))
        assert all(on_disk.size(folder.scene_video(n)) > 0 for n, _ in scenes)


async def test_thread_tasks_work_at_their_encoding_and_report_their_cpu(media: dict) -> None:
    storage, folder = media["storage"], EpisodeFolder("tasks")
    tasks = ThreadMediaTasks(storage, PREVIEW)
    clip = await tasks.pan(media["image"], folder.clip(1))
    scene = await tasks.compose(media["lines"], folder.clip(1), folder.scene_video(1))
    assert "320x180" in probe(storage.path(folder.clip(1)))[0]
    assert "320x180" in probe(storage.path(folder.scene_video(1)))[0]
    assert clip.cpu_s > 0 and scene.cpu_s > 0


def _ffmpeg_writing(target: Path) -> list[int]:
    """ffmpeg processes with a file in ``target``'s folder on their command line."""
    folder = str(target.parent).encode()
    return processes(lambda cmdline: b"ffmpeg" in cmdline.split(b"\0")[0] and folder in cmdline)


@pytest.mark.usefixtures("ray_session")
def test_cancelling_a_composition_task_leaves_no_ffmpeg_behind(media: dict) -> None:
    import ray

    from actors.remote import compose_scene_task

    storage = media["storage"]
    long_scene = media["lines"] * 12  # about a minute of speech: seconds of encoding
    ref = compose_scene_task.remote(storage, long_scene, media["clip"], "cancelled/scene.mp4")
    scratch = storage.path(SCRATCH_FOLDER) / "any"  # its work folder is in there
    wait_for(lambda: _ffmpeg_writing(scratch), 60, "ffmpeg to start")
    ray.cancel(ref)
    with pytest.raises((ray.exceptions.TaskCancelledError, ray.exceptions.RayTaskError)):
        ray.get(ref, timeout=60)
    wait_for(lambda: not _ffmpeg_writing(scratch), 10, "the cancelled task's ffmpeg to end")
    assert not storage.exists("cancelled/scene.mp4")  # nothing half-written
