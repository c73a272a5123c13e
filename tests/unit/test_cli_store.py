"""The CLI without Ray: stable episode ids, and ``status``, ``list`` and ``cancel`` reading a real
SQLite store as a run left it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from pathlib import Path

import pytest

from actors.state_store import SCHEMA_VERSION, StateStore
from pipelines.engine import EpisodeEngine
from pipelines.episode_folder import Artifact
from pipelines.episode_state import EpisodeRecord, Event, EventKind
from pipelines.models import EpisodeRequest, EpisodeStatus, OutlineDraft, SceneState
from pipelines.planner import NodeKind
from pipelines.settings import STATE_DB_FILE
from showrunner import cli, stored
from showrunner.ids import episode_id, episode_ids

pytestmark = pytest.mark.usefixtures("clean_env")


# -- ids ---------------------------------------------------------------------------------------


def test_an_id_is_the_request_and_its_place_in_the_run() -> None:
    request = EpisodeRequest(premise="A lighthouse keeper adopts a seagull.", media=False)
    digest = hashlib.sha256(request.model_dump_json().encode() + b"\x002").hexdigest()
    assert episode_id(request, 2) == digest[:12]
    # The same command names the same episodes; a twin in one run is another episode.
    assert episode_ids([request, request]) == episode_ids([request, request])
    assert len(set(episode_ids([request, request]))) == 2
    other = request.model_copy(update={"seed": 1})
    assert episode_id(other, 0) != episode_id(request, 0)


# -- a store as a run left it ------------------------------------------------------------------


def record(episode: str, arrival: int, status: EpisodeStatus, premise: str,
           submitted_ago_s: float = 60.0) -> EpisodeRecord:
    request = EpisodeRequest(premise=premise, scenes=3, lines_per_scene=1, media=False)
    return EpisodeRecord(id=episode, request=request, status=status, arrival=arrival,
                         submitted_at=time.time() - submitted_ago_s, started_at=time.time(),
                         events=[Event(seq=1, at_s=0.0, kind=EventKind.QUEUED,
                                       message="3 scenes")])


def completed(episode: str, arrival: int) -> EpisodeRecord:
    """Every node done, its script written."""
    done = record(episode, arrival, EpisodeStatus.COMPLETED, "A bakery heist.", 7200)
    engine = EpisodeEngine(done.plan(), done.engine, skip_failed_scenes=False, max_window=8)
    while ready := engine.start_ready():
        for node in ready:
            engine.mark_done(node.id)
    done.results = {nid: OUTLINE for nid in done.plan().nodes if nid.kind is NodeKind.OUTLINE}
    done.artifacts = [Artifact.SCRIPT_JSON, Artifact.SCRIPT_MD]
    done.events.append(Event(seq=2, at_s=4.5, kind=EventKind.COMPLETED, percent=100.0))
    return done


OUTLINE = OutlineDraft.model_validate({
    "title": "The Heist", "logline": "Bread.", "characters": [{"name": "Ada",
                                                               "description": "baker"}],
    "scenes": [{"number": n, "title": f"S{n}", "setting": "shop", "summary": "things",
                "characters": ["Ada"]} for n in (1, 2, 3)]})


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    """A storage folder whose store holds a completed episode, then a running one."""
    folder = tmp_path / "out"

    async def fill() -> None:
        store = await StateStore.open(f"sqlite+aiosqlite:///{folder / STATE_DB_FILE}")
        try:
            for made in (completed("aaaaaaaaaaaa", 1),
                         record("bbbbbbbbbbbb", 2, EpisodeStatus.RUNNING,
                                "Two rival food-truck owners are stuck together at a "
                                "snowed-in winter festival, again and again.")):
                store.put_episode(made)
                store.put_nodes(made, made.engine.done)
                for event in made.events:
                    store.put_event(made.id, event)
            await store.flush()
        finally:
            await store.close()

    asyncio.run(fill())
    return folder


def showrunner(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_is_a_line_each_newest_last(storage: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = showrunner(capsys, "list", "--output", str(storage))
    assert code == 0
    first, second = out.splitlines()
    assert first.split()[:3] == ["aaaaaaaaaaaa", "completed", "3"]
    assert "2h ago" in first and "A bakery heist." in first
    assert second.startswith("bbbbbbbbbbbb  running") and "1m ago" in second
    assert second.endswith("…") and len(second) < 120  # the premise shortened
    code, out, _ = showrunner(capsys, "list", "--output", str(storage), "--limit", "1", "--json")
    [newest] = json.loads(out)
    assert newest["id"] == "bbbbbbbbbbbb" and newest["cancel_requested"] is False
    code, out, _ = showrunner(capsys, "list", "--output", str(storage), "--status", "completed")
    assert [line.split()[0] for line in out.splitlines()] == ["aaaaaaaaaaaa"]
    code, out, err = showrunner(capsys, "list", "--output", str(storage), "--status", "failed")
    assert code == 0 and out == "" and err.strip() == f"no episodes in {storage} with status failed"


def test_status_shows_how_far_each_got_and_one_in_detail(
        storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = showrunner(capsys, "status", "--output", str(storage))
    assert code == 0
    assert [line.split()[:3] for line in out.splitlines()] == [
        ["aaaaaaaaaaaa", "completed", "100.0%"], ["bbbbbbbbbbbb", "running", "0.0%"]]
    code, out, _ = showrunner(capsys, "status", "aaaaaaaaaaaa", "--output", str(storage))
    assert code == 0
    assert "episode   aaaaaaaaaaaa: completed, 100.0%" in out
    assert "title     The Heist" in out and "scenes    done 1-3" in out
    assert f"file      {(storage / 'aaaaaaaaaaaa' / 'script.md').resolve()}" in out
    code, out, _ = showrunner(capsys, "status", "aaaaaaaaaaaa", "--output", str(storage),
                              "--json")
    details = json.loads(out)
    assert details["status"] == "completed" and details["percent"] == 100.0
    assert details["files"]["script.json"] == str(
        (storage / "aaaaaaaaaaaa" / "script.json").resolve())
    assert [e["kind"] for e in details["events"]] == ["queued", "completed"]


def test_an_unknown_id_is_one_line_and_exit_2(storage: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("status", "cancel"):
        code, out, err = showrunner(capsys, command, "nobody", "--output", str(storage))
        assert code == 2 and out == ""
        assert err.strip() == f"showrunner: error: no episode nobody in {storage}"


def test_cancel_says_what_became_of_it(storage: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = showrunner(capsys, "cancel", "aaaaaaaaaaaa", "--output", str(storage))
    assert (code, out.strip()) == (0, "aaaaaaaaaaaa: already completed")
    monkeypatch.setattr(stored, "CANCEL_WAIT_S", 0.3)  # no run here will act on it
    code, out, _ = showrunner(capsys, "cancel", "bbbbbbbbbbbb", "--output", str(storage))
    assert (code, out.strip()) == (0, f"bbbbbbbbbbbb: {stored.NO_RUN}")
    code, out, _ = showrunner(capsys, "list", "--output", str(storage), "--json")
    assert [e["cancel_requested"] for e in json.loads(out)] == [False, True]
    code, out, _ = showrunner(capsys, "list", "--output", str(storage))
    assert "[cancel asked]" in out.splitlines()[1]


def test_a_folder_without_a_store_is_said_and_left_alone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "never"
    said = f"no episodes in {folder}: nothing has run there"
    for args, expected in ((["list"], 0), (["status"], 0), (["status", "x"], 2),
                           (["cancel", "x"], 2), (["resume"], 0)):
        code, out, err = showrunner(capsys, *args, "--output", str(folder))
        assert code == expected, err
        [line] = err.strip().splitlines()
        assert line.endswith(said if args != ["resume"] else f"nothing to resume in {folder}")
        assert out == ""
    code, out, _ = showrunner(capsys, "list", "--json", "--output", str(folder))
    assert json.loads(out) == []
    assert not folder.exists()


def test_a_store_it_cannot_read_is_one_line_and_exit_2(
        storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with sqlite3.connect(storage / STATE_DB_FILE) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    for args in (["list"], ["status", "aaaaaaaaaaaa"], ["cancel", "aaaaaaaaaaaa"], ["resume"]):
        code, _, err = showrunner(capsys, *args, "--output", str(storage))
        assert code == 2
        [line] = err.strip().splitlines()
        assert "schema version 99" in line and "Traceback" not in err
    # Of this version but not as this Showrunner reads it: one line too, not SQLAlchemy's page.
    with sqlite3.connect(storage / STATE_DB_FILE) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION)])
        db.execute("ALTER TABLE episodes DROP COLUMN cancel_requested_at")
    code, _, err = showrunner(capsys, "list", "--output", str(storage))
    assert code == 2 and err.strip() == (
        f"showrunner: error: cannot use the state store in {storage}: "
        "no such column: episodes.cancel_requested_at")


def test_scene_ranges_and_ages_fit_a_line() -> None:
    done, running, pending = SceneState.DONE, SceneState.RUNNING, SceneState.PENDING
    assert stored.scene_ranges([done] * 4 + [running] + [pending] * 3) == (
        "done 1-4, running 5, pending 6-8")
    assert stored.scene_ranges([]) == "-"
    assert [stored.age(s) for s in (-1, 42, 300, 7200, 3 * 86400)] == [
        "0s ago", "42s ago", "5m ago", "2h ago", "3d ago"]
    assert stored.shorten("a  b\nc", 10) == "a b c" and stored.shorten("x" * 20, 5) == "xxxx…"


def test_prune_removes_the_rows_and_folders_of_long_finished_episodes(
        storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def age(episode: str, days: float) -> None:  # as if it finished that long ago
        store = await StateStore.open(f"sqlite+aiosqlite:///{storage / STATE_DB_FILE}")
        try:
            made = await store.record(episode)
            assert made is not None
            store.put_episode(made.model_copy(update={"finished_at": time.time() - days * 86_400}))
            await store.flush()
        finally:
            await store.close()

    asyncio.run(age("aaaaaaaaaaaa", 10))
    (storage / "aaaaaaaaaaaa").mkdir()
    (storage / "aaaaaaaaaaaa" / "script.md").write_text("# The Heist\n")
    (storage / "bbbbbbbbbbbb").mkdir()
    code, out, _ = showrunner(capsys, "prune", "--older-than", "30", "--output", str(storage))
    assert code == 0 and out.startswith("pruned 0 episode(s)")
    code, out, _ = showrunner(capsys, "prune", "--older-than", "7", "--output", str(storage))
    assert code == 0 and out.startswith("pruned 1 episode(s)")
    assert not (storage / "aaaaaaaaaaaa").exists() and (storage / "bbbbbbbbbbbb").is_dir()
    with sqlite3.connect(storage / STATE_DB_FILE) as db:  # every row of it, and only its
        for table in ("episodes", "nodes", "events"):
            ids = {row[0] for row in db.execute(
                f"SELECT {'id' if table == 'episodes' else 'episode_id'} FROM {table}")}
            assert "aaaaaaaaaaaa" not in ids, table
        assert db.execute("SELECT id FROM episodes").fetchall() == [("bbbbbbbbbbbb",)]
    code, _, err = showrunner(capsys, "prune", "--older-than", "-1", "--output", str(storage))
    assert code == 2 and "--older-than" in err
