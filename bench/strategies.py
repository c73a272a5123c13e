"""The prior strategies side by side with Showrunner, in one run, on one workload.

    python -m bench.strategies [--episodes 12] [--scenes 10] [--scale 40] [--no-flex]

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

Showrunner then runs the chain workload once more with every episode on the flex tier (OpenAI's
Flex processing: half price, slower, at times busy), against a server whose flex answers take its
default 3x as long and ``FLEX_BUSY_RATE`` of which are 429 ``resource_unavailable``, waited out.
Both runs are billed at ``LLMSettings``' list prices, so the table beside them compares wall time
with cost. The busy answers' back-off (0.5-1 s at first) is not time-scaled: at ``--scale`` 40
one weighs as much as 20-40 s of real waiting. ``--no-flex`` leaves the flex run out.

Prints a table, then one JSON line. Not a test: these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
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
    ask_sync,
    result_line,
    run_showrunner,
)
from local_server.process import LocalServer
from pipelines.models import Continuity, EpisodeRequest
from pipelines.planner import plan_episode

FLEX_BUSY_RATE = 0.05  # share of flex requests the server answers "no capacity now"

# -- what every prior strategy does for one episode, call by call ------------------------------


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
    parser.add_argument("--no-flex", action="store_true",
                        help="leave out Showrunner's run of the chain workload on the flex tier")
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
        flex = None if args.no_flex else run_flex(requests, server_flags, rpm, tpm, reports)
    finally:
        ray.shutdown()
    print(json.dumps(summarise(rows, reports, args, latency, flex)), flush=True)


def run_flex(requests: list[EpisodeRequest], server_flags: dict[str, Any], rpm: float,
             tpm: float, reports: dict[str, dict[str, Any]]) -> Row:
    """Showrunner's chain run again, every episode on flex, on a server whose flex tier is at
    times busy; its report goes to ``reports["flex"]``."""
    flex_requests = [r.model_copy(update={"continuity": "chain", "tier": "flex"})
                     for r in requests]
    with LocalServer(**server_flags, flex_unavailable_rate=FLEX_BUSY_RATE) as server:
        seconds, reports["flex"] = run_showrunner(flex_requests, server.base_url, rpm, tpm,
                                                  "flex")
        row = Row("Showrunner, flex", "chain", seconds, server.stats()["chat"]["rate_limited"],
                  f"all {len(requests)}", prior=False)
    Console(stderr=True).print(f"  {row.name} ({row.episodes_at_once}): {seconds:.2f} s")
    return row


def summarise(rows: list[Row], reports: dict[str, dict[str, Any]], args: argparse.Namespace,
              latency: float, flex: Row | None = None) -> dict[str, Any]:
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
    if flex:  # slower by design: no nominal bound of its own, nothing to be faster than
        table.add_row(flex.name, flex.episodes_at_once, flex.continuity, f"{flex.seconds:.2f}",
                      "", "", str(flex.server_429))
    Console(stderr=True, width=150).print(table)
    Console(stderr=True).print(
        f"Lower bound of the chain run (measured critical path vs. rate limits): {bound:.2f} s, "
        f"set by {reports['chain']['totals']['bottleneck']}. '÷ its bound' uses the nominal "
        f"latency and each row's own continuity.")
    line = result_line(showrunner, bound, best, rows)
    line["standard_cost_usd"] = reports["chain"]["totals"]["cost_usd"]
    line.update(flex_line(showrunner, reports["chain"], flex, reports.get("flex")))
    return line


def flex_line(standard: Row, standard_report: dict[str, Any], flex: Row | None,
              flex_report: dict[str, Any] | None) -> dict[str, Any]:
    """Standard beside flex on the chain workload, printed; the flex keys of the JSON line
    (None when the flex run was left out)."""
    if flex is None or flex_report is None:
        return dict.fromkeys(("flex_wall_s", "flex_cost_usd", "flex_saved_usd",
                              "flex_wall_ratio", "flex_busy", "flex_fell_back"))
    table = Table(title="Showrunner (chain), standard vs flex")
    for column in ("tier", "wall s", "cost USD", "flex saved USD", "busy answers",
                   "fell back to standard"):
        table.add_column(column, justify="left" if column == "tier" else "right")
    for tier, row, report in (("standard", standard, standard_report),
                              ("flex", flex, flex_report)):
        totals, llm = report["totals"], report["totals"]["providers"]["llm"]
        table.add_row(tier, f"{row.seconds:.2f}", f"{totals['cost_usd']:.6f}",
                      f"{totals['flex_saved_usd']:.6f}", str(llm["flex_busy"]),
                      str(llm["flex_fell_back"]))
    Console(stderr=True, width=150).print(table)
    totals, llm = flex_report["totals"], flex_report["totals"]["providers"]["llm"]
    return {
        "flex_wall_s": round(flex.seconds, 3),
        "flex_cost_usd": totals["cost_usd"],
        "flex_saved_usd": totals["flex_saved_usd"],
        "flex_wall_ratio": round(flex.seconds / standard.seconds, 3),
        "flex_busy": llm["flex_busy"],
        "flex_fell_back": llm["flex_fell_back"],
    }


if __name__ == "__main__":
    main()
