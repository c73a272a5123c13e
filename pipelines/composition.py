"""Composing a scene and stitching an episode with ffmpeg (the ``imageio-ffmpeg`` wheel's binary).

A scene: its lines' speech laid end to end with short gaps, its clip looped or cut to that
length, ``Speaker: text`` subtitles burned in, H.264 video and AAC audio. An episode: its scenes
in order in one MP4 that plays in a browser, with ``episode.srt`` and ``poster.png`` beside it.

How big and how fast is the caller's ``EncodingSettings`` (``settings.encoding``): 1280x720 at
24 fps by default, a small ``ultrafast`` profile for previews and benchmarks.

The timing and subtitle logic is pure; ``run_ffmpeg`` is the only I/O. It kills its child if the
caller is interrupted (a cancelled Ray task), and the child dies with its parent (a killed
worker), so no ffmpeg outlives its task; a child killed by a signal is ``EncoderCrashed``, which
the executor runs again, and a full disk is ``DiskFull``. It returns the
CPU seconds that child used, read from the child's own resource usage (``os.wait4``): the
process-wide ``RUSAGE_CHILDREN`` would mix in every other thread's children. Compositions and
local clips report them (``LocalWork.cpu_s``) so the run report can say how much of the run the
CPUs alone force.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
from PIL import ImageFont
from pydantic import BaseModel, ConfigDict

from pipelines.episode_folder import Artifact, EpisodeFolder
from pipelines.errors import DiskFull, EncoderCrashed, MediaError, NodeFailed
from pipelines.files import write_atomic
from pipelines.settings import EncodingSettings
from pipelines.storage import Storage

GAP_S = 0.35  # silence between two lines
DEFAULT_ENCODING = EncodingSettings()  # 1280x720, 24 fps, x264 veryfast
AUDIO_RATE = 24_000
FONT_NAME = "Aileron"  # Pillow's embedded font, written out for libass: no system font needed


@dataclass(frozen=True)
class Line:
    speaker: str
    text: str
    audio: str  # the storage key of a WAV file


_RESULT = ConfigDict(frozen=True, extra="forbid")


class Cue(BaseModel):
    """One subtitle: shown from ``start_s`` to ``end_s``."""

    model_config = _RESULT

    start_s: float
    end_s: float
    text: str


class LocalWork(BaseModel):
    """What a file made here took: ``cpu_s``, the CPU seconds of its ffmpeg work, which the run
    report sets against the cluster's CPUs; ``run_s``, from start to end of the call, without any
    time spent queued for a CPU before it."""

    model_config = _RESULT

    cpu_s: float = 0.0
    run_s: float = 0.0


class ComposedScene(LocalWork):
    """A composed scene: its length and its subtitle cues, from 0."""

    length_s: float
    cues: tuple[Cue, ...]


class StitchedEpisode(BaseModel):
    """The artifacts the stitch wrote into the episode's folder."""

    model_config = _RESULT

    artifacts: tuple[Artifact, ...]


def wav_seconds(path: str) -> float:
    with wave.open(path) as file:
        return file.getnframes() / file.getframerate()


def cues(lines: Sequence[Line], durations: Sequence[float], gap_s: float = GAP_S,
         offset_s: float = 0.0) -> list[Cue]:
    """Each line's subtitle, shown while it is spoken; lines follow each other after a gap."""
    out, at = [], offset_s
    for line, seconds in zip(lines, durations, strict=True):
        out.append(Cue(start_s=at, end_s=at + seconds, text=f"{line.speaker}: {line.text}"))
        at += seconds + gap_s
    return out


def scene_length(durations: Sequence[float], gap_s: float = GAP_S) -> float:
    return sum(durations) + gap_s * len(durations)  # a gap after the last line too: a breath


def srt(cue_list: Sequence[Cue]) -> str:
    def stamp(seconds: float) -> str:
        ms = round(seconds * 1000)
        hours, ms = divmod(ms, 3_600_000)
        minutes, ms = divmod(ms, 60_000)
        secs, ms = divmod(ms, 1000)
        return f"{hours:02d}:{minutes:02d}:{secs:02d},{ms:03d}"

    blocks = [f"{i}\n{stamp(c.start_s)} --> {stamp(c.end_s)}\n{c.text}\n"
              for i, c in enumerate(cue_list, start=1)]
    return "\n".join(blocks)


def font_dir(root: Path) -> Path:
    folder = root / "fonts"
    target = folder / f"{FONT_NAME}-Regular.ttf"
    if not target.exists():
        font = ImageFont.load_default(size=20)
        data = font.path.getvalue()  # type: ignore[union-attr]
        write_atomic(target, data)
    return folder


def _filter_path(path: Path) -> str:
    # ffmpeg filter arguments treat ':' and '\'' specially.
    return str(path).replace("\\", "\\\\").replace(":", "\\:").replace("'", "\\'")


# Encodes are batch work: the event loops that keep provider jobs moving (provider actors, the
# coordinator, an HTTP replica) share these CPUs and must not wait behind them.
ENCODE_NICENESS = 10
FFMPEG_POLL_S = 0.05  # how often a running ffmpeg is looked at (a cancel is seen within this)


def lower_priority(pid: int) -> None:
    """Run an encoder child below the processes that schedule provider calls."""
    if not hasattr(os, "setpriority"):  # Windows
        return
    with contextlib.suppress(OSError):  # ended already, or not allowed here
        # Never raise it: a task already running niced keeps its lower priority.
        niceness = max(os.getpriority(os.PRIO_PROCESS, pid), ENCODE_NICENESS)
        os.setpriority(os.PRIO_PROCESS, pid, niceness)


PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def _die_with_parent() -> None:
    """In the child, before ffmpeg starts: be killed when the worker that started it dies.
    Only a C call here: between fork and exec nothing else is safe in a threaded process."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _failure(returncode: int, stderr: bytes) -> NodeFailed:
    """What an ffmpeg that did not succeed means: killed, out of space, or refused its work."""
    said = stderr.decode(errors="replace").strip()[-500:]
    if returncode < 0:
        return EncoderCrashed(f"ffmpeg was killed by {signal.Signals(-returncode).name}")
    if "No space left on device" in said or "Disk quota exceeded" in said:
        return DiskFull(f"ffmpeg: {said}")
    return MediaError(f"ffmpeg failed (exit {returncode}): {said or 'no reason given'}")


def run_ffmpeg(args: Sequence[str]) -> float:
    """Run ffmpeg and return the CPU seconds (user + system) it used; on any interruption kill
    it, so no child outlives the task."""
    process = subprocess.Popen([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel",
                                "error", "-y", *args], preexec_fn=_die_with_parent,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    errors: list[bytes] = []
    assert process.stderr is not None
    # Its error output is read on a thread, and its end polled for: a Ray task is cancelled by
    # an interrupt that reaches the main thread only when it runs Python code, never while it
    # blocks in a read or a wait. Polled, a cancelled task kills ffmpeg within a poll.
    reader = threading.Thread(target=lambda: errors.append(process.stderr.read()), daemon=True)
    reader.start()
    try:
        lower_priority(process.pid)
        while True:
            # Reap it ourselves: wait4 returns this child's own usage, which Popen.wait discards.
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(FFMPEG_POLL_S)
        process.returncode = os.waitstatus_to_exitcode(status)
        reader.join()
        process.stderr.close()
        stderr = errors[0] if errors else b""
    except BaseException:
        process.kill()
        process.wait()
        raise
    if process.returncode != 0:
        raise _failure(process.returncode, stderr)
    return usage.ru_utime + usage.ru_stime


PREVIEW_PRESETS = ("ultrafast", "superfast")
# One thread for every decoder, filter graph and encoder: each composition is a task holding one
# CPU (``num_cpus=1`` in Ray), and ffmpeg's own threads would run on CPUs other tasks hold.
ONE_THREAD = ("-threads", "1")


def x264(encoding: EncodingSettings) -> list[str]:
    return ["-c:v", "libx264", "-preset", encoding.x264_preset]


def aac(encoding: EncodingSettings) -> list[str]:
    """AAC at the scene's sample rate. With a preview preset, ffmpeg's ``fast`` coder: a third
    of the default (``twoloop``) coder's CPU, which otherwise costs more than a small video."""
    coder = ["-aac_coder", "fast"] if encoding.x264_preset in PREVIEW_PRESETS else []
    return ["-c:a", "aac", *coder, "-ar", str(AUDIO_RATE)]


def pan_filter(width: int, height: int, seconds: float, fps: int) -> str:
    """From one still: fill the frame 20% larger than the clip, then pan across it over the
    clip's length. The still is decoded and scaled once and its frame repeated (``-loop 1`` on
    the input would decode and scale it again for every frame, which costs most of the work)."""
    return (f"scale={int(width * 1.2)}:{int(height * 1.2)}:force_original_aspect_ratio=increase,"
            f"loop=loop=-1:size=1,setpts=N/{fps}/TB,"
            f"crop={width}:{height}:x='(in_w-out_w)*t/{seconds}':y='(in_h-out_h)/2',"
            f"format=yuv420p")


def pan_clip(storage: Storage, image: str, out: str, seconds: int = 4,
             encoding: EncodingSettings = DEFAULT_ENCODING) -> LocalWork:
    """A clip made here from the still ``image`` (a key), uploaded as ``out``: what a scene
    gets when no video provider is set."""
    started = time.monotonic()
    with storage.scratch(out, "pan") as work:
        partial = work / "clip.mp4"
        cpu_s = run_ffmpeg(["-filter_threads", "1", *ONE_THREAD, "-i",
                            str(storage.fetch(image, work)), "-vf",
                            pan_filter(encoding.width, encoding.height, seconds, encoding.fps),
                            "-t", str(seconds), "-r", str(encoding.fps), *x264(encoding),
                            *ONE_THREAD, str(partial)])
        storage.upload(partial, out)
    return LocalWork(cpu_s=round(cpu_s, 4), run_s=round(time.monotonic() - started, 4))


def compose_scene(storage: Storage, lines: Sequence[Line], clip: str, out: str,
                  encoding: EncodingSettings = DEFAULT_ENCODING,
                  gap_s: float = GAP_S) -> ComposedScene:
    """Compose the scene's MP4 from its lines' speech and its clip (keys), uploaded as ``out``;
    return its length, its subtitle cues and what it took."""
    started = time.monotonic()
    width, height, fps = encoding.width, encoding.height, encoding.fps
    with storage.scratch(out, "compose") as folder:
        audio = [str(storage.fetch(line.audio, folder)) for line in lines]
        durations = [wav_seconds(path) for path in audio]
        length = scene_length(durations, gap_s)
        subtitles = folder / "scene.srt"
        scene_cues = cues(lines, durations, gap_s)
        subtitles.write_text(srt(scene_cues), encoding="utf-8")
        inputs: list[str] = ["-filter_complex_threads", "1", "-stream_loop", "-1", *ONE_THREAD,
                             "-i", str(storage.fetch(clip, folder))]
        chains = []
        for i, path in enumerate(audio, start=1):
            inputs += [*ONE_THREAD, "-i", path]
            chains.append(f"[{i}:a]aresample={AUDIO_RATE},aformat=channel_layouts=mono,"
                          f"apad=pad_dur={gap_s}[a{i}]")
        joined = "".join(f"[a{i}]" for i in range(1, len(lines) + 1))
        style = f"FontName={FONT_NAME},FontSize=20,Outline=2,MarginV=28"
        # Subtitle sizes are in libass's script units, which scale with the frame's height.
        video = (f"[0:v]scale={width}:{height}:force_original_aspect_ratio=decrease,"
                 f"pad={width}:{height}:(ow-iw)/2:(oh-ih)/2,fps={fps},"
                 f"subtitles={_filter_path(subtitles)}:fontsdir="
                 f"{_filter_path(font_dir(folder))}:force_style='{style}',format=yuv420p[v]")
        graph = ";".join([*chains, f"{joined}concat=n={len(lines)}:v=0:a=1[a]", video])
        partial = folder / "scene.mp4"
        cpu_s = run_ffmpeg([*inputs, "-filter_complex", graph, "-map", "[v]", "-map", "[a]",
                            "-t", f"{length:.3f}", *x264(encoding), *aac(encoding),
                            *ONE_THREAD, "-movflags", "+faststart", str(partial)])
        storage.upload(partial, out)
    return ComposedScene(length_s=length, cues=tuple(scene_cues), cpu_s=round(cpu_s, 4),
                         run_s=round(time.monotonic() - started, 4))


def stitch(storage: Storage, folder: EpisodeFolder,
           scenes: Sequence[tuple[int, ComposedScene]], poster_scene: int | None
           ) -> StitchedEpisode:
    """The episode's video (its scenes in order), subtitles and poster (the picture of
    ``poster_scene``) in its folder."""
    video = folder.artifact(Artifact.VIDEO)
    with storage.scratch(video, "stitch") as work:
        listing = work / "scenes.txt"
        parts = [storage.fetch(folder.scene_video(s), work).resolve() for s, _ in scenes]
        listing.write_text("".join(f"file '{part}'\n" for part in parts), encoding="utf-8")
        partial = work / Artifact.VIDEO.value
        # Every scene was encoded alike, so the streams are joined without re-encoding.
        run_ffmpeg(["-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy",
                    "-movflags", "+faststart", str(partial)])
        storage.upload(partial, video)
    all_cues, offset = [], 0.0
    for _, scene in scenes:
        all_cues += [Cue(start_s=c.start_s + offset, end_s=c.end_s + offset, text=c.text)
                     for c in scene.cues]
        offset += scene.length_s
    storage.write(folder.artifact(Artifact.SUBTITLES), srt(all_cues))
    made = [Artifact.VIDEO, Artifact.SUBTITLES]
    if poster_scene is not None:
        storage.copy(folder.image(poster_scene), folder.artifact(Artifact.POSTER))
        made.append(Artifact.POSTER)
    return StitchedEpisode(artifacts=tuple(made))
