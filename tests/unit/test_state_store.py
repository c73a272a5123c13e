"""The state store on a real SQLite file: what goes in comes back whole, a store of another
schema is refused in one line, and a failed commit loses nothing and half-writes nothing."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path

import pytest

from actors.state_store import PaidCall, StateStore, StateStoreError
from pipelines.engine import EpisodeEngine, NodeState
from pipelines.episode_state import EpisodeRecord, Event, EventKind, MediaFile
from pipelines.models import (
    CharacterSketch,
    EpisodeRequest,
    EpisodeStatus,
    OutlineDraft,
    SceneContent,
    SceneOutline,
)
from pipelines.planner import NodeId, NodeKind, content_id, outline_id
from tests.support import small_disk


def url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def outline(scenes: int) -> OutlineDraft:
    return OutlineDraft(
        title="The Keeper", logline="A keeper and a gull.",
        characters=[CharacterSketch(name="Ada", description="keeper")],
        scenes=[SceneOutline(number=n, title=f"S{n}", setting="tower", summary="things happen",
                             characters=["Ada"]) for n in range(1, scenes + 1)])


def half_done(episode_id: str = "e1") -> EpisodeRecord:
    """An episode with its outline done, one content done, one failed under "skip" (its scene's
    later nodes skipped), and others running."""
    request = EpisodeRequest(premise="A lighthouse keeper adopts a seagull.", scenes=3,
                             lines_per_scene=2, on_scene_failure="skip")
    record = EpisodeRecord(id=episode_id, request=request, owner="t_a",
                           status=EpisodeStatus.RUNNING, submitted_at=time.time(),
                           started_at=time.time(), arrival=7)
    engine = EpisodeEngine(record.plan(), record.engine, skip_failed_scenes=True, max_window=8)
    [first] = engine.start_ready()
    record.node(first.id).calls = 1
    record.results[first.id] = outline(3)
    engine.mark_done(first.id)
    started = engine.start_ready()
    record.results[content_id(1)] = SceneContent(setting="a tower", action="waves", mood="calm")
    engine.mark_done(content_id(1))
    record.node(content_id(2)).error = "the model refused"
    engine.mark_failed(content_id(2))
    record.events.append(Event(seq=1, at_s=0.0, kind=EventKind.QUEUED))
    record.events.append(Event(seq=2, at_s=0.5, kind=EventKind.NODE_FINISHED, node=first.id))
    assert any(n.id not in record.engine.done | record.engine.failed for n in started)
    return record


async def save(store: StateStore, record: EpisodeRecord) -> None:
    store.put_episode(record)
    store.put_nodes(record, [*record.nodes, *record.results, *record.engine.skipped,
                             *record.engine.running])
    for event in record.events:
        store.put_event(record.id, event)
    await store.flush()


async def test_an_episode_comes_back_as_it_was_but_for_what_ran(tmp_path: Path) -> None:
    record = half_done()
    store = await StateStore.open(url(tmp_path / "state" / "showrunner.db"))
    try:
        await save(store, record)
        back = await store.record("e1")
    finally:
        await store.close()
    assert back is not None
    assert back.request == record.request and back.owner == "t_a" and back.arrival == 7
    assert back.results == record.results  # typed again: an outline, a content
    assert back.engine.done == record.engine.done and back.engine.failed == {content_id(2)}
    assert back.engine.skipped == record.engine.skipped and back.engine.skipped
    assert not back.engine.running  # what ran did not finish: it runs again
    assert back.nodes[content_id(2)].error == "the model refused"
    assert [e.seq for e in back.events] == [1, 2] and back.events[1].node == outline_id(1)
    # Taken up by an engine, the nodes that were running are ready again.
    engine = EpisodeEngine(back.plan(), back.engine, skip_failed_scenes=True, max_window=8)
    for nid in record.engine.running:
        assert engine.state_of(nid) is NodeState.READY


async def test_newest_writes_win_and_unfinished_are_listed_in_arrival_order(
        tmp_path: Path) -> None:
    store = await StateStore.open(url(tmp_path / "s.db"))
    try:
        late, early = half_done("late"), half_done("early")
        early.arrival = 3
        await save(store, late)
        await save(store, early)
        late.status, late.error = EpisodeStatus.FAILED, "gave up"
        speech = NodeId(NodeKind.SPEECH, 1, 1)
        late.engine.done.add(speech)
        late.results[speech] = MediaFile(size_bytes=10)
        store.put_episode(late)
        store.put_nodes(late, [speech])
        await store.flush()
        assert [r.id for r in await store.unfinished()] == ["early"]
        assert await store.statuses(["late", "early", "nobody"]) == {
            "late": EpisodeStatus.FAILED, "early": EpisodeStatus.RUNNING}
        again = await store.record("late")
        assert again is not None and again.error == "gave up"
        assert again.results[speech] == MediaFile(size_bytes=10)
        assert await store.last_arrival() == 7
    finally:
        await store.close()


async def test_another_schema_version_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await StateStore.open(url(path))
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StateStoreError) as newer:
        await StateStore.open(url(path))
    assert "schema version 99" in str(newer.value) and "upgrade" in str(newer.value)
    assert "\n" not in str(newer.value)
    with sqlite3.connect(tmp_path / "other.db") as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    with pytest.raises(StateStoreError, match="not a Showrunner store"):
        await StateStore.open(url(tmp_path / "other.db"))


async def test_urls_it_does_not_take_are_named_without_their_password() -> None:
    with pytest.raises(StateStoreError) as refused:
        await StateStore.open("mysql://me:hunter2@db/x")
    assert "hunter2" not in str(refused.value) and "sqlite+aiosqlite" in str(refused.value)


async def test_a_full_disk_fails_commits_whole_and_loses_nothing_queued(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", 2 << 20) as disk:
        store = await StateStore.open(url(disk / "s.db"))
        try:
            await save(store, half_done("first"))
            filler = disk / "filler"
            with filler.open("wb") as out, contextlib.suppress(OSError):
                while True:  # every block the disk has left
                    out.write(b"\0" * 65536)
                    out.flush()
            big = half_done("second")
            big.request = big.request.model_copy(update={"premise": "x" * 4000})
            for seq in range(3, 400):  # more than the pages the disk has left
                big.events.append(Event(seq=seq, at_s=0.0, kind=EventKind.NODE_STARTED,
                                        message="y" * 900))
            with pytest.raises(StateStoreError, match="cannot be written.*full"):
                await save(store, big)
            assert await store.statuses(["second"]) == {}  # none of it, not half
            filler.unlink()
            await store.flush()  # tried again, and kept
            back = await store.record("second")
            assert back is not None and len(back.events) == len(big.events)
        finally:
            await store.close()


async def test_a_driver_not_installed_is_named_with_how_to_get_it() -> None:
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        with pytest.raises(StateStoreError, match=r"showrunner\[postgres\]"):
            await StateStore.open("postgresql+asyncpg://me:pw@127.0.0.1:1/x")
    else:
        pytest.skip("asyncpg is installed here")


async def test_a_version_2_store_gains_the_ledger_and_keeps_its_episodes(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await StateStore.open(url(path))
    store.put_episode(half_done("old"))
    await store.close()
    with sqlite3.connect(path) as db:  # the store as version 2 left it
        db.execute("DROP TABLE calls")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    store = await StateStore.open(url(path))
    try:
        assert [r.id for r in await store.unfinished()] == ["old"]
        store.put_call(PaidCall(owner="t_a", kind="llm", model="m", digest="d1", cost_usd=0.5,
                                at=time.time(), answer='{"text": "hi"}'))
        await store.flush()
        assert await store.spent("t_a", 0) == 0.5
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta").fetchone() == ("3",)


async def test_the_ledger_answers_per_owner_and_sums_what_was_spent_since(tmp_path: Path) -> None:
    store = await StateStore.open(url(tmp_path / "s.db"))
    try:
        now = time.time()
        for owner, digest, cost, at, answer in (
                ("t_a", "d1", 0.25, now - 90_000, '"old"'), ("t_a", "d1", 0.5, now, '"new"'),
                ("t_b", "d2", 1.0, now, '"b"'), ("t_a", "d3", 0.125, now, None)):
            store.put_call(PaidCall(owner=owner, kind="llm", model="m", digest=digest,
                                    cost_usd=cost, at=at, answer=answer))
        await store.flush()
        newest = await store.cached_call("t_a", "llm", "d1")
        assert newest is not None and newest.answer == '"new"' and newest.cost_usd == 0.5
        assert await store.cached_call("t_b", "llm", "d1") is None  # another owner's
        assert await store.cached_call("t_a", "tts", "d1") is None  # another provider's
        assert await store.cached_call("t_a", "llm", "d3") is None  # paid, but no answer kept
        assert await store.spent("t_a", now - 3600) == 0.625
        assert await store.spent("t_a", 0) == 0.875
        assert await store.spent("nobody", 0) == 0.0
    finally:
        await store.close()


async def test_one_coordinator_at_a_time_runs_a_store(tmp_path: Path) -> None:
    path = url(tmp_path / "s.db")
    first = await StateStore.open(path, exclusive=True)
    try:
        with pytest.raises(StateStoreError) as refused:
            await StateStore.open(path, exclusive=True, wait_s=0.3)
        message = str(refused.value)
        assert "in use by another Showrunner" in message and f"pid {os.getpid()}" in message
        reader = await StateStore.open(path)  # status, list, a provider's ledger: any number
        await reader.close()
    finally:
        await first.close()
    second = await StateStore.open(path, exclusive=True, wait_s=0.3)  # let go: taken at once
    await second.close()
