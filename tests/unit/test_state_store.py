"""The state store on a real SQLite file and a real PostgreSQL server, the same tests on both:
what goes in comes back whole, a store of another schema is refused in one line, one coordinator
at a time runs a store, and a failed commit loses nothing and half-writes nothing."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from actors.state_store import COORDINATOR_KEY, PaidCall, StateStore, StateStoreError
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
from pipelines.tenancy import Claim
from tests.postgres import PostgresServer
from tests.support import filled, small_disk, wait_for_async

BACKENDS = ("sqlite", "postgresql")


def url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new store's URL: a SQLite file, or a database of its own on the session's PostgreSQL
    server (started only when a test asks for it)."""
    if request.param == "sqlite":
        return url(tmp_path / "state" / "showrunner.db")
    return str(request.getfixturevalue("postgres_url"))


async def execute(db_url: str, *statements: str) -> list[tuple[object, ...]]:
    """Change or read a store behind its back, as another program (or an older Showrunner)
    would; the rows of the last statement."""
    engine = create_async_engine(db_url)
    try:
        async with engine.begin() as conn:
            for statement in statements:
                result = await conn.execute(text(statement))
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        await engine.dispose()


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


async def test_an_episode_comes_back_as_it_was_but_for_what_ran(db_url: str) -> None:
    record = half_done()
    store = await StateStore.open(db_url)
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
        db_url: str) -> None:
    store = await StateStore.open(db_url)
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


async def test_another_schema_version_is_refused_in_one_line(db_url: str) -> None:
    store = await StateStore.open(db_url)
    await store.close()
    await execute(db_url, "UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StateStoreError) as newer:
        await StateStore.open(db_url)
    assert "schema version 99" in str(newer.value) and "upgrade" in str(newer.value)
    assert "\n" not in str(newer.value)
    await execute(db_url, "DELETE FROM meta")  # a table of that name, with no version in it
    with pytest.raises(StateStoreError, match="not a Showrunner store"):
        await StateStore.open(db_url)


async def test_urls_it_does_not_take_are_named_without_their_password() -> None:
    with pytest.raises(StateStoreError) as refused:
        await StateStore.open("mysql://me:hunter2@db/x")
    assert "hunter2" not in str(refused.value) and "sqlite+aiosqlite" in str(refused.value)


async def test_a_full_disk_fails_commits_whole_and_loses_nothing_queued(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", 2 << 20) as disk:
        store = await StateStore.open(url(disk / "s.db"))
        try:
            await save(store, half_done("first"))
            big = half_done("second")
            big.request = big.request.model_copy(update={"premise": "x" * 4000})
            for seq in range(3, 400):  # more than the pages the disk has left
                big.events.append(Event(seq=seq, at_s=0.0, kind=EventKind.NODE_STARTED,
                                        message="y" * 900))
            with filled(disk):  # every block the disk has left
                with pytest.raises(StateStoreError, match="cannot be written.*full"):
                    await save(store, big)
                assert await store.statuses(["second"]) == {}  # none of it, not half
            await store.flush()  # tried again once there is room, and kept
            back = await store.record("second")
            assert back is not None and len(back.events) == len(big.events)
        finally:
            await store.close()


async def test_a_driver_not_installed_is_named_with_how_to_get_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # imports of it fail, as if not installed
    with pytest.raises(StateStoreError, match=r"showrunner\[postgres\]"):
        await StateStore.open("postgresql+asyncpg://me:pw@127.0.0.1:1/x")


async def test_a_version_2_store_gains_the_ledger_and_keeps_its_episodes(db_url: str) -> None:
    store = await StateStore.open(db_url)
    store.put_episode(half_done("old"))
    await store.close()
    await execute(db_url, "DROP TABLE calls",  # the store as version 2 left it
                  "UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    store = await StateStore.open(db_url)
    try:
        assert [r.id for r in await store.unfinished()] == ["old"]
        store.put_call(PaidCall(owner="t_a", kind="llm", model="m", digest="d1", cost_usd=0.5,
                                at=time.time(), answer='{"text": "hi"}'))
        await store.flush()
        assert await store.spent("t_a", 0) == 0.5
    finally:
        await store.close()
    assert await execute(db_url, "SELECT value FROM meta") == [("3",)]


async def test_the_ledger_answers_per_owner_and_sums_what_was_spent_since(db_url: str) -> None:
    store = await StateStore.open(db_url)
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
        # Lookups asked at once are answered together, each its own.
        many = await asyncio.gather(*(store.cached_call(owner, "llm", digest) for owner, digest
                                      in [("t_a", "d1"), ("t_b", "d2"), ("t_b", "d9")] * 20))
        assert [c.answer if c else None for c in many[:3]] == ['"new"', '"b"', None]
        assert await store.cached_keys("llm") == [("t_a", "d1"), ("t_a", "d1"), ("t_b", "d2")]
        assert await store.cached_keys("tts") == []
    finally:
        await store.close()


async def test_one_coordinator_at_a_time_runs_a_store(db_url: str) -> None:
    first = await StateStore.open(db_url, exclusive=True)
    try:
        with pytest.raises(StateStoreError) as refused:
            await StateStore.open(db_url, exclusive=True, wait_s=0.3)
        message = str(refused.value)
        assert "in use by another Showrunner" in message and "\n" not in message
        assert f"(pid {os.getpid()} on {socket.gethostname()})" in message
        password = make_url(db_url).password
        assert not password or password not in message
        reader = await StateStore.open(db_url)  # status, list, a provider's ledger: any number
        await reader.close()
    finally:
        await first.close()
    second = await StateStore.open(db_url, exclusive=True, wait_s=0.3)  # let go: taken at once
    await second.close()


async def test_claims_cancels_and_listings_read_what_was_written(db_url: str) -> None:
    store = await StateStore.open(db_url)
    try:
        records = [half_done(f"e{n}") for n in range(1, 5)]
        for n, record in enumerate(records, start=1):
            record.arrival = n
            record.owner = "t_a" if n != 3 else "t_b"
        records[1].status = EpisodeStatus.COMPLETED
        for record in records:
            await save(store, record)
        store.put_claim("k1", "t_a", Claim("f1", ("e1", "e2")))
        store.put_claim("k1", "t_a", Claim("f2", ("e4",)))  # the first claim of a key stays
        await store.flush()
        assert await store.claim("k1") == Claim("f1", ("e1", "e2"))
        assert await store.claim("k2") is None

        assert [s.id for s in await store.page(owner="t_a")] == ["e1", "e2", "e4"]
        assert [s.id for s in await store.page(cursor=1, limit=2)] == ["e2", "e3"]
        # Newest first, the cursor going back: what a listing of thousands shows first.
        newest = await store.page(limit=2, newest=True)
        assert [s.id for s in newest] == ["e4", "e3"]
        older = await store.page(limit=2, newest=True, cursor=newest[-1].arrival)
        assert [s.id for s in older] == ["e2", "e1"]
        assert [s.id for s in await store.page(owner="t_a", newest=True)] == ["e4", "e2", "e1"]
        [done] = await store.page(status=EpisodeStatus.COMPLETED)
        assert done.id == "e2" and done.premise.startswith("A lighthouse") and done.scenes == 3
        assert await store.count_unfinished("t_a") == 2

        assert await store.request_cancel("e1") is EpisodeStatus.RUNNING
        assert await store.request_cancel("e2") is EpisodeStatus.COMPLETED  # over: not asked
        assert await store.request_cancel("nobody") is None
        assert set(await store.cancels_requested()) == {"e1"}
        store.put_episode(records[0])  # the coordinator's row leaves the cancel alone
        await store.flush()
        assert set(await store.cancels_requested()) == {"e1"}
        [summary] = await store.page(owner="t_a", limit=1)
        assert summary.cancel_requested
        store.forget_cancel("e1")  # run again: an earlier cancel does not stop it
        await store.flush()
        assert await store.cancels_requested() == {}
    finally:
        await store.close()


async def test_what_is_discarded_before_its_commit_is_never_stored(db_url: str) -> None:
    store = await StateStore.open(db_url)
    try:
        kept, dropped = half_done("kept"), half_done("dropped")
        for record in (kept, dropped):
            store.put_episode(record)
            store.put_nodes(record, record.results)
            store.put_event(record.id, record.events[0])
        store.put_claim("k", "t_a", Claim("f", ("dropped",)))
        store.discard(["dropped"])
        await store.flush()
        assert await store.statuses(["kept", "dropped"]) == {"kept": EpisodeStatus.RUNNING}
        assert await store.claim("k") is None
    finally:
        await store.close()


async def test_prune_removes_the_rows_of_what_finished_long_ago(db_url: str) -> None:
    store = await StateStore.open(db_url)
    try:
        now = time.time()
        for n, (episode_id, status, finished_at) in enumerate([
                ("old2", EpisodeStatus.FAILED, now - 7200), ("new", EpisodeStatus.COMPLETED, now),
                ("old1", EpisodeStatus.COMPLETED, now - 9000), ("open", EpisodeStatus.RUNNING,
                                                                 None)], start=1):
            record = half_done(episode_id)
            record.arrival, record.status, record.finished_at = n, status, finished_at
            await save(store, record)
        assert await store.prune(now - 3600) == ["old2", "old1"]  # in arrival order
        assert set(await store.statuses(["old1", "old2", "new", "open"])) == {"new", "open"}
        assert await store.record("old1") is None
        kept = await store.record("new")
        assert kept is not None and kept.results and len(kept.events) == 2
        assert await store.prune(now - 3600) == []
    finally:
        await store.close()


async def test_text_either_database_refuses_is_stored_all_the_same(db_url: str) -> None:
    # PostgreSQL refuses a NUL in text, and a refused row would fail every later commit.
    store = await StateStore.open(db_url)
    try:
        record = half_done()
        record.status, record.error = EpisodeStatus.FAILED, "the server said: bad\0byte"
        record.request = record.request.model_copy(update={"premise": "A nul\0 in a premise"})
        await save(store, record)
        back = await store.record("e1")
        assert back is not None and back.error == "the server said: bad\ufffdbyte"
        assert back.request.premise == "A nul\0 in a premise"  # (JSON escapes it)
    finally:
        await store.close()


async def test_a_new_store_opened_by_many_at_once_is_made_once(db_url: str) -> None:
    # The coordinator and each provider open it as a run starts.
    stores = await asyncio.gather(*(StateStore.open(db_url) for _ in range(4)))
    try:
        stores[0].put_episode(half_done())
        await stores[0].flush()
        assert [await s.last_arrival() for s in stores] == [7, 7, 7, 7]
    finally:
        for store in stores:
            await store.close()


# -- PostgreSQL only: its errors and its lock ---------------------------------------------------


@pytest.mark.parametrize("exclusive", [False, True])
async def test_a_server_that_refuses_says_so_in_one_line_without_the_password(
        postgres_server: PostgresServer, postgres_url: str, exclusive: bool) -> None:
    database = make_url(postgres_url).database
    assert database is not None
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    for wrong, why in ((postgres_server.url(database, password="hunter2-wrong"),
                        "password authentication failed"),
                       (postgres_server.url(database, port=closed), "Connect call failed")):
        with pytest.raises(StateStoreError) as refused:
            await StateStore.open(wrong, exclusive=exclusive, wait_s=0.3)
        message = str(refused.value)
        assert message.startswith("cannot open the state store postgresql+asyncpg://showrunner:"
                                   "***@127.0.0.1:") and why in message, message
        assert "\n" not in message and "hunter2" not in message
        assert postgres_server.password not in message


async def test_a_lost_lock_is_taken_again_while_no_other_coordinator_has_it(
        postgres_server: PostgresServer, postgres_url: str) -> None:
    database = make_url(postgres_url).database
    assert database is not None

    def holders() -> list[int]:
        return [int(pid) for pid in postgres_server.sql(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = "
            f"{COORDINATOR_KEY & 0xFFFF_FFFF}", database).split()]

    sessions = f"SELECT pid FROM pg_stat_activity WHERE datname = '{database}'"
    store = await StateStore.open(postgres_url, exclusive=True)
    try:
        await save(store, half_done("before"))
        [before] = holders()
        # Every session ends, as in a restart of the server: the lock's and the pool's.
        postgres_server.sql(f"SELECT pg_terminate_backend(pid) FROM ({sessions}) AS s")
        await wait_for_async(lambda: not postgres_server.sql(sessions), 10, "the sessions to end")
        await save(store, half_done("after"))  # confirmed before the commit: taken again
        [again] = holders()
        assert again != before and store.failure is None

        postgres_server.sql(f"SELECT pg_terminate_backend({again})")
        await wait_for_async(lambda: not holders(), 10, "the ended session to let the lock go")
        other = await StateStore.open(postgres_url, exclusive=True, wait_s=0.3)  # takes over
        try:
            with pytest.raises(StateStoreError) as fenced:
                await save(store, half_done("late"))
            message = str(fenced.value)
            assert "took it over (pid" in message and "\n" not in message
            assert set(await other.statuses(["before", "after", "late"])) == {"before", "after"}
        finally:
            await other.close()
        with pytest.raises(StateStoreError, match="took it over"):  # for good, even once free
            await save(store, half_done("later"))
    finally:
        await store.close()


async def test_a_coordinator_whose_lock_connection_ended_still_closes_and_lets_go(
        postgres_server: PostgresServer, postgres_url: str) -> None:
    database = make_url(postgres_url).database
    sessions = ("SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'showrunner pid%' "
                f"AND datname = '{database}'")
    store = await StateStore.open(postgres_url, exclusive=True)
    postgres_server.sql(f"SELECT pg_terminate_backend(pid) FROM ({sessions}) AS s")
    await wait_for_async(lambda: not postgres_server.sql(sessions), 10, "the session to end")
    await store.close()  # (its unlock and close meet a dead connection: nothing to say)
    again = await StateStore.open(postgres_url, exclusive=True, wait_s=5)
    await again.close()
