"""Helpers shared by the integration tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


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
