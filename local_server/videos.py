"""Offline video jobs: ``queued`` → ``in_progress`` (with progress) → ``completed`` or ``failed``,
each clip a slow pan across the reference image (or a scene card of the prompt), rendered by the
ffmpeg that the ``imageio-ffmpeg`` wheel ships.

Jobs run as tasks of the server's event loop; the ffmpeg child of a job that is cancelled or
whose server stops is killed, so no process outlives its job.

A real provider renders on its own machines; this server renders on the caller's. For benchmarks
on a small machine, ``--video-render-size`` and ``--video-render-fps`` make every clip small and
cheap (whatever size the job asks for), so the server does not take the CPUs being measured.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imageio_ffmpeg

from local_server.background import in_background, lower_priority
from local_server.config import parse_size
from local_server.images import scene_card

SECONDS = ("4", "8", "12")
SIZES = ("1280x720", "720x1280", "1792x1024", "1024x1792")
FPS = 24


def pan_filter(width: int, height: int, seconds: float, fps: int) -> str:
    """ffmpeg filter, from one still: fill the frame 20% larger than the clip, then pan across it
    over the clip's length; the still is scaled once and its frame repeated. (The same move as
    ``pipelines.composition``'s local clips; kept here so the server depends on nothing of the
    pipeline.)"""
    return (f"scale={int(width * 1.2)}:{int(height * 1.2)}:force_original_aspect_ratio=increase,"
            f"loop=loop=-1:size=1,setpts=N/{fps}/TB,"
            f"crop={width}:{height}:x='(in_w-out_w)*t/{seconds}':y='(in_h-out_h)/2',"
            f"format=yuv420p")


@dataclass
class Job:
    id: str
    model: str
    prompt: str
    seconds: str
    size: str
    created_at: int
    status: str = "queued"
    progress: int = 0
    completed_at: int | None = None
    error: dict[str, str] | None = None
    path: Path | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    # Set while generating: progress is read off the clock at each poll, as a provider's is.
    started_s: float | None = None
    duration_s: float = 0.0

    def view(self) -> dict[str, Any]:
        progress = self.progress
        if self.status == "in_progress" and self.started_s is not None:
            done = (time.monotonic() - self.started_s) / max(self.duration_s, 1e-9)
            progress = max(progress, min(99, int(100 * done)))
        return {
            "id": self.id, "object": "video", "model": self.model, "status": self.status,
            "progress": progress, "created_at": self.created_at,
            "completed_at": self.completed_at, "expires_at": None, "prompt": self.prompt,
            "seconds": self.seconds, "size": self.size, "error": self.error,
            "remixed_from_video_id": None,
        }


class VideoJobs:
    """The jobs of one server, their files in one temporary folder."""

    def __init__(self, rng: random.Random, fail_rate: float, render_size: str | None = None,
                 render_fps: int = FPS) -> None:
        """``render_size`` (``"WxH"``): render every clip this size instead of the job's;
        ``render_fps``: frames per second of the rendered clips."""
        self.render_size = None if render_size is None else parse_size(render_size)
        self.render_fps = render_fps
        self.jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self._rng = rng
        self._fail_rate = fail_rate
        self._folder = tempfile.TemporaryDirectory(prefix="showrunner-videos-")

    @property
    def running(self) -> int:
        return sum(1 for j in self.jobs.values() if j.status in ("queued", "in_progress"))

    def create(self, model: str, prompt: str, seconds: str, size: str, image: bytes | None,
               duration_s: float) -> Job:
        job = Job(f"video_{next(self._ids):08x}", model, prompt, seconds, size, int(time.time()))
        self.jobs[job.id] = job
        job.task = asyncio.create_task(self._run(job, image, duration_s))
        return job

    async def _run(self, job: Job, image: bytes | None, duration_s: float) -> None:
        started = time.monotonic()
        job.started_s, job.duration_s = started, duration_s
        try:
            await asyncio.sleep(duration_s * 0.1)  # queued for a while, as real jobs are
            job.status = "in_progress"
            if self._rng.random() < self._fail_rate:
                await asyncio.sleep(duration_s * 0.3)
                job.status, job.error = "failed", {
                    "code": "video_generation_failed",
                    "message": "The local server failed this clip on purpose (--video-fail-rate).",
                }
                return
            job.path = await self._render(job, image)
            # Report progress until the simulated generation time has passed.
            while (elapsed := time.monotonic() - started) < duration_s:
                job.progress = min(99, int(100 * elapsed / max(duration_s, 1e-9)))
                await asyncio.sleep(min(0.25, duration_s - elapsed))
            job.status, job.progress, job.completed_at = "completed", 100, int(time.time())
        except asyncio.CancelledError:
            job.status, job.error = "failed", {"code": "cancelled", "message": "Server stopped."}
            raise
        except (OSError, RuntimeError) as err:
            job.status, job.error = "failed", {"code": "render_failed", "message": str(err)[:300]}

    async def _render(self, job: Job, image: bytes | None) -> Path:
        width, height = self.render_size or parse_size(job.size)
        folder = Path(self._folder.name)
        source = folder / f"{job.id}.png"
        source.write_bytes(image or await in_background(scene_card, job.prompt))
        target = folder / f"{job.id}.mp4"
        seconds = int(job.seconds)
        vf = pan_filter(width, height, seconds, self.render_fps)
        process = await asyncio.create_subprocess_exec(
            imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
            "-filter_threads", "1", "-i", str(source), "-vf", vf, "-t", str(seconds),
            "-r", str(self.render_fps), "-c:v", "libx264", "-preset", "ultrafast",
            "-threads", "1", "-movflags", "+faststart", str(target),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        try:
            lower_priority(process.pid)
            _, stderr = await process.communicate()
        except asyncio.CancelledError:
            process.kill()
            await process.wait()
            raise
        if process.returncode != 0:
            raise RuntimeError(f"ffmpeg failed: {stderr.decode(errors='replace')[-300:]}")
        return target

    async def close(self) -> None:
        tasks = [j.task for j in self.jobs.values() if j.task and not j.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._folder.cleanup()
