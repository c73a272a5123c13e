"""Does the coordinator's memory stay flat over many episodes? 10,000 short script-only episodes
(by default) go through the real coordinator actor, a thousand at a time, against the bundled
server with no latency and no limits, with the state store on. After each thousand finished it
prints the coordinator's resident memory and the p99 of a status poll (``view`` of a random
episode, old or new), and last one JSON line:

    {"episodes": ..., "rss_mb_first_1k": ..., "rss_mb_last_1k": ..., "poll_p99_ms": ...}

Goal: ``rss_mb_last_1k`` within 10% of ``rss_mb_first_1k``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time

import ray

from bench.common import percentile
from local_server.process import LocalServer
from pipelines.models import EpisodeRequest, EpisodeStatus
from pipelines.settings import LLMSettings, Settings
from pipelines.storage import Storage
from showrunner import launcher

ROUND = 1000
POLLS = 200


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--episodes", type=int, default=10_000)
    args = parser.parse_args(argv)
    launcher.ensure_ray()
    settings = Settings(llm=LLMSettings(model="bench", rpm=None, tpm=None, max_inflight=256),
                        max_parallel_episodes=100, max_parallel_scenes=8)
    rng = random.Random(0)
    rows: list[tuple[int, float, float]] = []
    polls_all: list[float] = []
    with LocalServer(latency_scale=0.0) as server, tempfile.TemporaryDirectory() as out:
        run = launcher.start_run(settings, Storage(str(out)), server.base_url, prefix="bench-scale")
        run.wait_ready()
        pid = ray.get(run.coordinator.__ray_call__.remote(lambda _: os.getpid()))
        made: list[str] = []
        print(f"{'finished':>9} {'rss MB':>8} {'poll p99 ms':>12} {'s':>6}", flush=True)
        started = time.perf_counter()
        while len(made) < args.episodes:
            count = min(ROUND, args.episodes - len(made))
            ids = launcher.submit(run, [EpisodeRequest(premise=f"Scale {len(made) + n}.",
                                                       scenes=1, media=False)
                                        for n in range(count)])
            views = ray.get(run.coordinator.wait.remote(ids))
            if any(v.status is not EpisodeStatus.COMPLETED for v in views):
                raise RuntimeError("an episode did not complete")
            made += ids
            polls = []
            for episode_id in rng.choices(made, k=POLLS):
                asked = time.perf_counter()
                ray.get(run.coordinator.view.remote(episode_id))
                polls.append((time.perf_counter() - asked) * 1000)
            polls_all += polls
            rows.append((len(made), rss_mb(pid), percentile(polls, 0.99)))
            print(f"{len(made):>9} {rows[-1][1]:>8.1f} {rows[-1][2]:>12.2f} "
                  f"{time.perf_counter() - started:>6.0f}", flush=True)
        run.stop()
    print(json.dumps({"episodes": len(made), "rss_mb_first_1k": round(rows[0][1], 1),
                      "rss_mb_last_1k": round(rows[-1][1], 1),
                      "poll_p99_ms": round(percentile(polls_all, 0.99), 2)}), flush=True)


if __name__ == "__main__":
    main()
