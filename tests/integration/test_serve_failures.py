"""The HTTP API while an actor it needs is down, through a real ``serve.run`` on loopback: actors'
processes are killed (``kill -9``: Ray restarts them, with empty memory) or stopped (``SIGSTOP``:
a hung actor), and every answer a client gets is checked. No mock of Ray.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import ray
import requests
from ray import serve

import serve_app
from actors.remote import NAMESPACE
from pipelines.settings import load_settings
from tests.integration.test_serve_app import client, events, free_port, script
from tests.support import wait_for

pytestmark = pytest.mark.integration

KEY_A = "key-a-failures-0123456789"
KEY_B = "key-b-failures-0123456789"
PREFIX = "serve-failures"
UNHEALTHY_AFTER_S = 6


@pytest.fixture(scope="module")
def base_url(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    settings = load_settings(
        api_keys=f"{KEY_A},{KEY_B}",
        storage=str(tmp_path_factory.mktemp("failures")),
        service={"local_latency_scale": 0.05, "unhealthy_after_s": UNHEALTHY_AFTER_S},
        encoding={"width": 320, "height": 180, "fps": 8, "x264_preset": "ultrafast"},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(serve_app.build_app(settings, prefix=PREFIX), name=PREFIX, route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    serve_app.stop_service(PREFIX)


def pid_of(role: str) -> int:
    """The process of one of the service's actors, asked of the actor itself."""
    actor = ray.get_actor(f"{PREFIX}:{role}", namespace=NAMESPACE)
    return ray.get(actor.__ray_call__.remote(lambda _: os.getpid()), timeout=30)


@contextlib.contextmanager
def stopped(*pids: int) -> Iterator[None]:
    """The processes hang (SIGSTOP) until the block ends, whatever happens in it."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def assert_unavailable(response: requests.Response) -> dict[str, Any]:
    """A 503 in the API's error shape, with a Retry-After."""
    assert response.status_code == 503, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json", response.text
    assert int(response.headers["retry-after"]) >= 1
    error = response.json()["error"]
    assert error["status"] == 503 and error["code"] == "unavailable", error
    return error


def answers_again(base_url: str) -> bool:
    if requests.get(f"{base_url}/readyz", timeout=10).status_code != 200:
        return False
    listed = client(KEY_B).get(f"{base_url}/v1/episodes", timeout=10)
    return listed.status_code == 200


def test_hung_actors_are_named_503_everywhere_and_unhealthy_after_a_while(base_url: str) -> None:
    episode = client(KEY_B).post(f"{base_url}/v1/episodes", json=script(), timeout=30).json()
    events(base_url + episode["links"]["events"], KEY_B)
    self_url = base_url + episode["links"]["self"]
    routes = [("GET", f"{base_url}/v1/episodes"), ("POST", f"{base_url}/v1/episodes"),
              ("GET", self_url), ("DELETE", self_url), ("GET", self_url + "/events"),
              ("GET", self_url + "/artifacts/script.json")]
    assert requests.get(f"{base_url}/healthz", timeout=10).json() == {"status": "ok"}

    with stopped(pid_of("tenants"), pid_of("llm")):
        def not_ready() -> dict[str, Any] | None:  # (a Response is false when not ok)
            response = requests.get(f"{base_url}/readyz", timeout=10)
            return response.json() if response.status_code == 503 else None

        checks = wait_for(not_ready, 20, "/readyz to fail")["checks"]
        assert checks["tenants"].startswith("unavailable") and checks["llm"].startswith(
            "unavailable") and checks["coordinator"] == "ok", checks
        for method, url in routes:
            body = script() if method == "POST" else None
            error = assert_unavailable(client(KEY_B).request(method, url, json=body, timeout=10))
            assert "tenants" in error["message"] and "llm" in error["message"], error
        assert client(None).get(f"{base_url}/v1/episodes", timeout=10).status_code == 401

        short = requests.get(f"{base_url}/healthz", timeout=10)  # a short outage: still alive
        assert short.status_code == 200 and short.json()["status"] == "degraded", short.text

        def unhealthy() -> dict[str, Any] | None:
            response = requests.get(f"{base_url}/healthz", timeout=10)
            return response.json() if response.status_code == 503 else None

        down = wait_for(unhealthy, UNHEALTHY_AFTER_S + 20, "/healthz to fail")
        assert down["status"] == "unhealthy" and set(down["down_s"]) == {"tenants", "llm"}
        assert min(down["down_s"].values()) >= UNHEALTHY_AFTER_S

    wait_for(lambda: answers_again(base_url), 30, "the service to answer again")
    assert requests.get(f"{base_url}/healthz", timeout=10).json() == {"status": "ok"}
    assert client(KEY_B).get(self_url, timeout=10).json()["status"] == "completed"


def test_killed_coordinator_is_503_until_back_and_open_streams_are_told(base_url: str) -> None:
    keyed = {"Idempotency-Key": "failures-long-1"}
    long = client(KEY_A).post(f"{base_url}/v1/episodes", json=script(scenes=40), headers=keyed,
                              timeout=30).json()
    lines: list[str] = []

    def follow() -> None:
        with client(KEY_A).get(base_url + long["links"]["events"], stream=True,
                               timeout=60) as response:
            lines.extend(response.iter_lines(decode_unicode=True))

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    wait_for(lambda: any(line.startswith("event:") for line in lines), 30, "the first event")

    os.kill(pid_of("coordinator"), signal.SIGKILL)
    answers: list[requests.Response] = []

    def answered() -> bool:  # the first of these reaches the dead process
        answers.append(client(KEY_A).get(f"{base_url}/v1/episodes", params={
            "status": "running"}, timeout=30))
        return answers[-1].status_code == 200

    wait_for(answered, 60, "the service to answer again")
    assert answers[0].status_code == 503, answers[0].text
    for response in answers[:-1]:
        assert_unavailable(response)

    reader.join(timeout=30)
    assert not reader.is_alive(), "the event stream did not end"
    named = [line.partition(":")[2].strip() for line in lines
             if line.startswith(("event:", "data:"))]
    assert named[-2] == "interrupted", lines[-6:]
    final = json.loads(named[-1])
    assert final["kind"] == "interrupted" and final["reason"] == "coordinator_unavailable", final

    wait_for(lambda: answers_again(base_url), 30, "the service to be ready")
    assert requests.get(f"{base_url}/healthz", timeout=10).status_code == 200  # was short
    # The restarted coordinator took the episode up again from the state store: it goes on, the
    # stream resumes after the last event seen, and its key still names it.
    # (A poll sent while the actor was restarting reaches the new one: the first stream may
    # already hold its first events, before a later poll was cut off.)
    seen = [json.loads(line.partition(":")[2]) for line in lines
            if line.startswith("data:") and '"seq"' in line]
    last_seen = seen[-1]["seq"]
    resumed = events(base_url + long["links"]["events"], KEY_A, last_event_id=last_seen)
    assert resumed[0]["seq"] == last_seen + 1 and resumed[-1]["kind"] == "completed", resumed[:3]
    every = seen + resumed
    assert [e["seq"] for e in every] == list(range(1, len(every) + 1)), "a gap or a repeat"
    assert sum("taken up again" in e["message"] for e in every) == 1, every[:5]
    listed = client(KEY_A).get(f"{base_url}/v1/episodes", timeout=10)
    assert long["id"] in {e["id"] for e in listed.json()["episodes"]}, listed.text
    replayed = client(KEY_A).post(f"{base_url}/v1/episodes", json=script(scenes=40),
                                  headers=keyed, timeout=30)
    assert replayed.json()["id"] == long["id"], replayed.text
    # New work runs as before.
    made = client(KEY_A).post(f"{base_url}/v1/episodes", json=script(), timeout=30)
    assert made.status_code == 202, made.text
    assert events(base_url + made.json()["links"]["events"], KEY_A)[-1]["kind"] == "completed"
    completed = client(KEY_A).get(f"{base_url}/v1/episodes", params={"status": "completed"},
                                  timeout=10).json()["episodes"]
    assert {long["id"], made.json()["id"]} <= {e["id"] for e in completed}


def test_a_killed_desk_forgets_nothing(base_url: str) -> None:
    """Owners and idempotency keys are the coordinator's, in its state store: the desk keeps
    nothing a restart could lose."""
    keyed = {"Idempotency-Key": "failures-desk-1"}
    first = client(KEY_B).post(f"{base_url}/v1/episodes", json=script(), headers=keyed,
                               timeout=30)
    assert first.status_code == 202, first.text
    os.kill(pid_of("tenants"), signal.SIGKILL)
    wait_for(lambda: answers_again(base_url), 60, "the service to answer again")
    listed = client(KEY_B).get(f"{base_url}/v1/episodes", params={"limit": 100}, timeout=10)
    assert first.json()["id"] in {e["id"] for e in listed.json()["episodes"]}, listed.text
    assert first.json()["id"] not in {e["id"] for e in client(KEY_A).get(
        f"{base_url}/v1/episodes", params={"limit": 100}, timeout=10).json()["episodes"]}
    again = client(KEY_B).post(f"{base_url}/v1/episodes", json=script(), headers=keyed,
                               timeout=30)
    assert again.json()["id"] == first.json()["id"], again.text
    other = client(KEY_B).post(f"{base_url}/v1/episodes", json=script(premise="Another."),
                               headers=keyed, timeout=30)
    assert other.status_code == 422, other.text
