"""A driver killed with SIGKILL takes its run with it: no more paid calls, no process left behind.

Real processes and a real ``kill -9``: the bundled server's parent, then the ``showrunner`` CLI
with its own Ray. A process counts as gone once it is dead or a zombie (dead, not yet reaped by
whichever process adopted it: it runs nothing and pays for nothing).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from local_server.process import LocalServer
from tests.support import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
# The server's parent starts it on its main thread, or on a thread that ends before the parent
# dies: a parent-death signal tied to that thread would kill the server too early.
PARENT = """
import sys, threading
from local_server.process import LocalServer

server = LocalServer(latency_scale=0)
if sys.argv[1] == "thread":
    starter = threading.Thread(target=server.start)
    starter.start()
    starter.join()
else:
    server.start()
print(server.pid, server.url, flush=True)
sys.stdin.read()
"""
DIES_WITHIN_S = 5.0  # a child, or the whole of a killed CLI's Ray, is gone by then
STOPS_WITHIN_S = 3.0  # the last call of a killed CLI's run has ended by then
QUIET_S = 2.0  # twice a call's latency: no call starts or ends for this long
LLM_LATENCY_S = 1.0  # each call takes a second: calls are in flight when the CLI is killed


@dataclass(frozen=True)
class Proc:
    """A process, told apart from a later one that reuses its pid by its start time."""

    pid: int
    started: int

    @classmethod
    def of(cls, pid: int) -> Proc | None:
        fields = _stat(pid)
        return cls(pid, int(fields[19])) if fields else None

    def running(self) -> bool:
        fields = _stat(self.pid)
        return fields is not None and int(fields[19]) == self.started and fields[0] != "Z"

    def name(self) -> str:
        try:
            return Path(f"/proc/{self.pid}/cmdline").read_bytes().replace(b"\0", b" ")[:60].decode()
        except OSError:
            return "?"


def _stat(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` after the command name: state, ppid, ..., start time at index 19."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _descendants(root: int) -> set[Proc]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if proc := Proc.of(pid):
            found.add(proc)
        todo += children.get(pid, [])
    return found


def _started_by_raylet(raylet_pid: int) -> set[Proc]:
    """The agents and workers of a raylet, wherever they were reparented: Ray sets
    ``RAY_RAYLET_PID`` in their environment."""
    mark = f"RAY_RAYLET_PID={raylet_pid}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            marked = entry.name.isdigit() and mark in (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marked and (proc := Proc.of(int(entry.name))):
            found.add(proc)
    return found


def _is_raylet(proc: Proc) -> bool:
    try:
        return Path(f"/proc/{proc.pid}/exe").resolve().name == "raylet"
    except OSError:
        return False


def _kill_all(procs: set[Proc]) -> None:
    for proc in procs:
        if proc.running():
            os.kill(proc.pid, signal.SIGKILL)


# -- the bundled server's child process ------------------------------------------------------------


@pytest.mark.parametrize("started_on", ["main", "thread"])
def test_the_bundled_server_dies_with_its_parent(started_on: str) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, started_on], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    server: Proc | None = None
    try:
        assert parent.stdout is not None
        pid, url = parent.stdout.readline().split()
        server = Proc.of(int(pid))
        assert server is not None
        # Alive and answering after the thread that started it has ended.
        with urllib.request.urlopen(f"{url}/stats", timeout=10) as response:
            assert response.status == 200
        parent.kill()
        parent.wait()
        wait_for(lambda: not server.running(), DIES_WITHIN_S,
                 f"the server (pid {server.pid}) to die with its parent")
    finally:
        parent.kill()
        parent.wait()
        if server is not None:
            _kill_all({server})


# -- the CLI and its own Ray -----------------------------------------------------------------------


class Activity:
    """When the server's chat counters last moved: a call starting or ending."""

    def __init__(self, server: LocalServer) -> None:
        self.server = server
        self.seen: tuple[int, int] | None = None
        self.moved_at = time.monotonic()

    def quiet_for(self, seconds: float) -> bool:
        chat = self.server.stats()["chat"]
        now = (chat["accepted"], chat["inflight"])
        if now != self.seen:
            self.seen, self.moved_at = now, time.monotonic()
        return chat["inflight"] == 0 and time.monotonic() - self.moved_at >= seconds

    def calls(self) -> int:
        chat = self.server.stats()["chat"]
        return chat["accepted"] + chat["inflight"]


@pytest.fixture
def ray_tmpdir() -> Iterator[Path]:
    """The CLI's own Ray temp folder: no ``ray start`` cluster of this machine is joined, and
    the socket paths under it stay short."""
    folder = Path(tempfile.mkdtemp(prefix="sr-ray-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _start_cli(server: LocalServer, ray_tmpdir: Path, output: Path, log: IO[str]
               ) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SHOWRUNNER_", "RAY_"))}
    env = {**clean, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": str(ray_tmpdir),
           "SHOWRUNNER_LLM__BASE_URL": server.base_url, "SHOWRUNNER_LLM__API_KEY": "sk-test"}
    return subprocess.Popen(
        [sys.executable, "-m", "showrunner", "run", "--premise", "A slow heist",
         "--episodes", "4", "--scenes", "30", "--continuity", "none", "--script-only",
         "--output", str(output)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, text=True, cwd=ROOT,
        env=env, start_new_session=True,
    )


def test_a_killed_cli_stops_spending_and_leaves_no_process(
    local_server: Callable[..., LocalServer], ray_tmpdir: Path, tmp_path: Path
) -> None:
    server = local_server(latency_scale=1.0, llm_latency=LLM_LATENCY_S, llm_jitter=0.0)
    activity = Activity(server)
    log_path = tmp_path / "cli.log"
    session: set[Proc] = set()
    raylet: Proc | None = None
    with log_path.open("w") as log:
        cli = _start_cli(server, ray_tmpdir, tmp_path / "out", log)
    try:
        def calling() -> bool:
            assert cli.poll() is None, log_path.read_text()[-3000:]
            return activity.calls() >= 3

        wait_for(calling, 180, lambda: "the run's calls: " + log_path.read_text()[-3000:],
                 interval=0.2)
        session = _descendants(cli.pid)
        [raylet] = [p for p in session if _is_raylet(p)]
        session |= _started_by_raylet(raylet.pid)
        names = " | ".join(sorted(p.name() for p in session))
        assert "local_server" in names and "ray::ProviderActor" in names, names

        # Its whole process group, as a shell's `kill -9 %1` or a CI runner's timeout does.
        os.killpg(cli.pid, signal.SIGKILL)
        cli.wait()
        killed_at = time.monotonic()

        wait_for(lambda: activity.quiet_for(QUIET_S), STOPS_WITHIN_S + QUIET_S + 5,
                 "the server to see no more calls")
        stopped_after = activity.moved_at - killed_at
        assert stopped_after <= STOPS_WITHIN_S, f"calls went on {stopped_after:.1f} s"

        def left() -> list[str]:
            current = session | _started_by_raylet(raylet.pid)
            return sorted(p.name() for p in current if p.running())

        wait_for(lambda: not left(), DIES_WITHIN_S,
                 lambda: f"the CLI's processes to end; still running: {left()}")
    finally:
        cli.kill()
        cli.wait()
        _kill_all(session | (_started_by_raylet(raylet.pid) if raylet else set()))
