"""The bundled server's media work, run below its caller in CPU priority.

A real provider speaks, draws and renders on its own machines; this server does it on the
caller's, beside the event loops that keep the caller's provider calls moving (Showrunner's
provider actors and coordinator). Those must not queue for a CPU behind a picture being drawn,
so the worker threads (on Linux a thread has its own nice value) and the ffmpeg children of media
work run at a lower priority. Where the system refuses, the work simply runs at the usual one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

NICENESS = 10
T = TypeVar("T")


def lower_priority(pid: int | None = None) -> None:
    """Lower a child process's priority, or with no ``pid`` the calling thread's."""
    if not hasattr(os, "setpriority"):  # Windows
        return
    if pid is None and not sys.platform.startswith("linux"):
        return  # elsewhere a thread has no nice value of its own: leave the whole server's be
    target = threading.get_native_id() if pid is None else pid
    with contextlib.suppress(OSError):  # ended already, or not allowed here
        # Never raise it: a caller already running niced keeps its lower priority.
        niceness = max(os.getpriority(os.PRIO_PROCESS, target), NICENESS)
        os.setpriority(os.PRIO_PROCESS, target, niceness)


_workers = ThreadPoolExecutor(thread_name_prefix="media", initializer=lower_priority)


async def in_background(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in a low-priority worker thread."""
    return await asyncio.get_running_loop().run_in_executor(_workers, functools.partial(fn, *args))
