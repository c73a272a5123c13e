"""Limits hold across nodes: episodes submitted from every node of a three-node Ray cluster, and
over HTTP to Serve replicas on two of its nodes, all at once, against one strict-limit server.

    python -m bench.cluster [--episodes-per-driver 16] [--http-episodes 16] [--rpm 1200]
                            [--scenes 4] [--latency-scale 0.25]

The cluster is a real one on this machine (``ray.cluster_utils.Cluster``): a head and two worker
nodes, each with its own scratch folder (``SHOWRUNNER_SCRATCH`` in its raylet's environment) and
custom resources — ``node-0``/``node-1``/``node-2`` to pin work to one node, and the roles of
``tests/cluster/conftest.py``: the provider actors on the head, the coordinator on node 1, one
Serve replica on each worker node (``service.replicas = 2``, ``placement.replicas``), Serve's one
HTTP proxy on the head. The bundled local server is the provider, with a strict chat limit
(``--rpm``) that it enforces as OpenAI does: one second of burst, a 429 over it. The settings give
the LLM provider the same ``rpm``, and the episodes are script-only, so the one LLM provider actor
is the bottleneck and the run stays short.

At one moment, every submitter starts: a driver on each node (an actor pinned there by its
``node-N`` resource) hands its episodes to the coordinator actor by name and waits on them, as a
CLI driver on that node would; and an HTTP client POSTs ``--http-episodes`` episodes to
``/v1/episodes``, one request each, all at once, through the proxy, which hands them to the
replicas on two nodes (Serve's access logs say which answered how many), then follows them over
HTTP. The provider actor is then called by coordinator code on behalf of all of them: its
limit must hold for the whole cluster, and its rate must stay at the limit.

Measured:
- ``achieved_ratio``: the server's own count of answered chat calls (``/stats``), sampled every
  quarter second, over the span in which calls queued at the provider's limiter (demand above the
  limit: the provider was the bottleneck) less its first second (the bucket's one-second burst),
  divided by the limit. The start, while submitters come in, and the tail, when the last episodes'
  last dialogues no longer fill the limit, are not the limiter's to fill.
- ``server_429``: the chat calls the server refused with 429 (the table says when they came:
  within the first second or so they are the first burst's, later the steady state's);
  ``episodes`` submitted and how many ended ``completed``.

State is SQLite in the run's storage folder: every node is on this machine, and the coordinator is
one actor, so the one file serves the cluster (a cluster of machines would use PostgreSQL,
``SHOWRUNNER_STATE_URL``; the state store is not what is measured here).

Prints a table and, last, one JSON line
``{"nodes", "achieved_ratio", "server_429", "episodes", "completed", ...}``. Goals:
``achieved_ratio`` >= 0.97, ``server_429`` = 0, every episode completed. Not a test: these
machines are shared and noisy (two cores here, other work running).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import ray
from ray import serve
from ray.cluster_utils import Cluster
from rich.console import Console
from rich.table import Table

import serve_app
from actors.remote import NAMESPACE
from bench.common import free_port
from local_server.process import LocalServer
from pipelines.models import EpisodeRequest, EpisodeStatus
from pipelines.settings import Settings, load_settings
from pipelines.storage import SCRATCH_VARIABLE

KEY = "bench-cluster-0123456789abcdef"
PREFIX = "bench-cluster"
NODES = 3
SAMPLE_EVERY_S = 0.25
HTTP_POLL_S = 1.0
RUN_TIMEOUT_S = 900.0
READY_TIMEOUT_S = 120.0
RAY_TMPDIR = "RAY_TMPDIR"
# A call more or less at either end of the window moves the rate by 1/(rate x window): over
# 10 s at 20 calls/s, 0.5% a call.
SHORTEST_WINDOW_S = 10.0
BURST_S = 1.0  # the server's and the limiter's bucket: one second of quota

# What each node may run, as a real cluster's node types would say (ray start --resources).
# node-N pins one driver to each node; the roles place the service's parts.
ROLES: list[dict[str, float]] = [
    {"providers": 1},  # the head: the provider actors (and Serve's controller and proxy)
    {"coordinator": 1, "replica": 1},
    {"replica": 1},
]


def node_name(index: int) -> str:
    return f"node-{index}"



# -- the cluster --------------------------------------------------------------------------------


@contextlib.contextmanager
def private_ray_folder(folder: Path) -> Iterator[None]:
    """Ray's files for this run in a folder of its own (``RAY_TMPDIR``), its nodes' too.

    A ``Cluster`` head records its address in Ray's temp folder, where a plain ``ray.init()``
    on this machine looks for a cluster to join: in the shared ``/tmp/ray``, another program's
    Ray started meanwhile would join this one (nodes without CPUs) instead of starting its own.
    """
    before = os.environ.get(RAY_TMPDIR)
    os.environ[RAY_TMPDIR] = str(folder)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(RAY_TMPDIR, None)
        else:
            os.environ[RAY_TMPDIR] = before


@contextlib.contextmanager
def started_cluster(root: Path) -> Iterator[tuple[Cluster, list[str]]]:
    """Three nodes, each with its scratch folder and resources; the driver connected. Yields the
    cluster and its node ids in node order. Shut down however the block ends."""
    cluster = Cluster()
    try:
        node_ids = []
        for index, role in enumerate(ROLES):
            # No CPUs: script-only episodes run no CPU tasks, and every worker a node prestarts
            # for its CPUs is a process this two-core machine must start and keep.
            args: dict[str, Any] = {
                "num_cpus": 0,
                "resources": {node_name(index): 1, **role},
                "env_vars": {SCRATCH_VARIABLE: str(root / f"scratch-{node_name(index)}")},
            }
            if index == 0:
                args["include_dashboard"] = False
            node_ids.append(cluster.add_node(**args).node_id)
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        cluster.wait_for_nodes()
        yield cluster, node_ids
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        cluster.shutdown()


@contextlib.contextmanager
def started_service(settings: Settings, port: int) -> Iterator[str]:
    """The Serve app as ``showrunner serve`` runs it, its parts placed by the settings; one HTTP
    proxy, on the head (the nodes share this machine's ports). Yields its base URL."""
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(serve_app.build_app(settings, prefix=PREFIX), name=PREFIX, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        # Each step on its own: a failed one must not leave the rest running.
        with contextlib.suppress(Exception):
            serve.shutdown()
        with contextlib.suppress(Exception):
            serve_app.stop_service(PREFIX)


def service_settings(args: argparse.Namespace, server: LocalServer, storage: Path) -> Settings:
    episodes = args.episodes_per_driver * NODES + args.http_episodes
    return load_settings(
        api_keys=KEY,
        storage=str(storage),  # SQLite state beside it: see the module's docstring
        # The limit the server enforces, given to the one LLM provider actor: its to hold.
        llm={"base_url": server.base_url, "model": "bench", "rpm": args.rpm, "tpm": None,
             "max_inflight": 256, "timeout_s": 60},
        # Unused by script-only episodes; set so that no bundled server is started for them.
        tts={"base_url": server.base_url, "rpm": None},
        image={"base_url": server.base_url, "rpm": None},
        # Every episode admitted at once: the limiter, not admission, paces the run.
        max_parallel_episodes=episodes, max_parallel_scenes=8,
        service={"replicas": 2, "max_active_episodes": 10_000, "max_batch": 1000,
                 "requests_per_minute": 100_000},
        placement={"coordinator": {"coordinator": 1}, "providers": {"providers": 0.01},
                   "replicas": {"replica": 1}},
    )


def actor_nodes() -> tuple[dict[str, str], dict[str, str]]:
    """The service's alive actors by role, and Serve's replicas of it by replica id (the end of
    the actor's name, as in its log's), each with its node. (Ray's state API needs the
    dashboard; the GCS's own table does not.)"""
    parts, replicas = {}, {}
    for actor in ray._private.state.actors().values():  # noqa: SLF001
        name = actor.get("Name") or ""
        if actor["State"] != "ALIVE":
            continue
        if name.startswith(f"{PREFIX}:"):
            parts[name.split(":", 1)[1]] = actor["Address"]["NodeID"]
        elif name.startswith(f"SERVE_REPLICA::{PREFIX}#ShowrunnerAPI#"):
            replicas[name.rsplit("#", 1)[1]] = actor["Address"]["NodeID"]
    return parts, replicas


# -- the submitters ---------------------------------------------------------------------------


class NodeDriver:
    """A driver on one node (pinned by its ``node-N`` resource): it submits its episodes to the
    coordinator actor, found by name as any driver on the cluster finds it, and waits on them."""

    def __init__(self, prefix: str) -> None:
        self.coordinator = ray.get_actor(f"{prefix}:coordinator", namespace=NAMESPACE)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def run(self, requests: list[EpisodeRequest]) -> dict[str, Any]:
        started = time.perf_counter()
        views = ray.get(self.coordinator.submit_many.remote(requests))
        ids = [view.id for view in views]
        finished = ray.get(self.coordinator.wait.remote(ids))
        return {"node_id": self.node_id(), "ids": ids,
                "statuses": [view.status.value for view in finished],
                "wall_s": time.perf_counter() - started}


@dataclass
class HttpResult:
    ids: list[str] = field(default_factory=list)
    statuses: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0


async def http_clients(base_url: str, requests: list[dict[str, Any]]) -> HttpResult:
    """One POST per episode, all at once, each on a connection of its own; then the episodes
    are followed over HTTP, a page of the tenant's list a second (not a poll per episode)."""
    result = HttpResult()
    started = time.perf_counter()
    headers = {"Authorization": f"Bearer {KEY}"}
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(base_url, headers=headers, timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=0)) as http:

        async def post(body: dict[str, Any]) -> None:
            async with http.post("/v1/episodes", json=body) as answer:
                if answer.status != 202:
                    result.errors.append(f"POST {answer.status}: {await answer.text()}")
                    return
                result.ids.append((await answer.json())["id"])

        await asyncio.gather(*(post(body) for body in requests))
        while True:
            result.statuses = await listed(http, set(result.ids))
            if len(result.statuses) == len(result.ids) and all(
                    EpisodeStatus(s).finished for s in result.statuses.values()):
                break
            await asyncio.sleep(HTTP_POLL_S)
    result.wall_s = time.perf_counter() - started
    return result


async def listed(http: aiohttp.ClientSession, ids: set[str]) -> dict[str, str]:
    """The statuses of ``ids`` from the tenant's list, page by page."""
    statuses: dict[str, str] = {}
    cursor: str | None = None
    while True:
        params = {"limit": "100", **({"cursor": cursor} if cursor else {})}
        async with http.get("/v1/episodes", params=params) as answer:
            if answer.status != 200:  # a passing 503 (an actor restarting): ask again later
                return statuses
            page = await answer.json()
        statuses.update({e["id"]: e["status"] for e in page["episodes"] if e["id"] in ids})
        cursor = page["next_cursor"]
        if cursor is None:
            return statuses


# -- the measurement ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    at: float  # monotonic seconds, when the server counted
    answered: int  # chat calls the server has answered (its "accepted")
    waiting: int  # calls queued at the provider actor's limiter
    refused: int  # chat calls the server has answered 429


async def sample_until(done: asyncio.Event, server: LocalServer, provider: Any,
                       samples: list[Sample]) -> None:
    """The server's count and the limiter's queue, every ``SAMPLE_EVERY_S``, until ``done``."""
    while not done.is_set():
        before = time.monotonic()
        stats, actor = await asyncio.gather(asyncio.to_thread(server.stats),
                                            provider.stats.remote())
        waiting = sum(d["waiting"] for d in actor["deployments"])
        samples.append(Sample((before + time.monotonic()) / 2, stats["chat"]["accepted"],
                              waiting, stats["chat"]["rate_limited"]))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), SAMPLE_EVERY_S)


@dataclass(frozen=True)
class Steady:
    rpm: float
    window_s: float
    calls: int


def steady_rate(samples: list[Sample]) -> Steady | None:
    """The answered-call rate over the longest span in which calls queued at the limiter (the
    provider was the bottleneck), less its first ``BURST_S`` (a full bucket's burst)."""
    runs: list[list[Sample]] = []
    current: list[Sample] = []
    for sample in samples:
        if sample.waiting > 0:
            current.append(sample)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    if not runs:
        return None
    longest = max(runs, key=lambda run: run[-1].at - run[0].at)
    window = [s for s in longest if s.at >= longest[0].at + BURST_S]
    if len(window) < 2 or window[-1].at - window[0].at <= 0:
        return None
    seconds = window[-1].at - window[0].at
    calls = window[-1].answered - window[0].answered
    return Steady(calls / seconds * 60, seconds, calls)


def refusals(samples: list[Sample], started_at: float) -> str:
    """When the server's 429s came, in seconds after the submitters started: what tells a
    first-burst or start-up effect from one of the steady state."""
    seen, when = 0, []
    for sample in samples:
        if sample.refused > seen:
            when.append(f"{sample.refused - seen} by +{sample.at - started_at:.1f} s")
            seen = sample.refused
    return ", ".join(when) or "none"


def replica_posts(session_dir: Path) -> dict[str, int]:
    """POSTs of episodes each replica answered, from Serve's access log of each replica."""
    posts: Counter[str] = Counter()
    for log in (session_dir / "logs" / "serve").glob(f"replica_{PREFIX}_ShowrunnerAPI_*.log"):
        replica = log.stem.rsplit("_", 1)[-1]
        text = log.read_text(errors="replace")
        posts[replica] += len(re.findall(r"POST /v1/episodes 202", text))
    return dict(posts)


# -- the run ----------------------------------------------------------------------------------


def episode(source: str, n: int, scenes: int) -> EpisodeRequest:
    # A premise of its own each: no call is answered from another episode's cached one.
    return EpisodeRequest(premise=f"A night ferry, seen from {source}: crossing {n}.",
                          scenes=scenes, lines_per_scene=2, media=False, seed=n)


async def load(args: argparse.Namespace, base_url: str, drivers: list[Any], server: LocalServer
               ) -> dict[str, Any]:
    """Every submitter at once; returns what each saw, the samples and the wall time."""
    provider = ray.get_actor(f"{PREFIX}:llm", namespace=NAMESPACE)
    samples: list[Sample] = []
    done = asyncio.Event()
    sampler = asyncio.create_task(sample_until(done, server, provider, samples))
    started, started_at = time.perf_counter(), time.monotonic()
    driven = [driver.run.remote([episode(node_name(i), n, args.scenes)
                                 for n in range(args.episodes_per_driver)])
              for i, driver in enumerate(drivers)]
    http_bodies = [episode("HTTP", n, args.scenes).model_dump(mode="json", exclude_unset=True)
                   for n in range(args.http_episodes)]
    try:
        async with asyncio.timeout(RUN_TIMEOUT_S):
            nodes, http = await asyncio.gather(asyncio.gather(*driven),
                                               http_clients(base_url, http_bodies))
    finally:
        done.set()
        await sampler
    return {"nodes": nodes, "http": http, "samples": samples, "started_at": started_at,
            "wall_s": time.perf_counter() - started}


def run(args: argparse.Namespace) -> dict[str, Any]:
    began = time.perf_counter()
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="bench-cluster-", ignore_cleanup_errors=True)))
        stack.enter_context(private_ray_folder(root / "ray"))
        server = stack.enter_context(LocalServer(latency_scale=args.latency_scale,
                                                 llm_rpm=args.rpm, burst_s=BURST_S, seed=0))
        cluster, node_ids = stack.enter_context(started_cluster(root))
        settings = service_settings(args, server, root / "storage")
        base_url = stack.enter_context(started_service(settings, free_port()))
        drivers = [ray.remote(NodeDriver).options(num_cpus=0, resources={node_name(i): 1})
                   .remote(PREFIX) for i in range(NODES)]
        # Each driver's process is up before the clock starts: all submit at one moment.
        ray.get([d.node_id.remote() for d in drivers], timeout=READY_TIMEOUT_S)
        setup_s = time.perf_counter() - began
        outcome = asyncio.run(load(args, base_url, drivers, server))
        final = server.stats()["chat"]
        provider = ray.get(ray.get_actor(f"{PREFIX}:llm", namespace=NAMESPACE).stats.remote())
        parts, replicas = actor_nodes()
        posts = replica_posts(Path(cluster.head_node.get_session_dir_path()))
        result = {**outcome, "node_ids": node_ids, "server": final, "provider": provider,
                  "parts": parts, "replicas": replicas, "posts": posts, "setup_s": setup_s}
    return result


def report(args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    names = {node_id: node_name(i) for i, node_id in enumerate(result["node_ids"])}
    sources = Table(title=f"Submitters: {NODES} nodes, {args.scenes} scenes an episode, "
                    "script only")
    for column in ("submitter", "ran on", "episodes", "completed", "wall s"):
        sources.add_column(column, justify="left" if column == "submitter" else "right")
    episodes = completed = 0
    for i, node in enumerate(result["nodes"]):
        done = node["statuses"].count(EpisodeStatus.COMPLETED.value)
        episodes += len(node["ids"])
        completed += done
        sources.add_row(f"driver on {node_name(i)}", names.get(node["node_id"], "?"),
                        str(len(node["ids"])), str(done), f"{node['wall_s']:.1f}")
    http: HttpResult = result["http"]
    replicas = {replica: names.get(node, "?") for replica, node in result["replicas"].items()}
    done = sum(s == EpisodeStatus.COMPLETED.value for s in http.statuses.values())
    episodes += args.http_episodes
    completed += done
    answered = ", ".join(f"{replicas.get(replica, replica)}: {n}"
                         for replica, n in sorted(result["posts"].items())) or "?"
    sources.add_row(f"HTTP, a POST an episode (answered by replica's node: {answered})",
                    "replicas on " + ", ".join(sorted(set(replicas.values()))),
                    str(args.http_episodes), str(done), f"{http.wall_s:.1f}")
    console = Console(stderr=True, width=150)
    console.print(sources)

    steady = steady_rate(result["samples"])
    server, provider = result["server"], result["provider"]
    where = {role: names.get(node, "?") for role, node in result["parts"].items()}
    figures = Table(title="The LLM provider: one actor, one strict-limit server")
    figures.add_column("measure")
    figures.add_column("value", justify="right")
    figures.add_column("goal", justify="right")
    ratio = steady.rpm / args.rpm if steady else 0.0
    rows = [
        ("limit (server and settings)", f"{args.rpm:.0f} RPM", ""),
        ("steady answered rate at the server",
         f"{steady.rpm:.0f} RPM ({ratio:.3f})" if steady else "no saturated span", ">= 0.97"),
        ("steady window (limiter queue non-empty, less 1 s)",
         (f"{steady.window_s:.1f} s, {steady.calls} calls"
          + (" (too short to read)" if steady.window_s < SHORTEST_WINDOW_S else ""))
         if steady else "-", f">= {SHORTEST_WINDOW_S:.0f} s"),
        ("429s sent by the server", str(server["rate_limited"]), "0"),
        ("when the server sent them", refusals(result["samples"], result["started_at"]), ""),
        ("429s seen by the provider actor", str(provider["rate_limited"]), ""),
        ("chat calls answered", str(server["accepted"]), ""),
        ("whole run: answered ÷ wall time, start and tail in",
         f"{server['accepted'] / result['wall_s'] * 60:.0f} RPM", ""),
        ("episodes completed", f"{completed} / {episodes}", "all"),
        ("wall time, all submitters", f"{result['wall_s']:.1f} s", ""),
        ("set-up: server, cluster, service, drivers", f"{result['setup_s']:.1f} s", ""),
        ("parts placed", ", ".join(f"{role} on {node}" for role, node in sorted(where.items())),
         ""),
    ]
    for row in rows:
        figures.add_row(*row)
    console.print(figures)
    for error in http.errors[:5]:
        console.print(f"HTTP error: {error}")
    return {
        "nodes": NODES,
        "achieved_ratio": round(ratio, 4),
        "server_429": server["rate_limited"],
        "episodes": episodes,
        "completed": completed,
        "drivers": len(result["nodes"]),
        "http_episodes": args.http_episodes,
        "replica_nodes": len(set(replicas.values())),
        "steady_window_s": round(steady.window_s, 1) if steady else None,
        "wall_s": round(result["wall_s"], 1),
    }


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes-per-driver", type=int, default=16)
    parser.add_argument("--http-episodes", type=int, default=16)
    parser.add_argument("--rpm", type=float, default=1200)
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--latency-scale", type=float, default=0.25,
                        help="the server's chat latency, as a multiple of its 0.8 s default")
    args = parser.parse_args(argv)
    # SIGTERM too runs the cleanup (the cluster's processes, the server, Serve). ray.init puts
    # in a handler of its own, which unwinds the same way (it raises SystemExit).
    signal.signal(signal.SIGTERM, _stop)
    try:
        result = run(args)
    except KeyboardInterrupt:  # everything started is stopped by now
        raise SystemExit("interrupted") from None
    print(json.dumps(report(args, result)), flush=True)


if __name__ == "__main__":
    main()
