"""Helpers shared by the tests: waiting for a condition, and finding processes."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")
INTERVAL_S = 0.05


What = str | Callable[[], str]  # what is awaited; a callable is asked at the end, for the state


def wait_for(predicate: Callable[[], T], timeout: float, what: What,
             interval: float = INTERVAL_S) -> T:
    """Ask ``predicate`` until it gives a true value, and return that value; fail the test
    naming ``what`` if ``timeout`` seconds pass first. (Ray's ``wait_for_condition``.)"""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            _timed_out(timeout, what)
        time.sleep(interval)


async def wait_for_async(predicate: Callable[[], Awaitable[T] | T], timeout: float, what: What,
                         interval: float = INTERVAL_S) -> T:
    """``wait_for`` inside an event loop: ``predicate`` may be a coroutine function, and the
    loop runs while it waits."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            _timed_out(timeout, what)
        await asyncio.sleep(interval)


def _timed_out(timeout: float, what: What) -> None:
    pytest.fail(f"timed out after {timeout:g} s waiting for {what() if callable(what) else what}")


def processes(matching: Callable[[bytes], bool]) -> list[int]:
    """Pids of this machine's processes whose command line passes ``matching``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if matching(cmdline):
                found.append(int(entry.name))
    return found


def parent_of(pid: int) -> int | None:
    """The parent's pid of a live process; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the name, in brackets, may hold spaces


def descendants(pid: int) -> list[int]:
    """Pids of every live process below ``pid``, children first."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parent = parent_of(int(entry.name))
            if parent is not None:
                parents[int(entry.name)] = parent
    found, frontier = [], [pid]
    while frontier:
        below = [child for child, parent in parents.items() if parent in frontier]
        found += below
        frontier = below
    return found


def cmdline_of(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def unavailable(what: str, how: str) -> None:
    """Skip a test that needs something this machine lacks, saying how to get it; under
    ``CI=true`` fail instead, since CI provides everything."""
    message = f"needs {what}: {how}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI must run this test)")
    pytest.skip(message)


@contextlib.contextmanager
def small_disk(path: Path, size_bytes: int) -> Iterator[Path]:
    """A real filesystem of ``size_bytes`` at ``path`` (a tmpfs), so that writes past it fail
    with ENOSPC from the kernel. Needs root, as in CI."""
    if os.geteuid() != 0:
        unavailable("root, to mount a small tmpfs", "run the suite as root, as CI does")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)
