"""The shell blocks of the project's documents, and which of them the tests run.

A fenced block whose info string names a shell (```` ```sh ````, ```` ```bash ````,
```` ```console ```` ...) is a command sequence a reader pastes as it is. Each one is either
run by ``tests/commands/test_documented_commands.py`` (it is named in ``RUN_IN_TESTS``) or
says why not, in a one-line HTML comment just above its fence (blank lines between are fine)::

    <!-- not run in tests: needs an AWS account -->

A block that is neither fails ``tests/unit/test_documented_commands.py``: a documented command
that nothing runs and nobody decided about is how "works as written" rots. Pure text handling:
no Ray, no processes, so both tiers import it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SHELLS = frozenset({"sh", "bash", "zsh", "shell", "console", "shell-session"})
# Transcripts: a command is a line after a "$ " prompt (with its backslash continuations); the
# other lines are what it printed, which a shell must not run.
PROMPTED = frozenset({"console", "shell-session"})
PROMPT = "$ "
CONTINUATION_PROMPT = "> "

MARKER_START = "<!-- not run in tests"
MARKER = re.compile(r"^<!-- not run in tests:(?P<reason>.*)-->$")
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


class DocumentError(ValueError):
    """A document breaks the rules above; the message says where and how."""


@dataclass(frozen=True)
class ShellBlock:
    """One fenced shell block of a document."""

    source: str  # the document, relative to the repository root
    line: int  # the line of its opening fence, from 1
    language: str
    script: str  # what a shell runs: a transcript's commands without prompts or output
    not_run: str | None  # the marker's reason; None for a block without one

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass(frozen=True)
class Locator:
    """Finds one block: the document it is in and text that one of its lines holds.

    Text rather than a position, so that editing the prose around a block, or its other lines,
    keeps it found; a locator that finds no block, or two, fails the unit test instead of
    silently running less.
    """

    source: str
    text: str

    def finds(self, block: ShellBlock) -> bool:
        return block.source == self.source and any(
            self.text in line for line in block.script.splitlines())


# The blocks the integration test runs, by the name its checks use. Representative and quick: the
# one-machine cluster (`ray start`, token authentication, `ray job submit`, the head stopped)
# and the settings a real provider needs; the rest say why not where they stand.
RUN_IN_TESTS: dict[str, Locator] = {
    "one-machine-cluster": Locator("docs/cluster.md", "ray job submit --address"),
    "real-provider-settings": Locator("README.md", ".venv/bin/showrunner config"),
}

# Not run, for the reason given, in documents whose markers are still to be written. Their
# reasons belong above the blocks themselves (this list is for the time until they are); an
# entry that no longer finds an unmarked block fails the unit test so that it is removed.
AWAITING_MARKERS: dict[Locator, str] = {
    Locator("docs/metrics.md", "ray start --head --metrics-export-port=8080"):
        "starts a head on a fixed port in the default temp dir and leaves it running",
    Locator("docs/metrics.md", "ray metrics launch-prometheus"):
        "downloads Prometheus and runs it until stopped",
    Locator("docs/metrics.md", "cp dashboards/showrunner.json /tmp/ray/session_latest"):
        "needs a running head with its dashboard, in the default temp dir",
}


def parse(text: str, source: str) -> list[ShellBlock]:
    """The shell blocks of one Markdown document, in order.

    Fences follow CommonMark: three or more backticks or tildes, indented by any number of spaces
    (inside list items); the block ends at a fence of the same character at least as long, and its
    lines lose the opening fence's indentation. Markers are looked for outside fences only, so a
    document may show one in a code block.
    """
    lines = text.splitlines()
    blocks: list[ShellBlock] = []
    pending: tuple[int, str] | None = None  # a marker not yet followed by its block
    number = 0
    while number < len(lines):
        line = lines[number]
        number += 1
        stripped = line.strip()
        opening = FENCE.match(line)
        if opening is None:
            if stripped.startswith(MARKER_START):
                _check_no_pending(pending, source)
                pending = (number, _reason(stripped, source, number))
            elif stripped:
                _check_no_pending(pending, source)
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        language = (opening["info"].split() or [""])[0].lower()
        body, number = _body(lines, number, fence, source)
        if language not in SHELLS:
            _check_no_pending(pending, source)
            continue
        content = [row[min(indent, len(row) - len(row.lstrip(" "))):] for row in body]
        script = _commands(content) if language in PROMPTED else "\n".join(content) + "\n"
        blocks.append(ShellBlock(source, number - len(body) - 1, language, script,
                                 pending[1] if pending else None))
        pending = None
    _check_no_pending(pending, source)
    return blocks


def _reason(stripped: str, source: str, number: int) -> str:
    marker = MARKER.match(stripped)
    if marker is None:
        raise DocumentError(f"{source}:{number}: a marker is one line, "
                            f"'{MARKER_START}: <why> -->': {stripped!r}")
    reason = marker["reason"].strip()
    if not reason:
        raise DocumentError(f"{source}:{number}: the marker gives no reason")
    return reason


def _check_no_pending(pending: tuple[int, str] | None, source: str) -> None:
    if pending is not None:
        raise DocumentError(f"{source}:{pending[0]}: a marker must stand just above the fence of "
                            "the shell block it is about")


def _body(lines: list[str], start: int, fence: str, source: str) -> tuple[list[str], int]:
    """The lines of the block opened on line ``start`` (its number, from 1), and the number of its
    closing fence."""
    closing = re.compile(rf"^ *{re.escape(fence[0])}{{{len(fence)},}} *$")
    for number in range(start, len(lines)):
        if closing.match(lines[number]):
            return lines[start:number], number + 1
    raise DocumentError(f"{source}:{start}: the fence opened here is never closed")


def _commands(transcript: list[str]) -> str:
    """The commands of a terminal transcript, as a shell reads them."""
    commands: list[str] = []
    continued = False
    for row in transcript:
        if continued:
            commands.append(row.removeprefix(CONTINUATION_PROMPT))
        elif row.startswith(PROMPT):
            commands.append(row.removeprefix(PROMPT))
        else:
            continue  # output
        continued = row.endswith("\\")
    return "\n".join(commands) + "\n"


def documents(root: Path) -> list[Path]:
    """The documents whose commands are promised to work: the README and every page of docs/."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def documented_blocks(root: Path) -> list[ShellBlock]:
    return [block for path in documents(root)
            for block in parse(path.read_text(), path.relative_to(root).as_posix())]


def classify(blocks: Iterable[ShellBlock], run: dict[str, Locator],
             awaiting: dict[Locator, str]) -> tuple[dict[str, ShellBlock], list[str]]:
    """Each name of ``run`` with the block it finds, and every problem: an unmarked block that is
    neither run nor awaiting its marker, a locator that finds no unmarked block, or more than one.
    """
    unmarked = [block for block in blocks if block.not_run is None]
    found: dict[str, ShellBlock] = {}
    problems: list[str] = []
    claimed: set[ShellBlock] = set()
    named: list[tuple[str | None, Locator]] = [*run.items(), *((None, loc) for loc in awaiting)]
    for name, locator in named:
        matches = [block for block in unmarked if locator.finds(block)]
        if len(matches) != 1:
            places = ", ".join(block.where for block in matches) or "none"
            role = f"run as {name}" if name else "awaiting its marker"
            problems.append(f"{locator.source}: {locator.text!r} ({role}) should find exactly "
                            f"one unmarked shell block; it finds {places}")
            continue
        claimed.add(matches[0])
        if name is not None:
            found[name] = matches[0]
    for block in unmarked:
        if block not in claimed:
            problems.append(
                f"{block.where}: a shell block that no test runs. Put "
                f"'{MARKER_START}: <why> -->' on the line above its fence, or have "
                "tests/commands/test_documented_commands.py run it (RUN_IN_TESTS in "
                "tests/markdown_blocks.py)")
    return found, problems
