"""Provider benchmark: how close one provider actor runs to a strict limit, and what it costs.

    python -m bench.provider [--calls 2000] [--rpm 6000] [--latency-ms 50] [--contention N]

1. Limited: one LLM provider actor makes ``--calls`` calls to the bundled local server set to a
   strict limit (the server enforces it like OpenAI: one second of burst, 429 over it). The
   achieved rate is measured in steady state — over the last three quarters of the calls, long
   after the first second's burst — from the completion times at the caller.
2. Unlimited, no latency: the same calls through the actor, and made directly with ``AsyncOpenAI``
   from the driver at the same concurrency; then calls one at a time, to read the actor's own
   overhead per call (round trip at the caller minus the HTTP call measured inside the actor).

``--contention N`` runs N busy processes at normal priority beside it all, as a cluster node's
cores are shared with compositions, replicas and other actors.

Prints a table and, last, one JSON line. Not a test: these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import statistics
import time
from collections.abc import Iterator
from typing import Any

import openai
import ray
from rich.console import Console
from rich.table import Table

from actors.remote import ProviderProxy, provider_actor
from bench.common import percentile
from local_server.process import LocalServer
from pipelines.settings import ProviderKind, ProviderSettings

CHAT_MEAN_LATENCY_S = 0.8  # the local server's default chat latency, scaled by --latency-scale
CONCURRENCY = 64


def _messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write one line for scene {i} of the pilot."}]


async def limited_run(calls: int, rpm: float, latency_ms: float) -> dict[str, Any]:
    scale = latency_ms / 1000 / CHAT_MEAN_LATENCY_S
    with LocalServer(latency_scale=scale, llm_rpm=rpm) as server:
        settings = ProviderSettings(model="bench", rpm=rpm, max_inflight=1024, timeout_s=30)
        actor = provider_actor(ProviderKind.LLM, settings, local_base_url=server.base_url,
                               name="bench:llm-limited")
        done: list[float] = []

        async def one(i: int) -> None:
            await actor.chat.remote(_messages(i), episode_id=f"ep{i % 12}", max_tokens=32)
            done.append(time.perf_counter())

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(calls)))
        elapsed = time.perf_counter() - started
        stats = await actor.stats.remote()
        server_stats = server.stats()
        ray.kill(actor)
    done.sort()
    # The first second's burst goes out at once; the steady rate is read from the last three
    # quarters of the completions, long after it.
    first = len(done) // 4
    steady = (len(done) - 1 - first) / (done[-1] - done[first]) * 60
    return {
        "elapsed_s": elapsed,
        "achieved_rpm": steady,
        "achieved_ratio": steady / rpm,
        "server_429": _server_count(server_stats, "rate_limited"),
        "actor_429": stats["rate_limited"],
        "limiter_wait_s": stats["limiter_wait_s"],
    }


async def unlimited_run(calls: int, sequential_calls: int) -> dict[str, Any]:
    with LocalServer(latency_scale=0.0) as server:
        settings = ProviderSettings(model="bench", rpm=None, max_inflight=CONCURRENCY, timeout_s=30)
        actor = provider_actor(ProviderKind.LLM, settings, local_base_url=server.base_url,
                               name="bench:llm-unlimited")
        await actor.chat.remote(_messages(0))  # warm up the actor and its connection pool

        started = time.perf_counter()
        await asyncio.gather(
            *(actor.chat.remote(_messages(i), episode_id=f"ep{i % 12}", max_tokens=32)
              for i in range(calls))
        )
        per_call_rate = calls / (time.perf_counter() - started)
        # As the coordinator calls it: through the proxy, which sends the calls made in one
        # turn of the event loop as one batch.
        proxy = ProviderProxy("bench:llm-unlimited", ProviderKind.LLM)
        await proxy.chat(_messages(0))
        started = time.perf_counter()
        await asyncio.gather(*(proxy.chat(_messages(i), episode_id=f"ep{i % 12}", max_tokens=32)
                               for i in range(calls)))
        actor_rate = calls / (time.perf_counter() - started)

        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="local", max_retries=0)
        gate = asyncio.Semaphore(CONCURRENCY)

        async def direct(i: int) -> float:
            async with gate:
                t0 = time.perf_counter()
                await client.chat.completions.create(
                    model="bench", messages=_messages(i), max_tokens=32  # type: ignore[arg-type]
                )
                return time.perf_counter() - t0

        await direct(0)
        started = time.perf_counter()
        await asyncio.gather(*(direct(i) for i in range(calls)))
        direct_rate = calls / (time.perf_counter() - started)

        # One at a time, so queueing does not count as overhead.
        direct_ms = [await direct(i) * 1000 for i in range(sequential_calls)]
        overhead_ms, actor_ms = [], []
        for i in range(sequential_calls):
            t0 = time.perf_counter()
            result = await actor.chat.remote(_messages(i), max_tokens=32)
            round_trip = time.perf_counter() - t0
            actor_ms.append(round_trip * 1000)
            overhead_ms.append((round_trip - result.latency_s) * 1000)
        await client.close()
        ray.kill(actor)
    return {
        "actor_calls_per_s": actor_rate,
        "per_call_calls_per_s": per_call_rate,
        "direct_calls_per_s": direct_rate,
        "direct_p50_ms": statistics.median(direct_ms),
        "actor_p50_ms": statistics.median(actor_ms),
        "overhead_p50_ms": statistics.median(overhead_ms),
        "overhead_p99_ms": percentile(overhead_ms, 0.99),
    }


def _server_count(stats: dict[str, Any], field: str) -> int:
    return int(stats.get("chat", stats).get(field, 0))


def report(limited: dict[str, Any], unlimited: dict[str, Any], args: argparse.Namespace) -> dict:
    beside = f", {args.contention} busy processes beside" if args.contention else ""
    table = Table(title=f"Provider actor, {args.calls} calls{beside}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("goal", justify="right")
    rows = [
        (f"limited: steady rate at {args.rpm:.0f} RPM, {args.latency_ms:.0f} ms",
         f"{limited['achieved_rpm']:.0f} RPM ({limited['achieved_ratio']:.3f})", ">= 0.97"),
        ("limited: 429s sent by the server", str(limited["server_429"]), "0"),
        ("limited: wall time", f"{limited['elapsed_s']:.1f} s", ""),
        ("unlimited: calls/s through one actor, as the coordinator calls it (batched)",
         f"{unlimited['actor_calls_per_s']:.0f}", ">= 1000"),
        ("unlimited: calls/s through one actor, one Ray call each",
         f"{unlimited['per_call_calls_per_s']:.0f}", ""),
        ("unlimited: calls/s direct AsyncOpenAI", f"{unlimited['direct_calls_per_s']:.0f}", ""),
        ("one at a time: direct p50", f"{unlimited['direct_p50_ms']:.2f} ms", ""),
        ("one at a time: through actor p50", f"{unlimited['actor_p50_ms']:.2f} ms", ""),
        ("actor overhead p50 / p99",
         f"{unlimited['overhead_p50_ms']:.2f} / {unlimited['overhead_p99_ms']:.2f} ms", "<= 2"),
    ]
    for row in rows:
        table.add_row(*row)
    Console(stderr=True, width=150).print(table)
    return {
        "achieved_ratio": round(limited["achieved_ratio"], 4),
        "server_429": limited["server_429"],
        "overhead_p50_ms": round(unlimited["overhead_p50_ms"], 3),
        "overhead_p99_ms": round(unlimited["overhead_p99_ms"], 3),
        "calls_per_s": round(unlimited["actor_calls_per_s"], 1),
        "per_call_calls_per_s": round(unlimited["per_call_calls_per_s"], 1),
    }


def _spin() -> None:
    while True:
        pass


@contextlib.contextmanager
def contention(processes: int) -> Iterator[None]:
    """``processes`` busy loops at normal priority, for as long as the block runs."""
    busy = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(processes)]
    for process in busy:
        process.start()
    try:
        yield
    finally:
        for process in busy:
            process.kill()
            process.join()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.provider", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rpm", type=float, default=6000)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--sequential-calls", type=int, default=300)
    parser.add_argument("--contention", type=int, default=0, metavar="N",
                        help="busy processes at normal priority beside the benchmark")
    args = parser.parse_args(argv)
    ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        with contention(args.contention):
            limited = asyncio.run(limited_run(args.calls, args.rpm, args.latency_ms))
            unlimited = asyncio.run(unlimited_run(args.calls, args.sequential_calls))
    finally:
        ray.shutdown()
    print(json.dumps({**report(limited, unlimited, args), "contention": args.contention}),
          flush=True)


if __name__ == "__main__":
    main()
