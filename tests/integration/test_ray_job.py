"""``ray job submit --working-dir . -- python -m showrunner run ...`` against a real cluster.

The cluster is a head node of its own, started with ``ray start --head --block`` as a child in a
session of its own: the suite's session Ray (``ray.init`` in conftest) and any other Ray on this
machine are left alone. Every port the head opens is picked free, its temp dir is its own (and
short: unix socket paths are limited to ~107 bytes), so it never reads or writes
``/tmp/ray/ray_current_cluster``, and it has its own auth token, given in the environment.

It is stopped as a supervisor stops ``ray start --block``: SIGTERM to that one process, which
drains the node and then ends every process it started. ``ray stop`` is never used: it stops every
Ray on the machine. The processes Ray starts inherit the environment of ``ray start``, so a marker
there (plus the session id) lets the test check that none of them survives.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import marked_processes, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent  # the virtualenv's bin: its `ray`, and `python` for the job
MARKER = "TEST_RAY_JOB_CLUSTER"  # not SHOWRUNNER_: the settings read those
START_TIMEOUT_S = 60.0
JOB_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
DRAIN_S = 5  # SIGTERM drains a node for this long at most (Ray's default, 30 s, is for Serve)
START_ATTEMPTS = 2  # a free port picked here can be taken before Ray binds it: try again once


def free_ports(count: int) -> list[int]:
    """Distinct ports free on every interface (held open together, so none repeats)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("", 0))
            ports.append(sock.getsockname()[1])
        return ports


def cluster_env(marker: str, auth_token: str) -> dict[str, str]:
    """This environment without Ray or Showrunner settings, the venv's bin first on PATH (the job
    runs ``python`` from PATH, as on a node where the project's environment is active).

    Token authentication is on, with this cluster's own token: the user's ``~/.ray/auth_token``,
    shared by every Ray the user starts, is neither read nor created.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SHOWRUNNER_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env[MARKER] = marker
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN"] = auth_token
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = str(DRAIN_S)  # an idle node stops at once
    return env


@dataclass
class Head:
    """A running head node: where its dashboard (the Jobs API) is, and how to stop it."""

    proc: subprocess.Popen[bytes]
    dashboard_url: str
    temp_dir: Path
    marker: str
    env: dict[str, str]  # for the `ray` commands that talk to this cluster
    log: Path

    def pids(self) -> list[int]:
        return marked_processes(f"{MARKER}={self.marker}", self.proc.pid)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def get(self, path: str) -> Any:
        """GET from the dashboard with this cluster's token: the JSON answer."""
        request = urllib.request.Request(
            f"{self.dashboard_url}{path}",
            headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def dashboard_up(self) -> bool:
        try:
            self.get("/api/version")
        except (urllib.error.URLError, OSError, ValueError):
            return False
        return True

    def stop(self) -> None:
        """SIGTERM to ``ray start --block``: it drains the node, then ends what it started."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=STOP_TIMEOUT_S)  # if not, the survivors check says so

    def kill_leftovers(self) -> None:
        """Last resort after a failed test, so no process of this cluster outlives it."""
        for pid in self.pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


def start_head(temp_dir: Path) -> Head:
    """``ray start --head --block`` on free ports, in a session of its own (not yet up)."""
    marker = uuid.uuid4().hex
    env = cluster_env(marker, auth_token=secrets.token_hex(32))
    (gcs, dashboard, object_manager, node_manager, client_server, agent_http, agent_grpc,
     runtime_env_agent, metrics) = free_ports(9)
    command = [
        str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--temp-dir", str(temp_dir),
        "--port", str(gcs), "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
        "--dashboard-port", str(dashboard), "--object-manager-port", str(object_manager),
        "--node-manager-port", str(node_manager), "--ray-client-server-port", str(client_server),
        "--dashboard-agent-listen-port", str(agent_http),
        "--dashboard-agent-grpc-port", str(agent_grpc),
        "--runtime-env-agent-port", str(runtime_env_agent),
        "--metrics-export-port", str(metrics),
        "--min-worker-port", "0", "--max-worker-port", "0",  # workers: random free ports
    ]
    log = temp_dir / f"ray-start-{marker[:8]}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=temp_dir,
                                env=env, start_new_session=True)
    return Head(proc, f"http://127.0.0.1:{dashboard}", temp_dir, marker, env, log)


@pytest.fixture
def head() -> Iterator[Head]:
    temp_dir = Path(tempfile.mkdtemp(prefix="srj-", dir="/tmp"))  # short: socket paths
    started: list[Head] = []
    try:
        for attempt in range(1, START_ATTEMPTS + 1):
            node = start_head(temp_dir)
            started.append(node)
            wait_for(lambda n=node: n.dashboard_up() or n.proc.poll() is not None,
                     START_TIMEOUT_S, lambda n=node: f"the dashboard:\n{n.log_tail()}", 0.25)
            if node.proc.poll() is None:
                break
            assert attempt < START_ATTEMPTS, (
                f"ray start exited {node.proc.returncode}:\n{node.log_tail()}")
        yield node
    finally:
        for node in started:
            if node.pids():  # a failed start, or the test stopped before stopping the cluster
                node.stop()
                node.kill_leftovers()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_episodes_and_names_outputs(head: Head, tmp_path: Path) -> None:
    out = tmp_path / "job-out"
    submission_id = f"showrunner-test-{head.marker[:8]}"
    result = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", head.dashboard_url,
         "--submission-id", submission_id, "--working-dir", str(ROOT), "--",
         "python", "-m", "showrunner", "run", "--premise",
         "A lighthouse keeper hides a smuggler.",
         "--scenes", "2", "--lines", "2", "--script-only", "--latency-scale", "0",
         "--output", str(out)],
        capture_output=True, text=True, env=head.env, cwd=tmp_path, timeout=JOB_TIMEOUT_S,
    )
    logs = result.stdout + result.stderr
    assert result.returncode == 0, logs[-4000:]
    assert f"Job '{submission_id}' succeeded" in logs, logs[-4000:]

    report_file = out / "report.json"
    report = json.loads(report_file.read_text())
    [episode] = report["episodes"]
    assert episode["status"] == "completed" and episode["scenes_completed"] == 2
    folder = Path(episode["output_dir"])
    assert folder.parent == out
    assert (folder / "script.json").is_file() and (folder / "script.md").is_file()
    assert not (folder / "episode.mp4").exists()  # --script-only

    # The job's logs say where the output and the report are (a long path may wrap there).
    flat = "".join(logs.split())
    assert f"Report:{report_file}" in flat, logs[-4000:]

    # The driver joined this cluster (RAY_ADDRESS), rather than starting a Ray of its own.
    actors = head.get("/api/v0/actors?limit=1000")["data"]["result"]["result"]
    assert "showrunner:coordinator" in {a.get("name") for a in actors}

    # --working-dir uploads the repository as git sees it: no .venv (hundreds of MB), no .git
    # (both left out by Ray itself), nothing .gitignore names (Ray reads it).
    [unpacked] = head.temp_dir.glob("session_latest/runtime_resources/working_dir_files/*/")
    assert (unpacked / "showrunner" / "cli.py").is_file()
    assert (unpacked / "pyproject.toml").is_file()
    assert not (unpacked / ".venv").exists() and not (unpacked / ".git").exists()
    ignored = [p for p in ("pipelines/__pycache__", "showrunner.egg-info", ".pytest_cache",
                           ".ruff_cache", ".hypothesis", "out") if (ROOT / p).exists()]
    assert ignored, "expected some git-ignored path in the checkout (pipelines/__pycache__)"
    assert [p for p in ignored if (unpacked / p).exists()] == []

    assert head.pids(), "the cluster should still be running here"
    head.stop()
    wait_for(lambda: not head.pids(), STOP_TIMEOUT_S, "every process of the cluster to exit")
    assert head.proc.returncode is not None, head.log_tail()
