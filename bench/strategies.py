"""The prior strategies side by side with Showrunner, in one run, on one workload.

    python -m bench.strategies [--episodes 12] [--scenes 10] [--scale 40]

The workload is modelled on a real provider — LLM latency 8 s ± 2 s, 500 RPM, 200,000 TPM — and
run time-scaled by ``--scale`` on the bundled local server (at 40: 200 ms ± 50 ms, 20,000 RPM,
8,000,000 TPM), which enforces those limits like OpenAI. Every strategy writes the same episodes
with the same prompts: an outline, then each scene's content and dialogue.

The prior strategies run as their sources write them (``shared/PRIOR-ART.md``): their own
concurrency control, the SDK's default retries (2), no shared limiter, one episode at a time
unless the source says otherwise. Each is also run with every episode at once. The thread-pool
design parallelises *media* calls within an episode (speech, images); its script is written in
order, so in this text-only workload its in-episode pool has nothing to do. Showrunner runs the
real thing: provider actor, coordinator actor, the episode graph, every episode admitted at once.

Prints a table, then one JSON line. Not a test: these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import ray
from rich.console import Console
from rich.table import Table

from local_server.process import LocalServer
from pipelines import launcher
from pipelines.models import Continuity, EpisodeRequest, SceneDialogue
from pipelines.planner import plan_episode
from pipelines.report import build_report
from pipelines.settings import LLMSettings, Settings
from pipelines.stages import StageCall, content_call, dialogue_call, outline_call

REAL_LATENCY_S, REAL_JITTER_S, REAL_RPM, REAL_TPM = 8.0, 2.0, 500, 200_000


# -- what every prior strategy does for one episode, call by call ------------------------------


@dataclass
class Episode:
    """One episode being written by a prior strategy: the same prompts Showrunner sends."""

    request: EpisodeRequest
    outline: list[Any] = field(default_factory=list)
    contents: dict[int, Any] = field(default_factory=dict)
    dialogues: dict[int, SceneDialogue] = field(default_factory=dict)
    scene_videos: dict[int, dict[str, Any]] = field(default_factory=dict)  # media runs only

    def outline_call(self) -> StageCall[Any]:
        return outline_call(self.request, range(1, self.request.scenes + 1), [])

    def content_call(self, scene: int) -> StageCall[Any]:
        return content_call(self.request, self.outline[0].scenes, scene)

    def dialogue_call(self, scene: int, sees: list[int]) -> StageCall[Any]:
        earlier = {s: self.dialogues[s] for s in sees if s in self.dialogues}
        return dialogue_call(self.request, self.outline[0].scenes[scene - 1],
                             self.contents[scene], earlier)


async def ask(client: openai.AsyncOpenAI, call: StageCall[Any]) -> Any:
    completion = await client.chat.completions.create(
        model="bench", messages=call.messages,  # type: ignore[arg-type]
        response_format=call.response_format, max_tokens=call.max_tokens,  # type: ignore
    )
    return call.parse(completion.choices[0].message.content or "")


def ask_sync(client: openai.OpenAI, call: StageCall[Any]) -> Any:
    completion = client.chat.completions.create(
        model="bench", messages=call.messages,  # type: ignore[arg-type]
        response_format=call.response_format, max_tokens=call.max_tokens,  # type: ignore
    )
    return call.parse(completion.choices[0].message.content or "")


async def scene_in_order(client: openai.AsyncOpenAI, ep: Episode, scene: int,
                         sees: list[int]) -> None:
    ep.contents[scene] = await ask(client, ep.content_call(scene))
    ep.dialogues[scene] = await ask(client, ep.dialogue_call(scene, sees))


# -- the prior strategies -------------------------------------------------------------------


async def sequential(client: openai.AsyncOpenAI, ep: Episode) -> None:
    ep.outline.append(await ask(client, ep.outline_call()))
    for s in range(1, ep.request.scenes + 1):
        await scene_in_order(client, ep, s, [s - 1] if s > 1 else [])


async def semaphore_of_3(client: openai.AsyncOpenAI, ep: Episode) -> None:
    """Every scene's coroutine under Semaphore(3), gathered: no scene sees another's lines."""
    ep.outline.append(await ask(client, ep.outline_call()))
    gate = asyncio.Semaphore(3)

    async def scene(s: int) -> None:
        async with gate:
            await scene_in_order(client, ep, s, [])

    await asyncio.gather(*(scene(s) for s in range(1, ep.request.scenes + 1)))


def batches_of_5(client: openai.OpenAI, ep: Episode) -> None:
    """Batches of 5 scenes on a thread pool, a barrier between batches; a batch sees every
    scene finished before it."""
    ep.outline.append(ask_sync(client, ep.outline_call()))
    scenes = list(range(1, ep.request.scenes + 1))
    with ThreadPoolExecutor(max_workers=5) as pool:
        for start in range(0, len(scenes), 5):
            batch = scenes[start:start + 5]
            done_before = list(range(1, batch[0]))

            def scene(s: int, sees: list[int] = done_before) -> None:
                ep.contents[s] = ask_sync(client, ep.content_call(s))
                ep.dialogues[s] = ask_sync(client, ep.dialogue_call(s, sees))

            list(pool.map(scene, batch))  # the barrier: the whole batch, then the next


class RateLimiter:
    """The thread-pool design's limiter: one per process, minimum spacing between calls."""

    def __init__(self, rpm: float) -> None:
        self.interval = 60.0 / rpm
        self.lock = threading.Lock()
        self.next_at = 0.0

    def wait(self) -> None:
        with self.lock:
            now = time.monotonic()
            at = max(now, self.next_at)
            self.next_at = at + self.interval
        time.sleep(max(0.0, at - now))


def thread_pool_episode(client: openai.OpenAI, ep: Episode, limiter: RateLimiter) -> None:
    """The script in order (its 5-call pool is for speech and images), each call limited."""
    limiter.wait()
    ep.outline.append(ask_sync(client, ep.outline_call()))
    for s in range(1, ep.request.scenes + 1):
        limiter.wait()
        ep.contents[s] = ask_sync(client, ep.content_call(s))
        limiter.wait()
        ep.dialogues[s] = ask_sync(client, ep.dialogue_call(s, [s - 1] if s > 1 else []))


async def hybrid_two_phase(client: openai.AsyncOpenAI, ep: Episode) -> None:
    """Phase 1: every scene's content, 3 at a time. Phase 2: dialogue in order, serially."""
    ep.outline.append(await ask(client, ep.outline_call()))
    gate = asyncio.Semaphore(3)

    async def content(s: int) -> None:
        async with gate:
            ep.contents[s] = await ask(client, ep.content_call(s))

    await asyncio.gather(*(content(s) for s in range(1, ep.request.scenes + 1)))
    for s in range(1, ep.request.scenes + 1):
        ep.dialogues[s] = await ask(client, ep.dialogue_call(s, [s - 1] if s > 1 else []))


# -- running them ---------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    continuity: str
    seconds: float
    server_429: int
    episodes_at_once: str
    prior: bool = True


async def run_async_strategy(
    fn: Callable[[openai.AsyncOpenAI, Episode], Awaitable[None]], requests: list[EpisodeRequest],
    base_url: str, all_at_once: bool,
) -> float:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="local")  # default retries: 2
    episodes = [Episode(r) for r in requests]
    started = time.perf_counter()
    if all_at_once:
        await asyncio.gather(*(fn(client, ep) for ep in episodes))
    else:
        for ep in episodes:
            await fn(client, ep)
    elapsed = time.perf_counter() - started
    await client.close()
    return elapsed


def run_thread_strategy(
    fn: Callable[[openai.OpenAI, Episode], None], requests: list[EpisodeRequest], base_url: str,
    episodes_at_once: int,
) -> float:
    client = openai.OpenAI(base_url=base_url, api_key="local")
    episodes = [Episode(r) for r in requests]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=episodes_at_once) as pool:
        list(pool.map(lambda ep: fn(client, ep), episodes))
    elapsed = time.perf_counter() - started
    client.close()
    return elapsed


def run_showrunner(requests: list[EpisodeRequest], base_url: str, rpm: float, tpm: float,
                   name: str, overrides: dict[str, Any] | None = None,
                   records: dict[str, Any] | None = None) -> tuple[float, dict[str, Any]]:
    """Showrunner's real path on ``requests``; ``overrides`` are more ``Settings`` fields (the
    media providers, the encoding). Returns the makespan and the run's report, whose CPU term
    uses the Ray cluster's CPUs. ``records``, when given, receives the episode records."""
    llm = LLMSettings(model="bench", rpm=rpm, tpm=tpm, max_inflight=256, timeout_s=60)
    fields: dict[str, Any] = {"llm": llm, "max_parallel_episodes": len(requests),
                              "max_parallel_scenes": 8, **(overrides or {})}
    settings = Settings(**fields)
    with tempfile.TemporaryDirectory() as out:
        run = launcher.start_run(settings, Path(out), base_url, prefix=f"bench-{name}")
        # Actors are long-lived in use; their one-off process start is not part of a run.
        run.wait_ready()
        started = time.perf_counter()
        ids = launcher.submit(run, requests)
        ray.get(run.coordinator.wait.remote(ids))
        elapsed = time.perf_counter() - started
        snapshot = ray.get(run.coordinator.records_snapshot.remote())
        stats = {kind: ray.get(actor.stats.remote()) for kind, actor in run.providers.items()}
        report = build_report([snapshot[i] for i in ids], stats, settings,
                              cpus=ray.cluster_resources().get("CPU"))
        if records is not None:
            records.update({i: snapshot[i] for i in ids})
        for actor in (run.coordinator, *run.providers.values()):
            ray.kill(actor)
    failed = [e for e in report["episodes"] if e["status"] != "completed"]
    if failed:
        raise RuntimeError(f"Showrunner episodes failed: {failed[0]['error']}")
    return elapsed, report


def nominal_bound(mode: str, scenes: int, latency: float) -> float:
    plan = plan_episode(scenes, Continuity.parse(mode))
    return plan.critical_path({nid: latency for nid in plan.nodes})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.strategies",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=12)
    parser.add_argument("--scenes", type=int, default=10)
    parser.add_argument("--lines", type=int, default=6)
    parser.add_argument("--scale", type=float, default=40.0, help="time compression")
    parser.add_argument("--skip-slow", action="store_true",
                        help="leave out the one-episode-at-a-time runs of the slowest designs")
    parser.add_argument("--media", action="store_true",
                        help="with speech, pictures, clips and MP4s (see bench/media.py)")
    raw = list(sys.argv[1:] if argv is None else argv)
    if "--media" in raw:  # the media run has its own flags and smaller defaults
        from bench import media

        media.main([a for a in raw if a != "--media"])
        return
    args = parser.parse_args(raw)
    rpm, tpm = REAL_RPM * args.scale, REAL_TPM * args.scale
    latency = REAL_LATENCY_S / args.scale
    requests = [
        EpisodeRequest(premise=f"Episode {i + 1} of a series about a night-shift radio station.",
                       scenes=args.scenes, lines_per_scene=args.lines, seed=i, media=False)
        for i in range(args.episodes)
    ]
    rows: list[Row] = []
    ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    server_flags = dict(llm_latency=REAL_LATENCY_S, llm_jitter=REAL_JITTER_S,
                        latency_scale=1 / args.scale, llm_rpm=rpm, llm_tpm=tpm)
    try:
        with LocalServer(**server_flags) as server:
            def measure(name: str, continuity: str, at_once: str, run: Callable[[], float],
                        prior: bool = True) -> None:
                server.reset_stats()
                seconds = run()
                rows.append(Row(name, continuity, seconds,
                                server.stats()["chat"]["rate_limited"], at_once, prior))
                Console(stderr=True).print(f"  {name} ({at_once}): {seconds:.2f} s")

            url = server.base_url
            n = args.episodes
            for at_once in (False, True):
                label = f"all {n}" if at_once else "1"
                if not (at_once is False and args.skip_slow):
                    measure("sequential", "chain", label, lambda a=at_once: asyncio.run(
                        run_async_strategy(sequential, requests, url, a)))
                measure("semaphore of 3", "none", label, lambda a=at_once: asyncio.run(
                    run_async_strategy(semaphore_of_3, requests, url, a)))
                measure("batches of 5", "batch:5", label, lambda a=at_once: run_thread_strategy(
                    batches_of_5, requests, url, n if a else 1))
                limiter = RateLimiter(rpm)
                measure("thread pool 3 episodes", "chain", label if at_once else "3",
                        lambda a=at_once, lim=limiter: run_thread_strategy(
                            lambda c, ep: thread_pool_episode(c, ep, lim), requests, url,
                            n if a else 3))
                if not (at_once is False and args.skip_slow):
                    measure("hybrid two-phase", "chain", label, lambda a=at_once: asyncio.run(
                        run_async_strategy(hybrid_two_phase, requests, url, a)))
            reports: dict[str, dict[str, Any]] = {}
            for mode in ("chain", "batch:5", "none"):
                mode_requests = [r.model_copy(update={"continuity": mode}) for r in requests]

                def showrunner(m: str = mode, reqs: list[EpisodeRequest] = mode_requests
                               ) -> float:
                    seconds, reports[m] = run_showrunner(reqs, url, rpm, tpm,
                                                         m.replace(":", ""))
                    return seconds

                measure(f"Showrunner ({mode})", mode, f"all {n}", showrunner, prior=False)
    finally:
        ray.shutdown()
    print(json.dumps(summarise(rows, reports, args, latency)), flush=True)


def summarise(rows: list[Row], reports: dict[str, dict[str, Any]], args: argparse.Namespace,
              latency: float) -> dict[str, Any]:
    showrunner = next(r for r in rows if r.name == "Showrunner (chain)")
    bound = reports["chain"]["totals"]["lower_bound_s"]
    as_written = [r for r in rows if r.prior and not r.episodes_at_once.startswith("all")]
    best = min(as_written, key=lambda r: r.seconds)
    table = Table(title=f"{args.episodes} episodes x {args.scenes} scenes, time-scaled 1/"
                        f"{args.scale:g} (LLM {REAL_LATENCY_S:g} s ± {REAL_JITTER_S:g} s, "
                        f"{REAL_RPM} RPM, {REAL_TPM} TPM)")
    for column in ("strategy", "episodes at once", "continuity", "makespan s",
                   "÷ its bound", "Showrunner faster by", "429s received"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    same_continuity = {r.continuity: r for r in rows if not r.prior}
    for r in rows:
        own_bound = nominal_bound(r.continuity, args.scenes, latency)
        rival = same_continuity.get(r.continuity)
        faster = f"{r.seconds / rival.seconds:.1f}x" if rival and r.prior else ""
        table.add_row(r.name, r.episodes_at_once, r.continuity, f"{r.seconds:.2f}",
                      f"{r.seconds / own_bound:.2f}", faster, str(r.server_429))
    Console(stderr=True, width=150).print(table)
    Console(stderr=True).print(
        f"Lower bound of the chain run (measured critical path vs. rate limits): {bound:.2f} s, "
        f"set by {reports['chain']['totals']['bottleneck']}. '÷ its bound' uses the nominal "
        f"latency and each row's own continuity.")
    return result_line(showrunner, bound, best, rows)


def result_line(showrunner: Row, bound: float, best: Row | None, rows: list[Row]
                ) -> dict[str, Any]:
    """The JSON line every strategies benchmark ends with (text and media alike)."""
    return {
        "showrunner_s": round(showrunner.seconds, 3),
        "lower_bound_s": round(bound, 3),
        "showrunner_vs_bound": round(showrunner.seconds / bound, 3),
        "best_baseline": best.name if best else None,
        "best_baseline_s": round(best.seconds, 3) if best else None,
        "speedup_vs_best_baseline": round(best.seconds / showrunner.seconds, 3) if best else None,
        "showrunner_429": showrunner.server_429,
        "baseline_429": {f"{r.name} ({r.episodes_at_once})": r.server_429
                         for r in rows if r.prior},
    }


if __name__ == "__main__":
    main()
