"""Helpers shared by the tests: waiting for a condition, and finding processes."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import socket
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


def stays(predicate: Callable[[], object], seconds: float, what: What,
          interval: float = INTERVAL_S) -> None:
    """Ask ``predicate`` for ``seconds``; fail the test naming ``what`` the first time it gives
    a false value. The other half of ``wait_for``: a state once reached is kept (nothing comes
    back to life), which no single look can tell."""
    deadline = time.monotonic() + seconds
    while True:
        if not predicate():
            pytest.fail(f"no longer true within {seconds:g} s: "
                        f"{what() if callable(what) else what}")
        if time.monotonic() > deadline:
            return
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


def marked_processes(marker: str, session: int | None = None) -> list[int]:
    """Live processes whose environment holds ``marker`` (``NAME=value``, set on whatever a
    test starts, so its children carry it too), or in process session ``session``."""
    needle = marker.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()  # after the name
            if fields[0] == "Z":
                continue  # exited; only its parent's wait is missing
            in_session = session is not None and int(fields[4]) == session
            marked = needle in (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not ours to read
        if in_session or marked:
            found.append(int(entry.name))
    return found


def free_port() -> int:
    """A loopback port free now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


@contextlib.contextmanager
def filled(folder: Path, name: str = "filler") -> Iterator[Path]:
    """Every block left on ``folder``'s filesystem taken by one file, given back after."""
    filler = folder / name
    # Unbuffered: a buffered file keeps what the full disk refused and fails again on close.
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        with contextlib.suppress(OSError):  # ENOSPC once every block is taken
            while True:
                os.write(fd, b"\0" * 65536)
    finally:
        os.close(fd)
    try:
        yield filler
    finally:
        filler.unlink(missing_ok=True)


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """``folder`` read-only for every process while the context lasts, what it holds kept.

    Permissions do not stop root (as CI runs), so as root the folder is bind-mounted read-only
    over itself: writes fail with EROFS from the kernel, as on a disk mounted read-only.
    Otherwise its folders lose their write bits (``chmod 0o555``)."""
    if os.geteuid() != 0:
        folders = [folder, *(p for p in folder.rglob("*") if p.is_dir())]
        modes = {p: p.stat().st_mode for p in folders}
        for p in folders:
            p.chmod(0o555)
        try:
            yield folder
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    bound = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True,
                           text=True)
    if bound.returncode != 0:
        unavailable("a bind mount, to make a folder read-only for root",
                    f"give the tests CAP_SYS_ADMIN ({bound.stderr.strip()})")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)
