"""The bundled server's media work and the pipeline's encodes run below their callers' CPU
priority: real child processes and threads, their nice values read back from the system."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading

import pytest

from local_server.background import NICENESS, in_background, lower_priority
from pipelines import composition

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="a thread's own nice value is a Linux feature")


def _nice_of_this_thread() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_media_work_runs_in_a_lower_priority_thread() -> None:
    before = _nice_of_this_thread()
    niceness = asyncio.run(in_background(_nice_of_this_thread))
    assert niceness == max(before, NICENESS)  # lowered, never raised
    assert _nice_of_this_thread() == before  # the caller's own thread is left as it was


@pytest.mark.parametrize("lower", [lower_priority, composition.lower_priority])
def test_a_child_process_is_lowered_and_an_ended_one_ignored(lower) -> None:  # noqa: ANN001
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        os.setpriority(os.PRIO_PROCESS, child.pid, 15)  # already lower: left as it is
        lower(child.pid)
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == 15
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            lower(other.pid)
            assert os.getpriority(os.PRIO_PROCESS, other.pid) == max(NICENESS, os.nice(0))
        finally:
            other.kill()
            other.wait()
    finally:
        child.kill()
        child.wait()
    lower(child.pid)  # reaped: no such process any more, and no error
