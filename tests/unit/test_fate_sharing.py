"""What a driver's death takes with it, without Ray: children started from a thread that lives as
long as the process, and the keeper that ends what a dead driver's raylet left running.

Real processes (``sleep``), killed or spared by the real keeper script.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from local_server.process import LastingThread, die_with_parent
from showrunner.launcher import children, raylet_child, start_keeper
from tests.support import wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's /proc")
FAKE_RAYLET = 999_999_999  # above any pid: marks no real raylet's processes


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """``sleep`` processes the test starts; every one is ended after it."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def _sleep(started: list[subprocess.Popen[bytes]], program: str = "sleep",
           **env: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([program, "60"], env={**os.environ, **env})
    started.append(proc)
    return proc


# -- the thread children are started from ----------------------------------------------------------


def test_the_main_thread_starts_children_itself() -> None:
    assert LastingThread().run(threading.get_ident) == threading.get_ident()


def test_a_passing_thread_has_children_started_by_one_that_stays() -> None:
    starter = LastingThread()
    idents: list[int] = []
    for _ in range(2):
        passing = threading.Thread(target=lambda: idents.append(starter.run(threading.get_ident)))
        passing.start()
        passing.join()  # the thread that asked has ended
    kept = {t.ident: t for t in threading.enumerate()}
    assert idents[0] == idents[1] and kept[idents[0]].is_alive() and kept[idents[0]].daemon


def test_errors_reach_the_thread_that_asked() -> None:
    def fail() -> None:
        raise FileNotFoundError("no such program")

    caught: list[BaseException] = []

    def ask() -> None:
        try:
            LastingThread().run(fail)
        except FileNotFoundError as err:
            caught.append(err)

    asker = threading.Thread(target=ask)
    asker.start()
    asker.join()
    assert [str(e) for e in caught] == ["no such program"]


def test_the_death_signal_is_set_before_exec() -> None:
    preexec = die_with_parent()
    assert preexec is not None
    # PR_GET_PDEATHSIG (2) in the child reports what the preexec set: SIGKILL.
    probe = ("import ctypes, signal; sig = ctypes.c_int(); "
             "ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0); print(sig.value)")
    out = subprocess.run([sys.executable, "-c", probe], preexec_fn=preexec, capture_output=True,
                         text=True, check=True).stdout
    assert int(out) == signal.SIGKILL


# -- the keeper of a node ------------------------------------------------------------------------


def test_the_keeper_waits_then_kills_the_named_and_the_marked(
    sleepers: list[subprocess.Popen[bytes]],
) -> None:
    agent = _sleep(sleepers)
    worker = _sleep(sleepers, RAY_RAYLET_PID=str(FAKE_RAYLET))
    other_node = _sleep(sleepers, RAY_RAYLET_PID=str(FAKE_RAYLET - 1))
    bystander = _sleep(sleepers)
    reused = _sleep(sleepers)  # its pid, named with another start time: a later process's
    agents = {agent.pid: children(os.getpid())[agent.pid], reused.pid: "1"}
    keeper = start_keeper(FAKE_RAYLET, agents)
    try:
        assert keeper.poll() is None and _running(agent.pid)  # not before its driver ends
        assert keeper.stdin is not None
        keeper.stdin.close()  # what the driver's end does
        assert keeper.wait(timeout=10) == 0
    finally:
        keeper.kill()
    wait_for(lambda: not _running(agent.pid) and not _running(worker.pid), 5,
             "the agent and the worker to be killed")
    assert all(_running(p.pid) for p in (other_node, bystander, reused))


def test_the_raylet_is_found_among_the_children(
    sleepers: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    # A parent of its own, so a node this test session started elsewhere is not in the way.
    raylet = tmp_path / "raylet"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", raylet)
    parent = subprocess.Popen(["sh", "-c", f'sleep 60 & "{raylet}" 60 & echo $!; wait'],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert parent.stdout is not None
        started = int(parent.stdout.readline())
        # Found once exec'd (until then the child is a copy of the shell).
        wait_for(lambda: raylet_child(parent.pid) == started, 5, "the raylet to be found")
        assert started in children(parent.pid)
        lone = _sleep(sleepers)
        assert raylet_child(lone.pid) is None  # no node started there
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()
