"""HTTP load benchmark: the service under watchers and submitters while episodes run.

    python -m bench.http [--pollers 200] [--submissions 50] [--seconds 20] [--interval 1.0]

Starts Ray and the real Serve app on loopback (the bundled providers at 1/20 of real latency),
then at once: ``--submissions`` clients each POST one episode (script only, 6 scenes), and
``--pollers`` clients each GET one of those episodes' status every ``--interval`` seconds
(jittered, as dashboards and CLIs poll) for ``--seconds``. Every latency is measured at the client
through real HTTP. Prints a table and, last, one JSON line:
``{"requests", "errors", "poll_p50_ms", "poll_p99_ms", "submit_p99_ms"}``.

Not a test: these machines are shared and noisy. Goals: 0 errors, poll p99 under 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from typing import Any

import aiohttp
import ray
from ray import serve
from rich.console import Console
from rich.table import Table

import serve_app
from bench.common import free_port, percentile
from pipelines.settings import load_settings

KEY = "bench-http-0123456789abcdef"
PREFIX = "bench-http"



class Results:
    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = {"submit": [], "poll": []}
        self.errors: dict[str, list[str]] = {"submit": [], "poll": []}

    def row(self, phase: str) -> dict[str, Any]:
        ms = [x * 1000 for x in self.latencies[phase]]
        return {"phase": phase, "requests": len(ms) + len(self.errors[phase]),
                "errors": len(self.errors[phase]),
                "p50_ms": round(percentile(ms, 0.50), 1) if ms else None,
                "p90_ms": round(percentile(ms, 0.90), 1) if ms else None,
                "p99_ms": round(percentile(ms, 0.99), 1) if ms else None,
                "max_ms": round(max(ms), 1) if ms else None}


async def timed(results: Results, phase: str, call: Any) -> Any:
    started = time.perf_counter()
    try:
        async with call as response:
            body = await response.json()
            if response.status >= 400:
                results.errors[phase].append(f"{response.status}: {body}")
                return None
    except (aiohttp.ClientError, TimeoutError) as err:
        results.errors[phase].append(repr(err))
        return None
    results.latencies[phase].append(time.perf_counter() - started)
    return body


async def load(base: str, pollers: int, submissions: int, seconds: float, interval: float
               ) -> tuple[Results, float]:
    results = Results()
    headers = {"Authorization": f"Bearer {KEY}"}
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(base, headers=headers, connector=connector,
                                     timeout=timeout) as http:
        # One episode first, so pollers have something to watch from the first second.
        first = await timed(results, "submit", http.post("/v1/episodes", json=request(0)))
        ids = [first["id"]] if first else []

        async def submitter(i: int) -> None:
            await asyncio.sleep(random.uniform(0, seconds / 2))
            made = await timed(results, "submit", http.post("/v1/episodes", json=request(i)))
            if made:
                ids.append(made["id"])

        async def poller() -> None:
            end = time.monotonic() + seconds
            await asyncio.sleep(random.uniform(0, interval))
            while time.monotonic() < end and ids:
                await timed(results, "poll", http.get(f"/v1/episodes/{random.choice(ids)}"))
                await asyncio.sleep(interval * random.uniform(0.5, 1.5))

        started = time.perf_counter()
        await asyncio.gather(*(submitter(i) for i in range(1, submissions)),
                             *(poller() for _ in range(pollers)))
        return results, time.perf_counter() - started


def request(i: int) -> dict[str, Any]:
    return {"premise": f"Benchmark premise {i}: a courier delivers letters to the past.",
            "scenes": 6, "lines_per_scene": 3, "media": False, "seed": i}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--pollers", type=int, default=200)
    parser.add_argument("--submissions", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    args = parser.parse_args()

    port = free_port()
    settings = load_settings(
        api_keys=KEY,
        storage=tempfile.mkdtemp(prefix="bench-http-"),
        service={"port": port, "local_latency_scale": 0.05, "requests_per_minute": 1_000_000,
                 "max_active_episodes": 10_000},
        max_parallel_episodes=20,
    )
    ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(serve_app.build_app(settings, prefix=PREFIX), name=PREFIX, route_prefix="/")
        results, wall = asyncio.run(load(f"http://127.0.0.1:{port}", args.pollers,
                                         args.submissions, args.seconds, args.interval))
    finally:
        serve.shutdown()
        serve_app.stop_service(PREFIX)
        ray.shutdown()

    rows = [results.row("submit"), results.row("poll")]
    table = Table(title=f"HTTP load: {args.pollers} pollers every ~{args.interval:g} s, "
                  f"{args.submissions} submissions, {wall:.1f} s")
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    Console().print(table)
    for phase in ("submit", "poll"):
        for error in results.errors[phase][:5]:
            print(f"{phase} error: {error}")
    total = sum(r["requests"] for r in rows)
    print(json.dumps({"requests": total, "errors": sum(r["errors"] for r in rows),
                      "poll_p50_ms": rows[1]["p50_ms"], "poll_p99_ms": rows[1]["p99_ms"],
                      "submit_p99_ms": rows[0]["p99_ms"]}))


if __name__ == "__main__":
    main()
