"""The state store: every episode's request, each node's state, figures and result as it
settles, and every event, kept as rows, so a restarted coordinator continues where the dead one
stopped and never runs a node whose result is stored.

    episodes   one row per episode: request, owner, status, times, why it ended
    nodes      one row per node that started: its state, figures and result
    events     every event, numbered per episode (what ``Last-Event-ID`` resumes from)
    claims     each idempotency key's request: its fingerprint and the episodes it made
    calls      the ledger: every paid call (who, which provider and model, the request's
               digest, tokens, cost, when) and its answer, which the call cache gives back
    meta       the schema's version

SQLAlchemy 2 Core with its asyncio extension: SQLite (aiosqlite, in WAL mode) by default, and the
same tables and statements on PostgreSQL (asyncpg) by setting another URL. Where the two differ,
the store makes them behave alike: text PostgreSQL would refuse (a NUL) is made storable
(``_Str``); a read of several statements sees one moment on both (``_reading``); a new store's
tables are made by one process while others wait, on both (``_prepare_schema``); asyncpg's errors
on connecting are SQLAlchemy's, as SQLite's are (``_connect_asyncpg``); and the one coordinator's
lock is a ``flock`` beside a SQLite file, an advisory lock on a server (``RunLock``,
``ServerLock``).

Writes are queued and committed together by one writer task (group commit): the coordinator's
loop never waits for the disk when a node finishes, and a busy second costs a few transactions,
not thousands. ``flush()`` waits until everything queued so far is committed; what must hold
before it is acknowledged (a submission) is flushed. A write that fails (a full or read-only
disk) is kept and tried again, and ``failure`` says why meanwhile: a transaction is all or
nothing, so the store is never half-written. Committed rows survive the process being killed;
SQLite's ``synchronous=NORMAL`` trades the last moments before a power cut for speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, TypeAdapter
from sqlalchemy import (
    BigInteger,
    Column,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    event,
    func,
    inspect,
    literal,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from pipelines.engine import EngineState, NodeState
from pipelines.episode_folder import Artifact
from pipelines.episode_state import RESULT_TYPES, EpisodeRecord, Event, NodeRecord, NodeResult
from pipelines.models import EpisodeRequest, EpisodeStatus
from pipelines.planner import NodeId
from pipelines.tenancy import Claim

log = logging.getLogger("showrunner.state")

SCHEMA_VERSION = 3  # 2: cancels asked through the store, idempotency claims; 3: the ledger
MIGRATES_FROM = {2}  # versions brought up to this one by adding the tables they lack
RETRY_S = 1.0  # a failed commit is tried again after this long
LOCK_WAIT_S = 10.0  # a coordinator waits this long for another on its store to end
LOCK_POLL_S = 0.2
FULL_BELOW_BYTES = 1 << 20  # a folder with less free space than this is called full
EVENTS_LOADED = 5000  # events brought back into memory per episode (the coordinator keeps as many)
# PostgreSQL's advisory lock keys (per database): the one coordinator's, and the one that lets a
# single process at a time make a new store's tables. ASCII, as pg_locks shows them in hex.
COORDINATOR_KEY = int.from_bytes(b"showrunr", "big")
SCHEMA_KEY = int.from_bytes(b"showschm", "big")
# The server ends the lock's session (and so lets the lock go) this soon after the coordinator's
# host stops answering, instead of after the operating system's two hours: TCP keepalives of
# that one session, in seconds (idle, between probes, probes). A process that dies on a live
# host closes its socket, and the lock goes at once.
LOCK_KEEPALIVES = {"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5",
                   "tcp_keepalives_count": "3"}


class _Str(TypeDecorator[str]):
    """Text as both databases take it. PostgreSQL refuses a NUL character in any text (SQLite
    keeps it), and a refused row fails its whole commit, again at every retry: so a NUL (in a
    provider's error message, say; JSON columns escape theirs) is stored as U+FFFD."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return value.replace("\0", "\ufffd") if value is not None and "\0" in value else value


class _Text(_Str):
    impl = Text
    cache_ok = True


metadata = MetaData()
meta = Table("meta", metadata,
             Column("key", _Str(64), primary_key=True),
             Column("value", _Text, nullable=False))
episodes = Table("episodes", metadata,
                 Column("id", _Str(64), primary_key=True),
                 Column("owner", _Str(128), nullable=False),
                 Column("arrival", Integer, nullable=False),
                 Column("status", _Str(16), nullable=False),
                 Column("submitted_at", Float, nullable=False),
                 Column("started_at", Float),
                 Column("finished_at", Float),
                 Column("request", _Text, nullable=False),
                 Column("error", _Text),
                 Column("stop_reason", _Text),
                 Column("artifacts", _Text, nullable=False),
                 # Set by ``showrunner cancel`` (any process); the coordinator acts on it.
                 Column("cancel_requested_at", Float),
                 Index("episodes_by_owner", "owner", "arrival"),
                 Index("episodes_by_status", "status"))
nodes = Table("nodes", metadata,
              Column("episode_id", _Str(64), primary_key=True),
              Column("node", _Str(32), primary_key=True),
              Column("state", _Str(16), nullable=False),
              Column("figures", _Text, nullable=False),
              Column("result", _Text))
claims = Table("claims", metadata,  # what each idempotency key's first request made
               Column("key", _Str(64), primary_key=True),
               Column("owner", _Str(128), nullable=False),
               Column("fingerprint", _Str(64), nullable=False),
               Column("ids", _Text, nullable=False))
events = Table("events", metadata,
               Column("episode_id", _Str(64), primary_key=True),
               Column("seq", Integer, primary_key=True),
               Column("body", _Text, nullable=False))

calls = Table("calls", metadata,
              Column("id", Integer, primary_key=True, autoincrement=True),
              Column("owner", _Str(128), nullable=False),
              Column("kind", _Str(16), nullable=False),
              Column("model", _Str(200), nullable=False),
              Column("digest", _Str(64), nullable=False),
              Column("episode_id", _Str(64)),
              Column("tokens_in", Integer, nullable=False),
              Column("tokens_out", Integer, nullable=False),
              Column("units", Float, nullable=False),
              Column("cost_usd", Float, nullable=False),
              Column("at", Float, nullable=False),
              Column("answer", _Text),  # JSON: what a cache hit gives back
              Index("calls_by_digest", "owner", "kind", "digest"),
              Index("calls_by_owner", "owner", "at"))

_ARTIFACTS = TypeAdapter(list[Artifact])
OTHERS_WRITE = frozenset({"cancel_requested_at"})  # columns the coordinator's rows leave alone
ACCEPTED_SCHEMES = ("sqlite+aiosqlite", "postgresql+asyncpg")


class StateStoreError(Exception):
    """The store cannot be used: a URL it does not take, a schema it cannot read, a database it
    cannot reach. The message is one line, and names no password."""


class CoordinatorLock(Protocol):
    """What makes one process the coordinator of a store, held while the store is open."""

    async def confirm(self, conn: AsyncConnection) -> None:
        """Raise ``StateStoreError`` if this process no longer holds the lock; asked in each
        commit's transaction, before anything is written."""

    async def release(self) -> None: ...


def _holder() -> str:
    """Who holds a lock, as the message of whoever is refused names them."""
    return f"pid {os.getpid()} on {socket.gethostname()}"


def _in_use(where: str, holder: str, instead: str) -> StateStoreError:
    return StateStoreError(f"the state store {where} is in use by another Showrunner run or "
                           f"service ({holder}): wait for it to end, or use {instead}")


class RunLock:
    """The one coordinator of a SQLite store: an exclusive ``flock`` on a file beside it, which
    says who holds it (pid and host) for the message of whoever is refused."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    async def take(cls, path: Path, where: str, wait_s: float) -> RunLock:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise StateStoreError(f"cannot lock the state store {where}: {err.strerror}") from None
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "?"
                    os.close(fd)
                    raise _in_use(where, holder, "another storage folder") from None
                await asyncio.sleep(LOCK_POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder().encode(), 0)
        return cls(fd)

    async def confirm(self, conn: AsyncConnection) -> None:
        """(A flock is held for as long as its file is open: it cannot be lost.)"""

    async def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # (closing the file lets the lock go)
            self._fd = None


APPLICATION = "showrunner"  # the lock session's application_name starts so: "showrunner pid…"
_LOCK = ("l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"  # (1: a bigint key)
         " AND l.classid = :high AND l.objid = :low"
         " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())")
_KEY = {"high": COORDINATOR_KEY >> 32, "low": COORDINATOR_KEY & 0xFFFF_FFFF}
HELD_BY = text(f"SELECT 1 FROM pg_locks l WHERE {_LOCK} AND l.pid = :pid").bindparams(**_KEY)
HOLDER = text(f"SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a "
              f"ON a.pid = l.pid WHERE {_LOCK}").bindparams(**_KEY)


class ServerLock:
    """The one coordinator of a PostgreSQL store: a session-level advisory lock, held on a
    connection of its own for as long as the store is open. Like a flock it goes with its
    holder: the server lets a session's locks go when the session ends, however the process
    ended. The session's ``application_name`` says who holds it (pid and host), which
    ``pg_stat_activity`` shows whoever is refused.

    The connection can be lost while the store is open (the server restarted, a proxy or an
    administrator ended the session, the network failed), and the lock with it: another
    coordinator may then take the store. So each commit first confirms, in its own transaction,
    that this process's session still holds the lock (``confirm``). If it does not, the lock is
    taken again on a new connection when it is free (no other coordinator can have taken the
    store meanwhile: it would hold the lock still) and the commit goes on. If another holds it,
    this store is fenced off for good: it commits nothing more, and every flush names who took
    it over, so two coordinators never write over each other's rows; what this one had not
    committed, the other runs again from the rows that were."""

    def __init__(self, engine: AsyncEngine, conn: AsyncConnection, pid: int, where: str) -> None:
        self._engine = engine  # its own, one connection and no pool: closed means let go
        self._conn: AsyncConnection | None = conn
        self._pid = pid  # the holding session's server process, as pg_locks names it
        self._where = where
        self.lost: str | None = None  # why this store was fenced off, once it is

    @classmethod
    async def take(cls, url: URL, where: str, wait_s: float) -> ServerLock:
        """The lock, waited for up to ``wait_s``; ``StateStoreError`` naming the holder after
        that, or SQLAlchemy's error when the server cannot be reached."""
        engine = _engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT", connect_args={
            "server_settings": {"application_name": f"{APPLICATION} {_holder()}",
                                **LOCK_KEEPALIVES}})
        try:
            conn, pid = await _connect_and_lock(engine, time.monotonic() + wait_s)
        except _Held as held:
            await engine.dispose()
            raise _in_use(where, held.holder, "another database") from None
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine, conn, pid, where)

    async def confirm(self, conn: AsyncConnection) -> None:
        if self.lost is not None:
            raise StateStoreError(self.lost)
        if (await conn.execute(HELD_BY, {"pid": self._pid})).first() is not None:
            return
        await self._close()  # the session is gone, and the lock with it
        try:  # (a server that cannot be reached now fails this commit, which is tried again)
            self._conn, self._pid = await _connect_and_lock(self._engine, deadline=0.0)
        except _Held as held:
            self.lost = (f"another Showrunner run or service took it over ({held.holder}) after "
                         "the connection holding this one's lock was lost")
            raise StateStoreError(self.lost) from None
        log.warning("the state store %s: the connection holding the coordinator's lock was "
                    "lost; the lock is taken again", self._where)

    async def release(self) -> None:
        if self._conn is not None:  # let go now, not when the server sees the session end
            with contextlib.suppress(SQLAlchemyError, OSError):
                await self._conn.execute(select(func.pg_advisory_unlock(
                    literal(COORDINATOR_KEY, BigInteger))))
        await self._close()
        await self._engine.dispose()

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(SQLAlchemyError, OSError):
                await conn.close()


class _Held(Exception):
    """The coordinator's lock is held by another session."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder  # its pid and host, as its session names them


async def _connect_and_lock(engine: AsyncEngine, deadline: float
                            ) -> tuple[AsyncConnection, int]:
    """A connection of ``engine`` holding the coordinator's lock, and its server process id;
    ``_Held`` if another session holds the lock still at ``deadline`` (``time.monotonic``)."""
    conn = await engine.connect()
    try:
        # AUTOCOMMIT (the engine's): the session holds the lock and never a transaction, which
        # would keep the server from vacuuming old rows for as long as the store is open.
        while not (await conn.execute(select(func.pg_try_advisory_lock(
                literal(COORDINATOR_KEY, BigInteger))))).scalar():
            if time.monotonic() >= deadline:
                raise _Held(await _holder_of(conn))
            await asyncio.sleep(LOCK_POLL_S)
        return conn, (await conn.execute(select(func.pg_backend_pid()))).scalar_one()
    except BaseException:
        with contextlib.suppress(SQLAlchemyError, OSError):
            await conn.close()
        raise


async def _holder_of(conn: AsyncConnection) -> str:
    """Who holds the coordinator's lock, as its session says (``?``: let go meanwhile)."""
    name = (await conn.execute(HOLDER)).scalar()
    return name.removeprefix(f"{APPLICATION} ") if name else "?"


class PaidCall(BaseModel):
    """One row of the ledger: a call a provider answered, and so billed."""

    owner: str
    kind: str
    model: str
    digest: str
    episode_id: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    units: float = 0.0
    cost_usd: float = 0.0
    at: float
    answer: str | None = None


class StateStore:
    def __init__(self, engine: AsyncEngine, where: str) -> None:
        """Use ``open``, which makes the engine and checks the schema."""
        self._engine = engine
        self.where = where  # the URL without its password, for messages
        self._upsert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        # Writes queued, newest wins per row; events in order.
        self._episodes: dict[str, dict[str, Any]] = {}
        self._nodes: dict[tuple[str, str], dict[str, Any]] = {}
        self._events: list[dict[str, Any]] = []
        self._claims: list[dict[str, Any]] = []
        self._calls: list[dict[str, Any]] = []
        self._uncancel: set[str] = set()  # episodes run again: a cancel asked before is spent
        self._queued = 0  # the number of the newest write queued
        self._committed = 0  # every write numbered up to this is committed
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._writer: asyncio.Task[None] | None = None
        self.failure: str | None = None  # why the last commit failed, until one succeeds

        self._failures = 0  # commits failed so far
        self._lock: CoordinatorLock | None = None  # held by the coordinator running the store
        self._lookups: dict[tuple[str, str, str], asyncio.Future[PaidCall | None]] = {}
        self._looker: asyncio.Task[None] | None = None

    @property
    def superseded(self) -> str | None:
        """Why this store's coordinator is no longer its coordinator (another took its lock
        over after the connection holding it was lost); None while it is."""
        return getattr(self._lock, "lost", None)

    @classmethod
    async def open(cls, url: str, *, exclusive: bool = False,
                   wait_s: float = LOCK_WAIT_S, _as_it_is: bool = False) -> StateStore:
        """The store at ``url``, its tables made if it is new. Raises ``StateStoreError`` for a
        URL of another kind, a store of another schema version, or one that cannot be reached.

        ``exclusive``: this process runs the store's episodes (a coordinator). A second
        coordinator on the same store would take up the first one's episodes and pay for them
        again, so it waits up to ``wait_s`` for the first to end, then is refused. The lock is
        the operating system's, on a file beside a SQLite store, and the server's on PostgreSQL
        (an advisory lock: ``ServerLock``): a process that dies, however it dies, lets it go at
        once, so a restarted coordinator takes over without delay."""
        try:
            parsed = make_url(url)
        except Exception:  # SQLAlchemy's ArgumentError, or a ValueError of a bad port
            raise StateStoreError("the state URL is not a database URL") from None
        where = parsed.render_as_string(hide_password=True)
        if parsed.drivername not in ACCEPTED_SCHEMES:
            raise StateStoreError(f"state URL {where}: use {' or '.join(ACCEPTED_SCHEMES)}")
        lock: CoordinatorLock | None = None
        if _as_it_is:  # the file read as it is, read-only (see below)
            parsed = parsed.set(database=f"file:{parsed.database}?mode=ro&immutable=1",
                                query={"uri": "true"})
        elif parsed.drivername.startswith("sqlite") and parsed.database:
            try:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StateStoreError(f"cannot create the state store's folder for {where}: "
                                      f"{err.strerror}") from None
            if exclusive:
                lock = await RunLock.take(Path(parsed.database + ".lock"), where, wait_s)
        try:
            engine = _engine(parsed)
        except ImportError:  # the driver is an extra: asyncpg for PostgreSQL
            raise StateStoreError(f"state URL {where}: its driver is not installed (for "
                                  "PostgreSQL: pip install 'showrunner[postgres]')") from None
        try:
            if exclusive and engine.dialect.name == "postgresql":
                lock = await ServerLock.take(parsed, where, wait_s)
            try:
                async with engine.begin() as conn:
                    await conn.run_sync(_prepare_schema, where, not _as_it_is)
            except SQLAlchemyError:  # another process made the tables meanwhile: look again
                async with engine.begin() as conn:
                    await conn.run_sync(_prepare_schema, where, not _as_it_is)
        except (StateStoreError, SQLAlchemyError, OSError) as err:
            await engine.dispose()
            if lock is not None:
                await lock.release()
            if isinstance(err, StateStoreError):
                raise
            sqlite_file = engine.dialect.name == "sqlite" and parsed.database and not _as_it_is
            folder = Path(parsed.database).parent if sqlite_file and parsed.database else None
            if not exclusive and folder is not None:
                # A reader (status, list) on a read-only or full folder, where SQLite cannot make
                # its shared-memory file: read the file as it is, changing nothing.
                with contextlib.suppress(StateStoreError):
                    return await cls.open(url, _as_it_is=True)
            raise StateStoreError(f"cannot open the state store {where}: {_first_line(err)}"
                                  f"{_folder_problem(folder)}") from None
        store = cls(engine, where)
        store._lock = lock
        return store

    async def close(self) -> None:
        """Commit what is queued, then let the database go."""
        with contextlib.suppress(StateStoreError):
            await self.flush()
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        await self._engine.dispose()
        if self._lock is not None:
            await self._lock.release()
            self._lock = None

    # -- writes, queued ---------------------------------------------------------------------

    def put_episode(self, record: EpisodeRecord) -> None:
        """The episode's own row as it stands (not its nodes or events)."""
        self._episodes[record.id] = {
            "id": record.id, "owner": record.owner, "arrival": record.arrival,
            "status": record.status.value, "submitted_at": record.submitted_at,
            "started_at": record.started_at, "finished_at": record.finished_at,
            "request": record.request.model_dump_json(), "error": record.error,
            "stop_reason": record.engine.stop_reason,
            "artifacts": _ARTIFACTS.dump_json(record.artifacts).decode()}
        self._queue()

    def put_nodes(self, record: EpisodeRecord, nids: Iterable[NodeId]) -> None:
        """These nodes' rows as they stand: state, figures and result (once made)."""
        for nid in nids:
            result = record.results.get(nid)
            figures = record.nodes.get(nid) or NodeRecord()
            self._nodes[record.id, str(nid)] = {
                "episode_id": record.id, "node": str(nid),
                "state": record.engine.node_state(nid).value,
                "figures": figures.model_dump_json(),
                "result": result.model_dump_json() if result is not None else None}
        self._queue()

    def put_event(self, episode_id: str, event_: Event) -> None:
        self._events.append({"episode_id": episode_id, "seq": event_.seq,
                             "body": event_.model_dump_json()})
        self._queue()

    def forget_cancel(self, episode_id: str) -> None:
        """An episode runs again: a cancel asked of its earlier run does not stop this one."""
        self._uncancel.add(episode_id)
        self._queue()

    def put_claim(self, key: str, owner: str, claim: Claim) -> None:
        """An idempotency key's claim; the first stays if the key is claimed twice."""
        self._claims.append({"key": key, "owner": owner, "fingerprint": claim.fingerprint,
                             "ids": json.dumps(claim.ids)})
        self._queue()

    def put_call(self, call: PaidCall) -> None:
        """A paid call, for the ledger and the call cache."""
        self._calls.append(call.model_dump())
        self._queue()

    def discard(self, episode_ids: Iterable[str]) -> None:
        """Drop what is queued and not yet committed of these episodes (a submission refused
        because it could not be stored must not be stored later, when a retry gets through)."""
        gone = set(episode_ids)
        self._episodes = {k: v for k, v in self._episodes.items() if k not in gone}
        self._nodes = {k: v for k, v in self._nodes.items() if k[0] not in gone}
        self._events = [row for row in self._events if row["episode_id"] not in gone]
        self._claims = [row for row in self._claims if not gone & set(json.loads(row["ids"]))]
        self._uncancel -= gone

    @property
    def queued(self) -> int:
        """The number of the newest write queued: once ``committed`` reaches it, it is stored."""
        return self._queued

    @property
    def committed(self) -> int:
        return self._committed

    async def flush(self) -> None:
        """Return once everything queued so far is committed; raise ``StateStoreError`` if a
        commit tried meanwhile fails (what is queued is kept, and tried again)."""
        target, failures = self._queued, self._failures
        async with self._progress:
            while self._committed < target:
                if self._failures > failures:
                    raise StateStoreError(f"the state store {self.where} cannot be written: "
                                          f"{self.failure}")
                await self._progress.wait()

    def _queue(self) -> None:
        self._queued += 1
        self._wake.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            upto = self._queued
            batch = (self._episodes, self._nodes, self._events, self._claims, self._calls,
                     self._uncancel)
            self._episodes, self._nodes, self._events, self._claims, self._calls = (
                {}, {}, [], [], [])
            self._uncancel = set()
            try:
                async with self._engine.begin() as conn:
                    if self._lock is not None:
                        await self._lock.confirm(conn)
                    await self._commit(conn, *batch)
            except (SQLAlchemyError, OSError, StateStoreError) as err:
                self._put_back(*batch)
                self.failure = _first_line(err)
                self._failures += 1
                log.warning("the state store %s cannot be written (trying again): %s",
                            self.where, self.failure)
                async with self._progress:
                    self._progress.notify_all()
                await asyncio.sleep(RETRY_S)
                self._wake.set()
                continue
            self.failure = None
            async with self._progress:
                self._committed = upto
                self._progress.notify_all()

    async def _commit(self, conn: AsyncConnection, episode_rows: dict[str, dict[str, Any]],
                      node_rows: dict[tuple[str, str], dict[str, Any]],
                      event_rows: list[dict[str, Any]], claim_rows: list[dict[str, Any]],
                      call_rows: list[dict[str, Any]], uncancel: set[str]) -> None:
        # Episodes first: a node or event row never names an episode not yet stored.
        for table, rows, keys in ((episodes, list(episode_rows.values()), ["id"]),
                                  (nodes, list(node_rows.values()), ["episode_id", "node"])):
            if rows:
                statement = self._upsert(table)
                await conn.execute(statement.on_conflict_do_update(
                    index_elements=keys,
                    set_={c.name: statement.excluded[c.name] for c in table.columns
                          if c.name not in keys and c.name not in OTHERS_WRITE}), rows)
        for table, rows in ((events, event_rows), (claims, claim_rows)):
            if rows:
                await conn.execute(self._upsert(table).on_conflict_do_nothing(), rows)
        if call_rows:
            await conn.execute(calls.insert(), call_rows)
        if uncancel:
            await conn.execute(episodes.update().where(episodes.c.id.in_(sorted(uncancel)))
                               .values(cancel_requested_at=None))

    def _put_back(self, episode_rows: dict[str, dict[str, Any]],
                  node_rows: dict[tuple[str, str], dict[str, Any]],
                  event_rows: list[dict[str, Any]], claim_rows: list[dict[str, Any]],
                  call_rows: list[dict[str, Any]], uncancel: set[str]) -> None:
        """Queue a failed batch again, under anything newer queued meanwhile."""
        self._episodes = {**episode_rows, **self._episodes}
        self._nodes = {**node_rows, **self._nodes}
        self._events = [*event_rows, *self._events]
        self._claims = [*claim_rows, *self._claims]
        self._calls = [*call_rows, *self._calls]
        self._uncancel |= uncancel

    # -- reads ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        """A connection whose reads all see one moment: an episode's row, nodes and events as
        they stood together, not a row of one commit and nodes of the next. Neither database
        does so by default: PostgreSQL gives each statement a snapshot of its own (READ
        COMMITTED), and Python's sqlite3 opens no transaction for a SELECT."""
        async with self._engine.connect() as conn:
            if conn.dialect.name == "postgresql":  # (read-only: it never fails to serialize)
                await conn.execution_options(isolation_level="REPEATABLE READ")
            else:  # a deferred transaction: WAL gives it a snapshot at its first read
                await conn.exec_driver_sql("BEGIN")
            yield conn

    async def unfinished(self) -> list[EpisodeRecord]:
        """Every episode not yet finished, whole, in arrival order: what a restarted coordinator
        takes up again."""
        open_states = [s.value for s in EpisodeStatus if not s.finished]
        async with self._reading() as conn:
            rows = (await conn.execute(select(episodes).where(
                episodes.c.status.in_(open_states)).order_by(episodes.c.arrival))).all()
            return [await _record(conn, row._mapping) for row in rows]

    async def record(self, episode_id: str) -> EpisodeRecord | None:
        async with self._reading() as conn:
            row = (await conn.execute(select(episodes).where(
                episodes.c.id == episode_id))).first()
            return await _record(conn, row._mapping) if row is not None else None

    async def statuses(self, episode_ids: Sequence[str]) -> dict[str, EpisodeStatus]:
        """The status of each of these episodes the store has."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(episodes.c.id, episodes.c.status).where(
                episodes.c.id.in_(list(episode_ids))))
            return {row.id: EpisodeStatus(row.status) for row in rows}

    async def page(self, *, owner: str | None = None, status: EpisodeStatus | None = None,
                   limit: int = 50, cursor: int = 0, newest: bool = False
                   ) -> list[EpisodeSummary]:
        """Episodes in arrival order, or ``newest`` first, past arrival number ``cursor`` (the
        last of the page before; 0: from the start), an owner's and those in a status if
        given, without their nodes and events: what a listing shows."""
        arrival = episodes.c.arrival
        query = select(*SUMMARY_COLUMNS)
        if cursor:
            query = query.where(arrival < cursor if newest else arrival > cursor)
        if owner is not None:
            query = query.where(episodes.c.owner == owner)
        if status is not None:
            query = query.where(episodes.c.status == status.value)
        order = arrival.desc() if newest else arrival
        async with self._engine.connect() as conn:
            rows = await conn.execute(query.order_by(order).limit(limit))
            return [_summary(row._mapping) for row in rows]

    async def claim(self, key: str) -> Claim | None:
        """What the idempotency key ``key`` made, if it was used."""
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(claims).where(claims.c.key == key))).first()
        return Claim(row.fingerprint, tuple(json.loads(row.ids))) if row is not None else None

    async def count_unfinished(self, owner: str) -> int:
        """How many of an owner's episodes are queued or running."""
        open_states = [s.value for s in EpisodeStatus if not s.finished]
        async with self._engine.connect() as conn:
            return (await conn.execute(select(func.count()).select_from(episodes).where(
                episodes.c.owner == owner, episodes.c.status.in_(open_states)))).scalar() or 0

    async def request_cancel(self, episode_id: str) -> EpisodeStatus | None:
        """Ask whichever coordinator runs the episode (now, or when the storage is next taken
        up) to cancel it; returns its status as stored, None if there is no such episode."""
        async with self._engine.begin() as conn:
            status = (await conn.execute(select(episodes.c.status).where(
                episodes.c.id == episode_id))).scalar()
            if status is None:
                return None
            if not EpisodeStatus(status).finished:
                await conn.execute(episodes.update().where(episodes.c.id == episode_id).values(
                    cancel_requested_at=time.time()))
            return EpisodeStatus(status)

    async def cancels_requested(self) -> dict[str, float]:
        """Unfinished episodes someone asked to cancel, with when they asked."""
        open_states = [s.value for s in EpisodeStatus if not s.finished]
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(episodes.c.id, episodes.c.cancel_requested_at)
                                      .where(episodes.c.cancel_requested_at.is_not(None),
                                             episodes.c.status.in_(open_states)))
            return {row.id: row.cancel_requested_at for row in rows}

    async def prune(self, finished_before: float) -> list[str]:
        """Delete the rows of every episode that finished before ``finished_before`` (epoch
        seconds), in one transaction; returns their ids (their folders are the caller's)."""
        finished_states = [s.value for s in EpisodeStatus if s.finished]
        async with self._engine.begin() as conn:
            ids = list((await conn.execute(select(episodes.c.id).where(
                episodes.c.status.in_(finished_states),
                episodes.c.finished_at < finished_before).order_by(episodes.c.arrival))).scalars())
            for start in range(0, len(ids), 500):  # (a bound on an IN list's size)
                chunk = ids[start:start + 500]
                for table in (nodes, events):
                    await conn.execute(table.delete().where(table.c.episode_id.in_(chunk)))
                await conn.execute(episodes.delete().where(episodes.c.id.in_(chunk)))
            return ids

    async def cached_call(self, owner: str, kind: str, digest: str) -> PaidCall | None:
        """The newest paid call of ``owner`` to ``kind`` that asked exactly what ``digest``
        names, with its answer.

        Looked up together with every other lookup asked meanwhile, in one query (as writes
        are committed together): hundreds of calls at once cost a few queries, not a
        connection each."""
        key = (owner, kind, digest)
        found = self._lookups.get(key)
        if found is None:
            found = self._lookups[key] = asyncio.get_running_loop().create_future()
            if self._looker is None or self._looker.done():
                self._looker = asyncio.create_task(self._look_up())
        return await asyncio.shield(found)

    async def _look_up(self) -> None:
        while self._lookups:
            await asyncio.sleep(0)  # let the lookups asked in this moment join
            asked, self._lookups = self._lookups, {}
            try:
                answers: dict[tuple[str, str, str], PaidCall] = {}
                keys = list(asked)
                async with self._engine.connect() as conn:
                    for start in range(0, len(keys), 500):  # (a bound on an IN list's size)
                        digests = sorted({k[2] for k in keys[start:start + 500]})
                        rows = await conn.execute(select(calls).where(
                            calls.c.digest.in_(digests), calls.c.answer.is_not(None))
                            .order_by(calls.c.id))
                        for row in rows:  # the newest of each key last, so kept
                            answers[row.owner, row.kind, row.digest] = PaidCall.model_validate(
                                dict(row._mapping))
            except Exception as err:  # each caller hears of it
                for future in asked.values():
                    if not future.done():
                        future.set_exception(err)
                continue
            for key, future in asked.items():
                if not future.done():
                    future.set_result(answers.get(key))

    async def cached_keys(self, kind: str) -> list[tuple[str, str]]:
        """(owner, digest) of every call to ``kind`` whose answer is kept."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(calls.c.owner, calls.c.digest).where(
                calls.c.kind == kind, calls.c.answer.is_not(None)).order_by(calls.c.id))
            return [(row.owner, row.digest) for row in rows]

    async def spent(self, owner: str, since: float) -> float:
        """What ``owner``'s paid calls since ``since`` (epoch seconds) cost, in USD."""
        async with self._engine.connect() as conn:
            total = (await conn.execute(select(func.sum(calls.c.cost_usd)).where(
                calls.c.owner == owner, calls.c.at >= since))).scalar()
        return float(total or 0.0)

    async def last_arrival(self) -> int:
        """The highest arrival number given so far (0 for a new store): a restarted coordinator
        numbers new episodes after it."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(episodes.c.arrival).order_by(
                episodes.c.arrival.desc()).limit(1))
            return rows.scalar() or 0


class EpisodeSummary(BaseModel):
    """An episode as a listing shows it: its own row, none of its nodes or events."""

    id: str
    owner: str
    arrival: int
    status: EpisodeStatus
    premise: str
    scenes: int
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    cancel_requested: bool


SUMMARY_COLUMNS = (episodes.c.id, episodes.c.owner, episodes.c.arrival, episodes.c.status,
                   episodes.c.request, episodes.c.submitted_at, episodes.c.started_at,
                   episodes.c.finished_at, episodes.c.error, episodes.c.cancel_requested_at)


def _summary(row: Any) -> EpisodeSummary:
    request = EpisodeRequest.model_validate_json(row["request"])
    return EpisodeSummary(
        id=row["id"], owner=row["owner"], arrival=row["arrival"],
        status=EpisodeStatus(row["status"]), premise=request.premise, scenes=request.scenes,
        submitted_at=row["submitted_at"], started_at=row["started_at"],
        finished_at=row["finished_at"], error=row["error"],
        cancel_requested=row["cancel_requested_at"] is not None)


async def _record(conn: AsyncConnection, row: Any) -> EpisodeRecord:
    """An episode's record from its rows: the engine's state from its nodes' states (a node that
    was running is neither done nor failed, so it runs again)."""
    engine = EngineState(stop_reason=row["stop_reason"])
    figures: dict[NodeId, NodeRecord] = {}
    results: dict[NodeId, NodeResult] = {}
    settled = {NodeState.DONE: engine.done, NodeState.FAILED: engine.failed,
               NodeState.SKIPPED: engine.skipped}
    for node in await conn.execute(select(nodes).where(nodes.c.episode_id == row["id"])):
        nid = NodeId.parse(node.node)
        figures[nid] = NodeRecord.model_validate_json(node.figures)
        state = NodeState(node.state)
        if state in settled:
            settled[state].add(nid)
        if node.result is not None and state is NodeState.DONE:
            results[nid] = RESULT_TYPES[nid.kind].model_validate_json(node.result)
    kept = (await conn.execute(select(events.c.body).where(events.c.episode_id == row["id"])
                               .order_by(events.c.seq.desc()).limit(EVENTS_LOADED))).scalars()
    return EpisodeRecord(
        id=row["id"], owner=row["owner"], arrival=row["arrival"],
        status=EpisodeStatus(row["status"]), submitted_at=row["submitted_at"],
        started_at=row["started_at"], finished_at=row["finished_at"],
        request=EpisodeRequest.model_validate_json(row["request"]), error=row["error"],
        artifacts=_ARTIFACTS.validate_json(row["artifacts"]), engine=engine, nodes=figures,
        results=results, events=[Event.model_validate_json(b) for b in reversed(list(kept))])


def _prepare_schema(conn: Connection, where: str, writable: bool) -> None:
    """Make the tables of a new store, bring a store of an older version up to this one, or
    check an existing store's version."""
    found = _schema_version(conn, where)
    if writable and (found is None or found in MIGRATES_FROM):
        # One process at a time, until this transaction ends: the coordinator and each
        # provider open a new store at once as a run starts, and one must not see the tables
        # another is making, without their version. So: lock, then look again.
        if conn.dialect.name == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock(literal(SCHEMA_KEY, BigInteger))))
        else:  # (Python's sqlite3 would commit each CREATE TABLE by itself)
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        found = _schema_version(conn, where)
    if found is None:
        metadata.create_all(conn)
        conn.execute(meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
        return
    if found in MIGRATES_FROM:  # what a newer version added is tables, made here
        metadata.create_all(conn)
        conn.execute(meta.update().where(meta.c.key == "schema_version").values(
            value=str(SCHEMA_VERSION)))
        return
    if found != SCHEMA_VERSION:
        newer = found > SCHEMA_VERSION
        raise StateStoreError(
            f"the state store {where} has schema version {found}; this Showrunner reads "
            f"version {SCHEMA_VERSION}" + ("; upgrade Showrunner" if newer else
                                           "; no migration from it exists"))


def _schema_version(conn: Connection, where: str) -> int | None:
    """The store's schema version; None for a new one (no tables)."""
    if not inspect(conn).has_table(meta.name):
        return None
    found = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
    if found is None or not found.isdigit():
        raise StateStoreError(f"the state store {where} has no schema version: not a "
                              "Showrunner store")
    return int(found)


def _engine(url: URL, **options: Any) -> AsyncEngine:
    """An engine for ``url``, with what each database needs of every new connection. A server's
    pooled connections are tried before use: after a restart (or a failover) the first commit
    then reconnects instead of failing once on a connection the server has forgotten."""
    if url.get_backend_name() == "postgresql" and options.get("poolclass") is not NullPool:
        options = {"pool_pre_ping": True, **options}
    engine = create_async_engine(url, **options)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    else:
        event.listen(engine.sync_engine, "do_connect", _connect_asyncpg)
    return engine


def _connect_asyncpg(dialect: Dialect, record: Any, cargs: Any, cparams: Any) -> Any:
    """asyncpg's connect, its errors made the DBAPI's. SQLAlchemy turns a failed connect into
    its own error only when the driver raises its DBAPI classes, which asyncpg's adapter does
    for statements but not for connecting: a wrong password would escape every ``except
    SQLAlchemyError`` as a bare asyncpg error (SQLite's are wrapped)."""
    import asyncpg

    dbapi = dialect.loaded_dbapi
    try:
        return dbapi.connect(*cargs, **cparams)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as err:
        raise dbapi.OperationalError(str(err) or type(err).__name__) from err


def _sqlite_pragmas(connection: Any, _: Any) -> None:
    """WAL lets readers (``showrunner status``, another process) read while the coordinator
    writes; NORMAL syncs at checkpoints, not at every commit, which a killed process never
    loses; the busy timeout waits out another writer instead of failing at once."""
    cursor = connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=5000"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _folder_problem(folder: Path | None) -> str:
    """What is wrong with a SQLite store's folder, if something is: read-only, or full."""
    if folder is None or not folder.is_dir():
        return ""
    if not os.access(folder, os.W_OK):  # (EROFS is refused to root too)
        return f"; the folder {folder} is read-only"
    if shutil.disk_usage(folder).free < FULL_BELOW_BYTES:
        return f"; the folder {folder} is full"
    return ""


def _first_line(err: BaseException) -> str:
    """An error's own message, on one line: SQLAlchemy adds the statement and a link below,
    and its asyncpg adapter the class before (the driver's own error is the cause)."""
    original = getattr(err, "orig", None) or err
    original = original.__cause__ or original
    return (str(original).strip().splitlines() or [type(original).__name__])[0]
