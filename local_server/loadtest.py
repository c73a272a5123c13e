"""How fast the bundled server answers tiny chat completions through the real SDK.

``python -m local_server.loadtest [--requests N] [--concurrency C] [--client sdk|aiohttp]``:
starts a server with no latency and no limits, sends N requests C at a time through
``openai.AsyncOpenAI`` (or a bare aiohttp client, which costs the client far less CPU), and prints
the rate and the server's own CPU time per request (from ``/proc``, Linux only), which tells
whether the server or the client was the bottleneck. The figures in docs/local-server.md come
from here.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import aiohttp
import openai

from local_server.process import LocalServer

MESSAGES = [{"role": "user", "content": "Premise: a tiny test. Say hi."}]


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process, or None where ``/proc`` is missing."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(base_url: str, requests: int, concurrency: int) -> float:
    """Seconds to complete ``requests`` chat completions, ``concurrency`` at a time."""
    async with openai.AsyncOpenAI(base_url=base_url, api_key="loadtest", max_retries=0) as sdk:
        await sdk.chat.completions.create(model="m", messages=MESSAGES)  # warm the pool
        todo = iter(range(requests))

        async def worker() -> None:
            for _ in todo:
                await sdk.chat.completions.create(model="m", messages=MESSAGES, max_tokens=16)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


async def drive_bare(base_url: str, requests: int, concurrency: int) -> float:
    """The same with aiohttp: what the server sustains when the client is cheap."""
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 16}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        url = f"{base_url}/chat/completions"
        async with session.post(url, json=body) as response:  # warm
            await response.read()
        todo = iter(range(requests))

        async def worker() -> None:
            for _ in todo:
                async with session.post(url, json=body) as response:
                    await response.read()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m local_server.loadtest",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--client", choices=("sdk", "aiohttp"), default="sdk")
    args = parser.parse_args()
    run = drive if args.client == "sdk" else drive_bare
    with LocalServer(latency_scale=0) as server:
        assert server.pid is not None
        cpu_before = cpu_seconds(server.pid)
        seconds = asyncio.run(run(server.base_url, args.requests, args.concurrency))
        cpu_after = cpu_seconds(server.pid)
        accepted = server.stats()["chat"]["accepted"]
    print(f"{args.client}: {args.requests} requests, {args.concurrency} at a time: "
          f"{args.requests / seconds:,.0f} requests/s ({accepted} accepted)")
    if cpu_before is not None and cpu_after is not None and cpu_after > cpu_before:
        used = cpu_after - cpu_before
        print(f"server CPU: {used:.2f} s, {args.requests / used:,.0f} requests per CPU-second")


if __name__ == "__main__":
    main()
