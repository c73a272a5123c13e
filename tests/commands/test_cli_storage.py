"""A storage folder the run cannot write to, read-only or full, as a user meets it with the
``showrunner`` command: one clear line and a non-zero exit, a store that still opens and says
what it said before, and, once the folder can be written again, the same command runs to the
end without paying twice for anything.

Every case starts from a copy of a storage with one episode a real run completed (``earlier``),
in one of the two states a user finds a store in: as that run left it (its SQLite WAL and
shared-memory files still there: the run's actors are killed, not closed), or closed, as any
``showrunner status`` or ``list`` since leaves it (SQLite removes them on the last close). It
is then broken (bind-mounted read-only, or filled up on a small tmpfs), a new command is run on
it, and it is mended. Every provider is the test's own bundled server, whose ledger says what
it billed twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from local_server.process import LocalServer
from tests.support import filled, read_only, small_disk

ROOT = Path(__file__).parents[2]
SCRIPT = ("--scenes", "1", "--lines", "1", "--script-only", "--latency-scale", "0")
EARLIER = ("run", "--premise", "A bakery heist.", *SCRIPT)
DISK_BYTES = 4 << 20
STORE_FILES = ("showrunner.db", "showrunner.db-wal", "showrunner.db-shm", "showrunner.db-journal")
FILLER = "filler"
PROBLEM = {"read-only": re.compile(r"not writable|read-only|Read-only file system", re.I),
           "full": re.compile(r"No space left on device|\bfull\b", re.I)}


@dataclass(frozen=True)
class Kind:
    """A case: how the folder is broken, and whether its store was closed before."""

    broken: str  # "read-only" or "full"
    closed: bool

    def __str__(self) -> str:
        return self.broken + (", store closed" if self.closed else "")

    def command(self) -> tuple[str, ...]:
        """A premise of its own: no answer one case paid for is another's to reuse."""
        return ("run", "--premise", f"A lighthouse keeper's last night ({self}).", *SCRIPT)


AS_LEFT = [Kind("read-only", closed=False), Kind("full", closed=False)]
CLOSED = [Kind("read-only", closed=True), Kind("full", closed=True)]


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    with LocalServer(latency_scale=0.0) as started:
        yield started


def showrunner(server: LocalServer, *args: str, timeout: float = 180
               ) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SHOWRUNNER_", "RAY_"))}
    providers = {f"SHOWRUNNER_{kind}__{name}": value for kind in ("LLM", "TTS", "IMAGE")
                 for name, value in (("BASE_URL", server.base_url), ("API_KEY", "sk-test"))}
    return subprocess.run([sys.executable, "-m", "showrunner", *args], capture_output=True,
                          text=True, env={**clean, **providers, "PYTHONPATH": str(ROOT)},
                          cwd=ROOT, timeout=timeout)


@dataclass(frozen=True)
class Earlier:
    folder: Path  # as the run left it
    episodes: list[str]


@pytest.fixture(scope="module")
def earlier(server: LocalServer, tmp_path_factory: pytest.TempPathFactory) -> Earlier:
    """A storage with one episode completed by a run, untouched since."""
    out = tmp_path_factory.mktemp("earlier") / "out"
    result = showrunner(server, *EARLIER, "--output", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    return Earlier(out, [entry["id"] for entry in report["episodes"]])


@dataclass
class Seen:
    """What the store said, through the commands a user reads it with."""

    listing: subprocess.CompletedProcess[str]  # list --json
    status: subprocess.CompletedProcess[str]  # status --json
    details: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, server: LocalServer, folder: Path, *, details: bool = True) -> Seen:
        """``list`` and ``status`` of the folder; with ``details``, ``status ID`` of each. (The
        commands run at once, as readers may: each is a second of start-up.)"""
        with ThreadPoolExecutor() as pool:
            listing, status = (pool.submit(showrunner, server, command, "--json", "--output",
                                           str(folder)) for command in ("list", "status"))
            seen = cls(listing.result(), status.result())
            if details and seen.listing.returncode == 0:
                asked = {row["id"]: pool.submit(showrunner, server, "status", row["id"],
                                                "--json", "--output", str(folder))
                         for row in json.loads(seen.listing.stdout)}
                seen.details = {episode: done.result() for episode, done in asked.items()}
        return seen

    def statuses(self) -> dict[str, str]:
        """Each episode's status, once every command read the store; the same in all."""
        for result in (self.listing, self.status, *self.details.values()):
            assert result.returncode == 0 and "Traceback" not in result.stderr, (
                " ".join(result.args[3:]), result.stderr[-3000:])
        listed = {row["id"]: row["status"] for row in json.loads(self.listing.stdout)}
        assert {row["id"]: row["status"] for row in json.loads(self.status.stdout)} == listed
        if self.details:
            assert {i: json.loads(r.stdout)["status"] for i, r in self.details.items()} == listed
        return listed

    def files(self, episode: str) -> dict[str, str]:
        return json.loads(self.details[episode].stdout)["files"]


@dataclass
class Case:
    """One broken storage, from the run on it to, for a store as a run left it, the same
    command once the folder is mended."""

    kind: Kind
    folder: Path
    earlier: list[str]  # the episodes the storage had before
    failed: subprocess.CompletedProcess[str]  # the run on the broken storage
    while_broken: Seen
    # Only for a store as a run left it: one that was closed fails before anything is touched.
    mended: Seen | None = None  # before the command runs again
    integrity: str = ""  # SQLite's integrity_check of the store, once mended
    half_written: list[str] = field(default_factory=list)  # once mended
    again: subprocess.CompletedProcess[str] | None = None
    at_the_end: Seen | None = None
    billed: dict[str, int] = field(default_factory=dict)  # paid, duplicate_paid: the case's


def _half_written(folder: Path) -> list[str]:
    """Files nothing finished writes: hidden ones (scratch folders, ``.name.*.tmp``) and empty
    ones. The store's own files are SQLite's business (an empty WAL is a checkpointed one)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name not in (*STORE_FILES, FILLER)
                  and (p.name.startswith(".") or (p.is_file() and p.stat().st_size == 0)))


def _integrity(folder: Path) -> str:
    with contextlib.closing(sqlite3.connect(folder / "showrunner.db")) as db:
        return ";".join(row[0] for row in db.execute("PRAGMA integrity_check"))


def _billed(server: LocalServer) -> dict[str, int]:
    chat = server.stats()["chat"]
    return {"paid": chat["paid"], "duplicate_paid": chat["duplicate_paid"]}


@pytest.fixture(scope="module")
def case(request: pytest.FixtureRequest, server: LocalServer, earlier: Earlier,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Case]:
    kind: Kind = request.param
    base = tmp_path_factory.mktemp(str(kind).replace(", ", "-").replace(" ", "-"))
    with contextlib.ExitStack() as stack:
        folder = (stack.enter_context(small_disk(base / "disk", DISK_BYTES))
                  if kind.broken == "full" else base / "out")
        shutil.copytree(earlier.folder, folder, dirs_exist_ok=True)
        if kind.closed:  # as any reader since leaves it: SQLite's last close removes the WAL
            assert showrunner(server, "list", "--output", str(folder)).returncode == 0
            assert not (folder / "showrunner.db-shm").exists()
        else:
            assert (folder / "showrunner.db-shm").exists()
        before = _billed(server)
        command = (*kind.command(), "--output", str(folder))
        with read_only(folder) if kind.broken == "read-only" else filled(folder, FILLER):
            failed = showrunner(server, *command)
            while_broken = Seen.of(server, folder, details=False)
        found = Case(kind, folder, earlier.episodes, failed, while_broken)
        if not kind.closed:
            found.mended = Seen.of(server, folder)
            found.integrity, found.half_written = _integrity(folder), _half_written(folder)
            found.again = showrunner(server, *command)
            found.at_the_end = Seen.of(server, folder)
            after = _billed(server)
            found.billed = {k: after[k] - before[k] for k in after}
        yield found


def _said(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}; stderr ends:\n{result.stderr[-3000:]}"


EVERY_CASE = [
    pytest.param(AS_LEFT[0], id="read-only"),
    pytest.param(AS_LEFT[1], id="full"),
    pytest.param(CLOSED[0], id="read-only, store closed"),
    pytest.param(CLOSED[1], id="full, store closed"),
]


@pytest.mark.parametrize("case", EVERY_CASE, indirect=True)
def test_the_run_stops_with_one_line_naming_the_folder_and_the_problem(case: Case) -> None:
    failed = case.failed
    assert failed.returncode != 0, _said(failed)
    assert "Traceback" not in failed.stderr, _said(failed)
    errors = [line for line in failed.stderr.splitlines() if line.startswith("showrunner: ")]
    assert len(errors) == 1, _said(failed)
    assert str(case.folder) in errors[0], errors[0]
    # (the folder's own name may say anything: looked for in the rest of the line)
    assert PROBLEM[case.kind.broken].search(errors[0].replace(str(case.folder), "DIR")), (
        errors[0])


@pytest.mark.parametrize("case", EVERY_CASE, indirect=True)
def test_the_store_can_still_be_read_while_the_folder_cannot_be_written(case: Case) -> None:
    statuses = case.while_broken.statuses()
    assert {i: statuses[i] for i in case.earlier} == dict.fromkeys(case.earlier, "completed")


AS_LEFT_IDS = EVERY_CASE[:2]


@pytest.mark.parametrize("case", AS_LEFT_IDS, indirect=True)
def test_the_store_is_left_whole_and_every_episode_finished_or_resumable(case: Case) -> None:
    assert case.mended is not None
    assert case.integrity == "ok"
    statuses = case.mended.statuses()
    assert set(case.earlier) <= set(statuses)
    # Finished, with its files whole; or unfinished, which the same command takes up (below).
    assert set(statuses.values()) <= {"completed", "failed", "cancelled", "queued", "running"}
    for episode, status in statuses.items():
        if status == "completed":
            files = case.mended.files(episode)
            assert files and all(Path(f).stat().st_size > 0 for f in files.values()), files
    assert case.half_written == [], case.half_written


@pytest.mark.parametrize("case", AS_LEFT_IDS, indirect=True)
def test_once_the_folder_can_be_written_the_same_command_completes(case: Case) -> None:
    assert case.again is not None and case.at_the_end is not None
    assert case.again.returncode == 0, _said(case.again)
    statuses = case.at_the_end.statuses()
    assert set(statuses.values()) == {"completed"} and len(statuses) == len(case.earlier) + 1
    [entry] = json.loads((case.folder / "report.json").read_text())["episodes"]
    assert entry["status"] == "completed" and entry["id"] not in case.earlier
    files = case.at_the_end.files(entry["id"])
    assert files and all(Path(f).stat().st_size > 0 for f in files.values()), files


@pytest.mark.parametrize("case", AS_LEFT_IDS, indirect=True)
def test_nothing_is_paid_twice(case: Case) -> None:
    """Over the whole case each of the command's calls is paid once: what the run on the broken
    folder paid for was kept, or it paid for nothing."""
    assert case.billed["paid"] > 0  # the command did run, once mended
    assert case.billed["duplicate_paid"] == 0, case.billed
