"""The prior strategies with the media stages, beside Showrunner: `python -m bench.strategies
--media` (or `python -m bench.media`).

Every episode becomes an MP4: the script as in the text benchmark, then speech for every line,
a picture and a clip per scene (a clip is a provider job: create, poll, download), each scene
composed (lines, looped clip, subtitles) and the scenes stitched. Realistic latencies and limits,
time-scaled like the rest: speech 1.5 s and 300 RPM, images 6 s and 50 RPM, clips 60 s as a job
and at most 10 in flight, job creation limited to 60 RPM (Showrunner's gateway counts its polls
and downloads against that limit too). Composition is the same ffmpeg work for every strategy.

The workload is the text benchmark's, 12 episodes x 10 scenes, with 3 lines a scene. Every
strategy composes with the same light preview profile (``PREVIEW``: 320x180, 8 fps, x264
``ultrafast``), and the bundled server renders its clips at that size: at a real provider the
clips are rendered on the provider's machines, and at full size the H.264 encodes of 120 scenes
would measure this machine's two cores rather than the schedule. The lower bound still counts
the CPU seconds of the run's own compositions against the cluster's CPUs.

The prior strategies keep their own concurrency control and the SDK's default retries; where a
source used threads, the same limits are kept with asyncio semaphores (at these latencies the
difference is nil).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import openai
import ray
from rich.console import Console
from rich.table import Table

from bench.common import (
    REAL_JITTER_S,
    REAL_LATENCY_S,
    REAL_RPM,
    REAL_TPM,
    Episode,
    Row,
    ask,
    result_line,
    run_showrunner,
)
from local_server.process import LocalServer
from pipelines.composition import Line, compose_scene, stitch
from pipelines.episode_folder import EpisodeFolder
from pipelines.episode_state import EpisodeRecord
from pipelines.media_stages import clip_prompt, image_prompt, voice_for
from pipelines.models import EpisodeRequest
from pipelines.planner import NodeKind
from pipelines.report import SlotsBound, packed_s, slots_bound
from pipelines.settings import EncodingSettings, ImageSettings, TTSSettings, VideoSettings
from pipelines.storage import Storage

TTS = (1.5, 0.5, 300)  # latency s, jitter s, RPM
IMAGE = (6.0, 2.0, 50)
CLIP_JOB_S, CLIP_JOBS, VIDEO_RPM = 60.0, 10, 60  # polls count against the video limit too
# Every strategy's compositions, and the bundled server's clips: a preview, cheap in CPU.
PREVIEW = EncodingSettings(width=320, height=180, fps=8, x264_preset="ultrafast")


class Media:
    """What a prior strategy does for one scene's media, call by call, with the plain SDK."""

    def __init__(self, client: openai.AsyncOpenAI, root: Path, poll_s: float,
                 encoding: EncodingSettings = PREVIEW) -> None:
        self.client, self.poll_s = client, poll_s
        self.storage = Storage(str(root))
        self.encoding = encoding

    def folder(self, ep: Episode) -> EpisodeFolder:
        return EpisodeFolder(f"ep{ep.request.seed}")

    async def speech(self, ep: Episode, scene: int, line: int) -> None:
        spoken = ep.dialogues[scene].lines[line - 1]
        audio = await self.client.audio.speech.create(
            model="tts", voice=voice_for(ep.request, spoken.speaker),  # type: ignore
            input=spoken.text, response_format="wav")
        self.storage.write(self.folder(ep).speech(scene, line), audio.content)

    async def image(self, ep: Episode, scene: int) -> None:
        outline = ep.outline[0].scenes[scene - 1]
        result = await self.client.images.generate(
            model="img", prompt=image_prompt(ep.request, outline, ep.contents[scene]))
        self.storage.write(self.folder(ep).image(scene),
                           base64.b64decode(result.data[0].b64_json or ""))

    async def clip(self, ep: Episode, scene: int) -> None:
        image = self.storage.read(self.folder(ep).image(scene))
        job = await self.client.videos.create(
            prompt=clip_prompt(ep.outline[0].scenes[scene - 1], ep.contents[scene]),
            input_reference=("image.png", image, "image/png"), seconds="4")
        while job.status not in ("completed", "failed"):  # their sources poll every 2 s
            await asyncio.sleep(self.poll_s)
            job = await self.client.videos.retrieve(job.id)
        if job.status == "failed":
            raise RuntimeError(f"clip {job.id} failed")
        content = await self.client.videos.download_content(job.id)
        self.storage.write(self.folder(ep).clip(scene), content.content)

    async def visuals(self, ep: Episode, scene: int) -> None:
        await self.image(ep, scene)
        await self.clip(ep, scene)

    async def voice(self, ep: Episode, scene: int) -> None:
        for line in range(1, ep.request.lines_per_scene + 1):
            await self.speech(ep, scene, line)

    async def compose(self, ep: Episode, scene: int) -> None:
        folder = self.folder(ep)
        lines = [Line(x.speaker, x.text, folder.speech(scene, i))
                 for i, x in enumerate(ep.dialogues[scene].lines, start=1)]
        ep.scene_videos[scene] = await asyncio.to_thread(
            compose_scene, self.storage, lines, folder.clip(scene), folder.scene_video(scene),
            self.encoding)

    async def stitch(self, ep: Episode) -> None:
        videos = ep.scene_videos
        await asyncio.to_thread(stitch, self.storage, self.folder(ep), sorted(videos.items()),
                                1)


async def script_in_order(client: openai.AsyncOpenAI, ep: Episode) -> None:
    ep.outline.append(await ask(client, ep.outline_call()))
    for s in range(1, ep.request.scenes + 1):
        ep.contents[s] = await ask(client, ep.content_call(s))
        ep.dialogues[s] = await ask(client, ep.dialogue_call(s, [s - 1] if s > 1 else []))


def scenes(ep: Episode) -> range:
    return range(1, ep.request.scenes + 1)


async def sequential(client: openai.AsyncOpenAI, m: Media, ep: Episode) -> None:
    await script_in_order(client, ep)
    for s in scenes(ep):
        await m.voice(ep, s)
        await m.visuals(ep, s)
        await m.compose(ep, s)
    await m.stitch(ep)


async def semaphore_of_3(client: openai.AsyncOpenAI, m: Media, ep: Episode) -> None:
    ep.outline.append(await ask(client, ep.outline_call()))
    gate = asyncio.Semaphore(3)

    async def scene(s: int) -> None:
        async with gate:
            ep.contents[s] = await ask(client, ep.content_call(s))
            ep.dialogues[s] = await ask(client, ep.dialogue_call(s, []))
            await m.voice(ep, s)
            await m.visuals(ep, s)
            await m.compose(ep, s)

    await asyncio.gather(*(scene(s) for s in scenes(ep)))
    await m.stitch(ep)


async def batches_of_5(client: openai.AsyncOpenAI, m: Media, ep: Episode) -> None:
    ep.outline.append(await ask(client, ep.outline_call()))
    order = list(scenes(ep))
    for start in range(0, len(order), 5):
        batch = order[start:start + 5]
        before = list(range(1, batch[0]))

        async def scene(s: int, sees: list[int] = before) -> None:
            ep.contents[s] = await ask(client, ep.content_call(s))
            ep.dialogues[s] = await ask(client, ep.dialogue_call(s, sees))
            await m.voice(ep, s)
            await m.visuals(ep, s)
            await m.compose(ep, s)

        await asyncio.gather(*(scene(s) for s in batch))  # the barrier
    await m.stitch(ep)


async def thread_pool(client: openai.AsyncOpenAI, m: Media, ep: Episode) -> None:
    """The script in order, then the media calls 5 at a time, then the scenes composed."""
    await script_in_order(client, ep)
    gate = asyncio.Semaphore(5)

    async def limited(call: Awaitable[None]) -> None:
        async with gate:
            await call

    calls: list[Awaitable[None]] = [m.speech(ep, s, line) for s in scenes(ep)
                                    for line in range(1, ep.request.lines_per_scene + 1)]
    calls += [m.image(ep, s) for s in scenes(ep)]
    await asyncio.gather(*(limited(c) for c in calls))
    await asyncio.gather(*(limited(m.clip(ep, s)) for s in scenes(ep)))
    await asyncio.gather(*(limited(m.compose(ep, s)) for s in scenes(ep)))
    await m.stitch(ep)


async def parallel_clips(client: openai.AsyncOpenAI, m: Media, ep: Episode) -> None:
    """Everything in order except the clips, made in groups of 3."""
    await script_in_order(client, ep)
    for s in scenes(ep):
        await m.voice(ep, s)
        await m.image(ep, s)
    order = list(scenes(ep))
    for start in range(0, len(order), 3):
        await asyncio.gather(*(m.clip(ep, s) for s in order[start:start + 3]))
    for s in scenes(ep):
        await m.compose(ep, s)
    await m.stitch(ep)


async def hybrid_two_phase(client: openai.AsyncOpenAI, m: Media, ep: Episode) -> None:
    """Phase 1: content (and the pictures and clips it allows), 3 at a time. Phase 2, in order:
    each scene's dialogue, then its speech, serially."""
    ep.outline.append(await ask(client, ep.outline_call()))
    gate = asyncio.Semaphore(3)

    async def phase_one(s: int) -> None:
        async with gate:
            ep.contents[s] = await ask(client, ep.content_call(s))
            await m.visuals(ep, s)

    await asyncio.gather(*(phase_one(s) for s in scenes(ep)))
    for s in scenes(ep):
        ep.dialogues[s] = await ask(client, ep.dialogue_call(s, [s - 1] if s > 1 else []))
        await m.voice(ep, s)
    for s in scenes(ep):
        await m.compose(ep, s)
    await m.stitch(ep)


Strategy = Callable[[openai.AsyncOpenAI, Media, Episode], Awaitable[None]]
# Their clips one after another, episode after episode: minutes each at 12 x 10.
SLOW = ("sequential", "parallel clips", "hybrid two-phase")
PRIOR: list[tuple[str, str, Strategy, int]] = [  # name, continuity, function, episodes at once
    ("sequential", "chain", sequential, 1),
    ("semaphore of 3", "none", semaphore_of_3, 1),
    ("batches of 5", "batch:5", batches_of_5, 1),
    ("thread pool 3 episodes", "chain", thread_pool, 3),
    ("parallel clips", "chain", parallel_clips, 1),
    ("hybrid two-phase", "chain", hybrid_two_phase, 1),
]


async def run_prior(fn: Strategy, requests: list[EpisodeRequest], base_url: str, at_once: int,
                    poll_s: float) -> float:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="local")  # default retries: 2
    try:
        with tempfile.TemporaryDirectory() as out:
            m = Media(client, Path(out), poll_s)
            gate = asyncio.Semaphore(at_once)

            async def one(request: EpisodeRequest) -> None:
                async with gate:
                    await fn(client, m, Episode(request))

            started = time.perf_counter()
            await asyncio.gather(*(one(r) for r in requests))
            return time.perf_counter() - started
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.media",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=12)
    parser.add_argument("--scenes", type=int, default=10)
    parser.add_argument("--lines", type=int, default=3)
    parser.add_argument("--scale", type=float, default=40.0, help="time compression")
    parser.add_argument("--skip-slow", action="store_true",
                        help="leave out the one-episode-at-a-time runs of the designs that "
                             "make their clips one after another (minutes each)")
    parser.add_argument("--showrunner-only", action="store_true",
                        help="run Showrunner alone (for profiling; no comparison)")
    parser.add_argument("--profile", metavar="PATH",
                        help="write Showrunner's report and episode records there (JSON)")
    args = parser.parse_args(argv)
    k = args.scale
    requests = [
        EpisodeRequest(premise=f"Episode {i + 1} of a series about a night-shift radio station.",
                       scenes=args.scenes, lines_per_scene=args.lines, seed=i)
        for i in range(args.episodes)
    ]
    server_flags = dict(
        latency_scale=1 / k, llm_latency=REAL_LATENCY_S, llm_jitter=REAL_JITTER_S,
        llm_rpm=REAL_RPM * k, llm_tpm=REAL_TPM * k, tts_latency=TTS[0], tts_jitter=TTS[1],
        tts_rpm=TTS[2] * k, image_latency=IMAGE[0], image_jitter=IMAGE[1],
        image_rpm=IMAGE[2] * k, video_job_s=CLIP_JOB_S, video_max_jobs=CLIP_JOBS,
        video_rpm=VIDEO_RPM * k, video_render_size=f"{PREVIEW.width}x{PREVIEW.height}",
        video_render_fps=PREVIEW.fps,
    )
    poll_s = 2.0 / k
    rows: list[Row] = []
    failures: list[tuple[str, str, str]] = []
    reports: dict[str, dict[str, Any]] = {}
    records: dict[str, Any] = {}
    jobs_s: dict[str, list[float]] = {}  # Showrunner's clip jobs' lengths, in the order drawn
    console = Console(stderr=True)
    ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        with LocalServer(**server_flags) as server:
            def rejected() -> int:
                return sum(e["rate_limited"] for e in server.stats().values())

            def measure(name: str, continuity: str, at_once: str, run: Callable[[], float],
                        prior: bool = True) -> None:
                server.reset_stats()
                try:
                    seconds = run()
                except Exception as err:  # a design that breaks under load is a result too
                    failures.append((name, at_once, f"{type(err).__name__}: {err}"[:90]))
                    console.print(f"  {name} ({at_once}): failed: {err!r:.200}")
                    return
                rows.append(Row(name, continuity, seconds, rejected(), at_once, prior))
                console.print(f"  {name} ({at_once}): {seconds:.2f} s")

            url = server.base_url
            for all_at_once in (False, True):
                for name, continuity, fn, at_once in PRIOR:
                    if args.showrunner_only or (
                            args.skip_slow and not all_at_once and name in SLOW):
                        continue
                    width = len(requests) if all_at_once else at_once
                    label = f"all {len(requests)}" if all_at_once else str(at_once)
                    measure(name, continuity, label, lambda f=fn, w=width: asyncio.run(
                        run_prior(f, requests, url, w, poll_s)))
            overrides = {
                "tts": TTSSettings(rpm=TTS[2] * k, timeout_s=60),
                "image": ImageSettings(rpm=IMAGE[2] * k, timeout_s=60),
                "video": VideoSettings(base_url=url, rpm=VIDEO_RPM * k, max_jobs=CLIP_JOBS,
                                       poll_initial_s=poll_s, poll_max_s=10.0 / k,
                                       timeout_s=60),
                "encoding": PREVIEW,
            }

            def showrunner() -> float:
                seconds, reports["chain"] = run_showrunner(
                    requests, url, REAL_RPM * k, REAL_TPM * k, "media", overrides, records)
                jobs_s["chain"] = server.stats()["video"]["jobs_s"]
                return seconds

            measure("Showrunner (chain)", "chain", f"all {len(requests)}", showrunner,
                    prior=False)
    finally:
        ray.shutdown()
    if args.profile and "chain" in reports:
        Path(args.profile).write_text(json.dumps(
            {"report": reports["chain"],
             "records": {i: r.model_dump(mode="json") for i, r in records.items()}}))
    if "chain" not in reports:
        raise SystemExit("Showrunner did not finish; no figures")
    lengths = jobs_s["chain"]
    bound = clip_jobs_bound(records.values(), lengths)
    # Looser forms of the same term, shown beside it: the cap alone at the nominal job length,
    # and the drawn lengths spread evenly over the cap (as if a job could be split).
    looser = {"the cap alone, nominal lengths": len(lengths) * CLIP_JOB_S / args.scale / CLIP_JOBS,
              "drawn lengths ÷ the cap, with head and tail":
                  bound.head_s + sum(lengths) / CLIP_JOBS + bound.tail_s}
    print(json.dumps(summarise_media(rows, failures, reports["chain"], bound, looser, args)),
          flush=True)


def clip_jobs_bound(records: Iterable[EpisodeRecord], lengths: list[float]) -> SlotsBound:
    """Seconds the provider's cap of clip jobs at once forces on the run: no clip can start
    before a scene's picture exists; then the jobs, with the lengths the server drew for them
    in the order it drew them, each start the moment one of the cap's places is free, losing
    nothing between jobs; after the last job the least an episode still needs (its scene's
    composition, the stitch) follows.

    The run report's own ``video jobs`` term is looser: a client sees a job running only until
    its last poll before the end, and not the order the provider drew the lengths in, so it
    spreads what it saw evenly over the cap."""
    return slots_bound(records, NodeKind.CLIP, packed_s(lengths, CLIP_JOBS))


def summarise_media(rows: list[Row], failures: list[tuple[str, str, str]],
                    report: dict[str, Any], jobs: SlotsBound, looser: dict[str, float],
                    args: argparse.Namespace) -> dict[str, Any]:
    """The table (stderr) and the JSON line's figures."""
    totals = report["totals"]
    terms = {**totals["bounds_s"], "video jobs, as drawn": jobs.total_s}
    bottleneck = max(terms, key=lambda t: terms[t])
    bound = terms[bottleneck]
    showrunner = next(r for r in rows if not r.prior)
    as_written = [r for r in rows if r.prior and not r.episodes_at_once.startswith("all")]
    best = min(as_written, key=lambda r: r.seconds) if as_written else None
    table = Table(title=(
        f"{args.episodes} episodes x {args.scenes} scenes x {args.lines} lines, time-scaled "
        f"1/{args.scale:g}: speech {TTS[0]:g} s / {TTS[2]} RPM, images {IMAGE[0]:g} s / "
        f"{IMAGE[2]} RPM, clips {CLIP_JOB_S:g} s jobs, {CLIP_JOBS} at once, {VIDEO_RPM} RPM; "
        f"every strategy encodes {PREVIEW.width}x{PREVIEW.height} at {PREVIEW.fps} fps, "
        f"x264 {PREVIEW.x264_preset}"))
    for column in ("strategy", "episodes at once", "continuity", "makespan s",
                   "Showrunner faster by", "429s received"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for r in rows:
        faster = f"{r.seconds / showrunner.seconds:.2f}x" if r.prior else ""
        table.add_row(r.name, r.episodes_at_once, r.continuity,
                      f"{r.seconds:.2f}", faster, str(r.server_429))
    for name, at_once, reason in failures:
        table.add_row(name, at_once, "", f"failed: {reason}", "", "")
    console = Console(stderr=True, width=160)
    console.print(table)
    shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(terms.items(), key=lambda kv: -kv[1])
                      if v > 0)
    console.print(
        f"Showrunner's lower bound {bound:.2f} s, set by {bottleneck} (terms, s: {shown}); "
        f"its compositions took {totals['cpu_s']:.1f} CPU-s on {totals['cpus']:g} CPUs. The "
        f"run report's terms, plus the provider's {CLIP_JOBS} clip jobs at once: the earliest "
        f"a picture exists ({jobs.head_s:.2f}) + the jobs as drawn, packed on {CLIP_JOBS} places "
        f"with no gap ({jobs.spread_s:.2f}) + the least that follows a clip ({jobs.tail_s:.2f}).")
    for name, seconds in looser.items():
        console.print(f"  looser, {name}: {seconds:.2f} s (Showrunner ÷ it: "
                      f"{showrunner.seconds / seconds:.3f})")
    return result_line(showrunner, bound, best, rows)


if __name__ == "__main__":
    main()
