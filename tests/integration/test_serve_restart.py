"""The whole service stopped and started again on the same storage, through real ``serve.run``s
on loopback: every episode is listed again, a finished one's files are served, an unfinished one
goes on to its end, and an idempotency key still names its episode."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from ray import serve

import serve_app
from pipelines.settings import load_settings
from tests.integration.test_serve_app import client, events, script
from tests.support import free_port, wait_for

pytestmark = pytest.mark.integration

KEY = "key-restart-0123456789"
PREFIX = "serve-restart"


def test_a_restarted_service_lists_serves_and_finishes_every_episode(
        ray_session: None, tmp_path: Path) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    settings = load_settings(api_keys=KEY, storage=str(tmp_path),
                             service={"local_latency_scale": 0.3})

    def start() -> None:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(serve_app.build_app(settings, prefix=PREFIX), name=PREFIX, route_prefix="/")

    def stop() -> None:
        serve.shutdown()
        serve_app.stop_service(PREFIX)

    start()
    try:
        short = client(KEY).post(f"{base_url}/v1/episodes", json=script(), timeout=30).json()
        assert events(base_url + short["links"]["events"], KEY)[-1]["kind"] == "completed"
        keyed = {"Idempotency-Key": "restart-1"}
        long = client(KEY).post(f"{base_url}/v1/episodes", json=script(scenes=12),
                                headers=keyed, timeout=30).json()
        wait_for(status_of(base_url, long["id"], "running"), 30, "the long one to run")
    finally:
        stop()
    start()
    try:
        listed = client(KEY).get(f"{base_url}/v1/episodes", timeout=30).json()["episodes"]
        assert [e["id"] for e in listed] == [short["id"], long["id"]]
        script_md = client(KEY).get(base_url + listed[0]["artifacts"]["script.md"], timeout=30)
        assert script_md.status_code == 200 and script_md.text.startswith("# ")
        again = client(KEY).post(f"{base_url}/v1/episodes", json=script(scenes=12),
                                 headers=keyed, timeout=30)
        assert again.json()["id"] == long["id"], again.text
        finished = events(base_url + long["links"]["events"], KEY)
        assert finished[-1]["kind"] == "completed"
        assert any("taken up again" in e["message"] for e in finished)
    finally:
        stop()


def status_of(base_url: str, episode_id: str, wanted: str) -> Callable[[], bool]:
    def check() -> bool:
        response = client(KEY).get(f"{base_url}/v1/episodes/{episode_id}", timeout=10)
        return response.ok and response.json()["status"] == wanted
    return check


