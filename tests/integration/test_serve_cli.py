"""``showrunner serve``: bad input stops at start; a real start serves, and Ctrl-C stops it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.test_cli import ROOT, showrunner
from tests.support import wait_for

pytestmark = pytest.mark.integration

KEY = "serve-cli-0123456789abcdef"


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["serve", "--host", "0.0.0.0"], {}, "refusing to listen on 0.0.0.0"),
        (["serve"], {"SHOWRUNNER_API_KEYS": "short"}, "shorter than 16"),
        (["serve"], {"SHOWRUNNER_API_KEYS_FILE": "/nonexistent/keys"}, "cannot read"),
        (["serve", "--port", "70000"], {}, "port"),
        (["serve", "--latency-scale", "-2"], {}, "local_latency_scale"),
    ],
)
def test_bad_serve_input_is_one_line_and_exit_2(args: list[str], env: dict[str, str],
                                                needle: str) -> None:
    result = showrunner(*args, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.stderr


@contextlib.contextmanager
def serving(tmp_path: Path, **env: str) -> Iterator[tuple[str, list[str], subprocess.Popen]]:
    """``showrunner serve`` on a free port until it says where; killed if a test fails."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SHOWRUNNER_", "RAY_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "showrunner", "serve", "--port", str(port), "--latency-scale", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env={**clean, "PYTHONPATH": str(ROOT),
             "SHOWRUNNER_SERVICE__OUTPUT_DIR": str(tmp_path / "episodes"), **env},
        start_new_session=True,
    )
    seen: list[str] = []
    threading.Thread(target=lambda: seen.extend(iter(proc.stdout.readline, "")),
                     daemon=True).start()
    def listening() -> bool:
        assert proc.poll() is None, "".join(seen)[-3000:]
        return any("Showrunner API on" in line for line in seen)

    try:
        wait_for(listening, 120, lambda: "the API to listen: " + "".join(seen)[-3000:], 0.2)
        yield f"http://127.0.0.1:{port}", seen, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_serve_answers_over_http_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    with serving(tmp_path, SHOWRUNNER_API_KEYS=KEY) as (base, seen, proc):
        auth = {"Authorization": f"Bearer {KEY}"}
        made = requests.post(f"{base}/v1/episodes", headers=auth, timeout=30, json={
            "premise": "A robot learns to knit.", "scenes": 2, "lines_per_scene": 1,
            "media": False})
        assert made.status_code == 202, made.text
        url = base + made.json()["links"]["self"]

        def ended() -> str | None:
            status = requests.get(url, headers=auth, timeout=10).json()["status"]
            return None if status in ("queued", "running") else status

        assert wait_for(ended, 60, "the episode to end", interval=0.2) == "completed"
        assert requests.get(url, timeout=10).status_code == 401
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, "".join(seen)[-3000:]


def test_without_keys_it_serves_this_machine_as_one_tenant(tmp_path: Path) -> None:
    with serving(tmp_path) as (base, seen, proc):
        assert any("no API keys configured" in line for line in seen)
        listed = requests.get(f"{base}/v1/episodes", timeout=10)
        assert listed.status_code == 200 and listed.json()["episodes"] == []
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
