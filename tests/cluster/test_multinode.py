"""The service on a real three-node Ray cluster, with its files in S3 (moto's S3 server on
loopback stands in for S3 in the tests only) and its state in PostgreSQL: each part where its
node's resources put it, two Serve replicas on two nodes, and nodes lost mid-run.

Losing the coordinator's node restarts the coordinator on another node, which takes its
episodes up again from PostgreSQL: every episode completes, and no paid call is made again but
those in flight at the loss. Losing a composition node costs its tasks a rerun elsewhere. The
CLI, anywhere, lists and shows those episodes from the same PostgreSQL store."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import requests
from ray import serve
from sqlalchemy import make_url

import serve_app
from local_server.process import LocalServer
from pipelines.episode_folder import Artifact, EpisodeFolder
from pipelines.settings import Settings, load_settings
from pipelines.storage import Storage
from tests.cluster.conftest import Nodes
from tests.s3 import S3Server
from tests.support import free_port, processes, wait_for

KEY = "key-cluster-0123456789"
PREFIX = "cluster"
PREVIEW = {"width": 320, "height": 180, "fps": 8, "x264_preset": "ultrafast"}
MEDIA_SERVER = {  # slow enough that nodes are lost mid-run, fast enough for the suite
    "latency_scale": 0.3, "tts_latency": 5, "tts_jitter": 0, "image_latency": 10,
    "image_jitter": 0,
}



@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    with LocalServer(**MEDIA_SERVER) as running:
        yield running


@pytest.fixture(scope="module")
def service(nodes: Nodes, server: LocalServer, s3_server: S3Server,
            postgres_server: Any) -> Iterator[tuple[str, Settings, Storage]]:
    """The service as ``showrunner serve`` starts it, placed by resources: providers on the
    head, the coordinator on the coordinator node, compositions on the media node, one replica
    on each of two nodes. One HTTP proxy, on the head (the nodes share this machine's ports)."""
    storage = s3_server.new_bucket()
    port = free_port()
    with pytest.MonkeyPatch.context() as env:
        for name, value in s3_server.environment().items():
            env.setenv(name, value)
        settings = load_settings(
            api_keys=KEY, storage=storage.url, state_url=postgres_server.new_database(),
            llm={"base_url": server.base_url, "rpm": None, "tpm": None},
            tts={"base_url": server.base_url, "rpm": None},
            image={"base_url": server.base_url, "rpm": None},
            encoding=PREVIEW, service={"replicas": 2},
            placement={"coordinator": {"coordinator": 1}, "providers": {"providers": 0.01},
                       "media": {"media": 0.01}, "replicas": {"replica": 1}},
        )
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    serve.run(serve_app.build_app(settings, prefix=PREFIX), name=PREFIX, route_prefix="/")
    try:
        yield f"http://127.0.0.1:{port}", settings, settings.open_storage()
    finally:
        serve.shutdown()
        serve_app.stop_service(PREFIX)


def actor_nodes(name_prefix: str) -> dict[str, str]:
    """Alive actors whose names start so, by name (or class for Serve's), and their node.
    (Ray's state API needs the dashboard; the GCS's own table does not.)"""
    found = {}
    for actor in ray._private.state.actors().values():  # noqa: SLF001
        name = actor.get("Name") or actor.get("ActorClassName", "")
        if actor["State"] == "ALIVE" and name.startswith(name_prefix):
            found[name if "ShowrunnerAPI" not in name else actor["ActorID"]] = (
                actor["Address"]["NodeID"])
    return found


def session() -> requests.Session:
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {KEY}"
    return s


def statuses(base_url: str, ids: list[str]) -> dict[str, str]:
    out = {}
    for episode_id in ids:
        with contextlib.suppress(requests.RequestException):
            answer = session().get(f"{base_url}/v1/episodes/{episode_id}", timeout=10)
            if answer.ok:
                out[episode_id] = answer.json()["status"]
    return out


def compositions_on(folder: Path) -> list[int]:
    mark = str(folder).encode()
    return processes(lambda cmdline: b"ffmpeg" in cmdline and mark in cmdline)


def test_every_part_lands_where_its_node_resources_say(
        nodes: Nodes, service: tuple[str, Settings, Storage]) -> None:
    placed = actor_nodes(f"{PREFIX}:")
    head, coordinator_node = nodes.node_id("head"), nodes.node_id("coordinator")
    assert placed[f"{PREFIX}:coordinator"] == coordinator_node
    assert {placed[f"{PREFIX}:{kind}"] for kind in ("llm", "tts", "image")} == {head}
    replicas = [node for actor_id, node in actor_nodes("SERVE_REPLICA").items()
                if ":" not in actor_id]
    assert sorted(replicas) == sorted([head, coordinator_node])  # two replicas, two nodes


def test_episodes_survive_losing_the_coordinators_node_and_a_composition_node(
        nodes: Nodes, service: tuple[str, Settings, Storage], server: LocalServer) -> None:
    base_url, settings, storage = service
    episodes = [{"premise": f"A ferry crossing, night {n}.", "scenes": 2, "lines_per_scene": 2,
                 "seed": n} for n in range(2)]
    submitted = session().post(f"{base_url}/v1/episodes", json={"episodes": episodes},
                               timeout=60)
    assert submitted.status_code == 202, submitted.text
    ids = [e["id"] for e in submitted.json()["episodes"]]
    # A spare node for each role, as an autoscaler would bring: the lost ones' work goes there.
    nodes.add("coordinator-2", 0, {"coordinator": 1, "replica": 1})
    nodes.add("media-2", 1, {"media": 1})

    # Mid-run: some calls paid for. Whatever is in flight now is all a loss may pay again
    # (on a loaded machine the calls may all be answered by then, and the loss meets the
    # compositions instead: nothing may then be paid again).
    wait_for(lambda: sum(s["paid"] for s in server.stats().values()) >= 4, 60,
             "some calls to be paid for", interval=0.02)
    in_flight = sum(s["inflight"] for s in server.stats().values())
    nodes.remove("coordinator")  # its raylet and workers killed: the coordinator and a replica
    wait_for(lambda: actor_nodes(f"{PREFIX}:coordinator").get(f"{PREFIX}:coordinator")
             == nodes.node_id("coordinator-2"), 60, "the coordinator back on the spare node")

    wait_for(lambda: compositions_on(nodes.scratch("media")), 120,
             "a composition on the first media node")
    nodes.remove("media")

    def all_done() -> bool:
        now = statuses(base_url, ids)
        assert "failed" not in now.values(), now
        return len(now) == len(ids) and set(now.values()) == {"completed"}

    wait_for(all_done, 240, "every episode to complete")
    # Paid again: at most what was in flight when the coordinator's node went.
    duplicates = {endpoint: s["duplicate_paid"] for endpoint, s in server.stats().items()}
    assert sum(duplicates.values()) <= in_flight, (duplicates, in_flight)
    # (what the loss cost, for docs/cluster.md: pytest -s shows it)
    print(f"\nnode loss cost: {sum(duplicates.values())} call(s) paid again, "
          f"{in_flight} in flight at the loss; paid in all: "
          f"{sum(s['paid'] for s in server.stats().values())}")
    # The work that was lost ran again on the spare media node, in its own scratch folder.
    assert nodes.scratch("media-2").is_dir()
    for episode_id in ids:
        folder = EpisodeFolder(episode_id)
        for artifact in Artifact:
            assert storage.exists(folder.artifact(artifact)), (episode_id, artifact)
        video = session().get(f"{base_url}/v1/episodes/{episode_id}/artifacts/episode.mp4",
                              headers={"Range": "bytes=0-99"}, timeout=60)
        assert video.status_code == 206 and video.content[4:8] == b"ftyp"
        assert video.headers["content-range"].startswith("bytes 0-99/")
    # The CLI on any machine reads the same store, with no Ray: what a person runs to look.
    listed = showrunner(settings, "list", "--json")
    assert {row["id"]: row["status"] for row in json.loads(listed.stdout)} == dict.fromkeys(
        ids, "completed")
    status = showrunner(settings, "status", ids[0])
    assert f"episode   {ids[0]}: completed, 100.0%" in status.stdout
    assert f"file      {storage.where(EpisodeFolder(ids[0]).artifact(Artifact.VIDEO))}" in (
        status.stdout)
    password = make_url(settings.state_url.get_secret_value()).password
    assert password and password not in listed.stdout + status.stdout + status.stderr


def showrunner(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own, given only the storage and the state store."""
    assert settings.state_url is not None
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SHOWRUNNER_", "RAY_"))}
    result = subprocess.run(
        [sys.executable, "-m", "showrunner", *args], capture_output=True, text=True,
        env={**clean, "SHOWRUNNER_STORAGE": settings.storage,
             "SHOWRUNNER_STATE_URL": settings.state_url.get_secret_value()}, timeout=60)
    assert result.returncode == 0, result.stderr
    return result
