"""Composing a scene and stitching an episode with ffmpeg (the ``imageio-ffmpeg`` wheel's binary).

A scene: its lines' speech laid end to end with short gaps, its clip looped or cut to that
length, ``Speaker: text`` subtitles burned in, H.264 video and AAC audio. An episode: its scenes
in order in one MP4 that plays in a browser, with ``episode.srt`` and ``poster.png`` beside it.

The timing and subtitle logic is pure; ``run_ffmpeg`` is the only I/O, and it kills its child if
the caller is interrupted (a cancelled Ray task), so no ffmpeg outlives its task.
"""

from __future__ import annotations

import subprocess
import tempfile
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
from PIL import ImageFont

from pipelines.screenplay import write_atomic

GAP_S = 0.35  # silence between two lines
WIDTH, HEIGHT, FPS = 1280, 720, 24
AUDIO_RATE = 24_000
FONT_NAME = "Aileron"  # Pillow's embedded font, written out for libass: no system font needed


@dataclass(frozen=True)
class Line:
    speaker: str
    text: str
    audio: str  # path of a WAV file


@dataclass(frozen=True)
class Cue:
    start_s: float
    end_s: float
    text: str


def wav_seconds(path: str) -> float:
    with wave.open(path) as file:
        return file.getnframes() / file.getframerate()


def cues(lines: Sequence[Line], durations: Sequence[float], gap_s: float = GAP_S,
         offset_s: float = 0.0) -> list[Cue]:
    """Each line's subtitle, shown while it is spoken; lines follow each other after a gap."""
    out, at = [], offset_s
    for line, seconds in zip(lines, durations, strict=True):
        out.append(Cue(at, at + seconds, f"{line.speaker}: {line.text}"))
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


class MediaError(RuntimeError):
    """ffmpeg could not make a file; the message carries the end of its error output."""


def run_ffmpeg(args: Sequence[str]) -> None:
    """Run ffmpeg; on any interruption kill it, so no child outlives the task."""
    process = subprocess.Popen([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel",
                                "error", "-y", *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, stderr = process.communicate()
    except BaseException:
        process.kill()
        process.wait()
        raise
    if process.returncode != 0:
        raise MediaError(f"ffmpeg failed: {stderr.decode(errors='replace')[-500:]}")


def pan_filter(width: int, height: int, seconds: float) -> str:
    """Fill the frame 20% larger than the clip, then pan across it over the clip's length."""
    return (f"scale={int(width * 1.2)}:{int(height * 1.2)}:force_original_aspect_ratio=increase,"
            f"crop={width}:{height}:x='(in_w-out_w)*t/{seconds}':y='(in_h-out_h)/2',"
            f"format=yuv420p")


def pan_clip(image: str, out_path: str, seconds: int = 4) -> str:
    """A clip made locally from a still: what a scene gets when no video provider is set."""
    target = Path(out_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial.mp4")
    try:
        run_ffmpeg(["-loop", "1", "-i", image, "-vf", pan_filter(WIDTH, HEIGHT, seconds),
                    "-t", str(seconds), "-r", str(FPS), "-c:v", "libx264", "-preset",
                    "veryfast", str(partial)])
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return str(target)


def compose_scene(lines: Sequence[Line], clip: str, out_path: str,
                  gap_s: float = GAP_S) -> dict[str, object]:
    """Write the scene's MP4; return its length and its subtitle cues (from 0)."""
    durations = [wav_seconds(line.audio) for line in lines]
    length = scene_length(durations, gap_s)
    target = Path(out_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".compose-") as work:
        folder = Path(work)
        subtitles = folder / "scene.srt"
        scene_cues = cues(lines, durations, gap_s)
        subtitles.write_text(srt(scene_cues), encoding="utf-8")
        inputs: list[str] = ["-stream_loop", "-1", "-i", clip]
        chains = []
        for i, line in enumerate(lines, start=1):
            inputs += ["-i", line.audio]
            chains.append(f"[{i}:a]aresample={AUDIO_RATE},aformat=channel_layouts=mono,"
                          f"apad=pad_dur={gap_s}[a{i}]")
        joined = "".join(f"[a{i}]" for i in range(1, len(lines) + 1))
        style = f"FontName={FONT_NAME},FontSize=20,Outline=2,MarginV=28"
        video = (f"[0:v]scale={WIDTH}:{HEIGHT}:force_original_aspect_ratio=decrease,"
                 f"pad={WIDTH}:{HEIGHT}:(ow-iw)/2:(oh-ih)/2,fps={FPS},"
                 f"subtitles={_filter_path(subtitles)}:fontsdir="
                 f"{_filter_path(font_dir(folder))}:force_style='{style}',format=yuv420p[v]")
        graph = ";".join([*chains, f"{joined}concat=n={len(lines)}:v=0:a=1[a]", video])
        partial = folder / "scene.mp4"
        run_ffmpeg([*inputs, "-filter_complex", graph, "-map", "[v]", "-map", "[a]",
                    "-t", f"{length:.3f}", "-c:v", "libx264", "-preset", "veryfast",
                    "-c:a", "aac", "-ar", str(AUDIO_RATE), "-movflags", "+faststart",
                    str(partial)])
        partial.replace(target)
    return {"path": str(target), "length_s": length,
            "cues": [(c.start_s, c.end_s, c.text) for c in scene_cues]}


def stitch(scenes: Sequence[dict[str, object]], poster_image: str | None,
           folder: str) -> dict[str, str]:
    """``episode.mp4`` (scenes in order), ``episode.srt`` and ``poster.png`` in ``folder``."""
    out = Path(folder)
    with tempfile.TemporaryDirectory(dir=out, prefix=".stitch-") as work:
        listing = Path(work) / "scenes.txt"
        listing.write_text("".join(f"file '{Path(str(s['path'])).resolve()}'\n" for s in scenes),
                           encoding="utf-8")
        partial = Path(work) / "episode.mp4"
        # Every scene was encoded alike, so the streams are joined without re-encoding.
        run_ffmpeg(["-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy",
                    "-movflags", "+faststart", str(partial)])
        partial.replace(out / "episode.mp4")
    all_cues, offset = [], 0.0
    for scene in scenes:
        for start, end, text in scene["cues"]:  # type: ignore[attr-defined]
            all_cues.append(Cue(start + offset, end + offset, text))
        offset += float(scene["length_s"])  # type: ignore[arg-type]
    write_atomic(out / "episode.srt", srt(all_cues))
    files = {"video": str(out / "episode.mp4"), "subtitles": str(out / "episode.srt")}
    if poster_image is not None:
        write_atomic(out / "poster.png", Path(poster_image).read_bytes())
        files["poster"] = str(out / "poster.png")
    return files
