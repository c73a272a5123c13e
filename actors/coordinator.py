"""The episode coordinator: takes episodes, admits them, runs each on an executor, keeps their
records and events, and lets other processes follow them.

A plain class (``actors.remote`` makes it the named actor ``showrunner:coordinator``). Up to
``max_parallel_episodes`` episodes run at once; the rest wait by priority, then arrival. How one
episode's graph progresses is its engine's business (``pipelines.engine``), what each node does
its runner's (``actors.node_runners``); who may see which episode is the service's
(``actors.tenant_desk``).

All state lives in ``EpisodeRecord``s, and, given a state store, in its rows as it changes: each
submission (stored before it is acknowledged), each node as it starts and settles, each event.
A coordinator started again on the same store (Ray restarts a dead one) takes up every
unfinished episode from its settled nodes before it answers anything: a node whose result is
stored never runs again; those that were running run again.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from actors.change_feed import ChangeFeed
from actors.episode_calls import EpisodeCalls, Provider
from actors.executor import EpisodeExecutor
from actors.media_tasks import MediaTasks, ThreadMediaTasks
from actors.metrics import NO_METRICS, CoordinatorMetrics
from actors.node_runners import RUNNERS, EpisodeContext, NodeRunner
from actors.retention import prune
from actors.spending import Spending
from actors.state_store import StateStore, StateStoreError
from pipelines.budget import Budget
from pipelines.engine import EpisodeEngine, Outcome
from pipelines.episode_folder import SCRIPT_ARTIFACTS, EpisodeFolder
from pipelines.episode_state import EpisodeRecord, Event, EventKind, StitchedEpisode
from pipelines.episode_view import EpisodeView
from pipelines.errors import storage_error
from pipelines.models import EpisodeRequest, EpisodeStatus, with_seeds
from pipelines.planner import STITCH_ID, NodeId, NodeKind, dialogue_id
from pipelines.screenplay import script_files, write_files
from pipelines.settings import ProviderKind, Settings
from pipelines.storage import Storage
from pipelines.tenancy import Claim, DailyBudget, fingerprint

log = logging.getLogger("showrunner.coordinator")

# Events kept per episode: enough for a 200-scene episode's whole history.
MAX_EVENTS = 5000
GAUGE_INTERVAL_S = 0.5
MAX_REASON_CHARS = 4000
LONGEST_POLL_S = 60.0
# Finished episodes kept in memory, the newest; older ones are read from the state store when
# asked for, so a long-running service's memory does not grow with every episode it ran.
KEEP_FINISHED = 200
CANCEL_POLL_S = 1.0  # how often the store is asked for cancels another process asked for
PRUNE_EVERY_S = 3600.0  # how often finished episodes past ``retention_days`` are removed


class EpisodeCoordinator:
    def __init__(
        self,
        settings: Settings,
        providers: Mapping[ProviderKind, Provider],
        *,
        storage: Storage | None = None,
        tasks: MediaTasks | None = None,
        metrics: CoordinatorMetrics = NO_METRICS,
        runners: Mapping[NodeKind, NodeRunner] = RUNNERS,
        state_url: str | None = None,
    ) -> None:
        """``storage``: where episodes' files go (none: scripts stay in memory, and media is
        refused); ``state_url``: the state store to keep episodes in and take them up from
        (none: in memory only)."""
        self.settings = settings
        self.providers = dict(providers)
        self.storage = storage
        self.tasks = tasks or ThreadMediaTasks(storage, settings.encoding)
        self.metrics = metrics
        self.runners = runners
        self.records: dict[str, EpisodeRecord] = {}
        self.feed = ChangeFeed()  # one key per episode, changed by each of its events
        self._queue: list[tuple[int, int, str]] = []  # (-priority, arrival, id): a heap
        self._runs: dict[str, EpisodeExecutor] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._started: dict[str, float] = {}  # when each episode started, monotonic
        self._arrivals = 0
        self._gauges_at = 0.0
        self._state_url = state_url
        self.store: StateStore | None = None
        self._loaded: asyncio.Task[None] | None = None
        self._cancel_watch: asyncio.Task[None] | None = None
        # Finished episodes in memory, oldest first, each with the store's write of its ending.
        self._finished: dict[str, int] = {}
        self._letting_go: asyncio.Task[None] | None = None
        self._claims: dict[str, Claim] = {}  # idempotency keys' claims, when there is no store
        self._queued_at: dict[str, float] = {}  # when each episode in memory was last queued
        self.spending = Spending(settings.service.daily_budget_usd, self._spent_since)
        self._pruning: asyncio.Task[None] | None = None
        self._superseded: str | None = None  # why another coordinator runs the store now
        # Scripts being written (in threads: object storage may wait out an outage): one write
        # of an episode's at a time, in order; the episodes ending, whose cancel waits for it.
        self._script_locks: dict[str, asyncio.Lock] = {}
        self._script_writes: set[asyncio.Task[str | None]] = set()
        self._ending: set[str] = set()

    # -- the public surface (each method is an actor method) ----------------------------------

    async def submit_many(self, requests: list[EpisodeRequest], *, ids: list[str] | None = None,
                          owner: str = "", resume: bool = False, claim_key: str | None = None
                          ) -> list[EpisodeView]:
        """Queue episodes; each starts as soon as a slot is free. Returns their views (their ids
        are made here unless given; a given id must be new).

        New episodes are refused (``DailyBudgetSpent``) once their owner's daily budget is
        spent. With ``resume``, a given id may name an episode this store already has, of the
        same request and owner: one that runs goes on, a completed one is returned as it is, and a
        failed or cancelled one runs again from its done nodes (what a re-run command asks)."""
        await self.ready()
        if self._superseded is not None:
            raise StateStoreError(self._superseded)
        claim = Claim(fingerprint(requests), ()) if claim_key is not None else None
        requests = with_seeds(requests)  # the same request again draws the same seeds
        chosen = list(ids) if ids is not None else [uuid.uuid4().hex[:12] for _ in requests]
        if len(chosen) != len(requests) or len(set(chosen)) != len(chosen):
            raise ValueError("give one distinct id per request")
        known = {i: r for i, r in zip(chosen, await self._find(chosen), strict=True)
                 if r is not None}
        if known and not resume:
            raise ValueError(f"episode ids must be new: {sorted(known)}")
        for request, episode_id in zip(requests, chosen, strict=True):
            if episode_id in known and (known[episode_id].request != request
                                        or known[episode_id].owner != owner):
                raise ValueError(f"episode {episode_id} exists with another request or owner")
        if self.storage is None and any(r.media for r in requests):
            raise ValueError("media needs a storage: start the coordinator with one")
        if len(known) < len(chosen):  # new episodes: not once the owner's day is spent
            today = await self.daily_budget(owner)
            if today is not None:
                today.check()
        before = {i: self.records.get(i) for i in chosen}
        for request, episode_id in zip(requests, chosen, strict=True):
            record = known.get(episode_id)
            if record is None:
                self._arrivals += 1
                record = EpisodeRecord(id=episode_id, request=request, owner=owner,
                                       submitted_at=time.time(), arrival=self._arrivals)
                self._queue_episode(record, f"{request.scenes} scenes")
            elif record.status in (EpisodeStatus.FAILED, EpisodeStatus.CANCELLED):
                again = _to_run_again(record)
                if self.store is not None:  # its failed and skipped nodes are pending again
                    self.store.put_nodes(again, record.engine.failed | record.engine.skipped)
                    self.store.forget_cancel(episode_id)
                self._queue_episode(again, f"run again: {len(record.engine.done)} nodes kept")
        if claim_key is not None and claim is not None:  # (of the requests as sent)
            claim = Claim(claim.fingerprint, tuple(chosen))
            if self.store is not None:
                self.store.put_claim(claim_key, owner, claim)
            else:
                self._claims[claim_key] = claim
        if self.store is not None:  # acknowledged once it would survive this process
            try:
                await self.store.flush()
            except StateStoreError as err:  # not taken: nothing runs, nothing is paid
                self._take_back(before)
                raise StateStoreError(f"the episodes were not taken: {err}") from None
        self._admit()
        return [EpisodeView.of(r) for r in await self._find(chosen) if r is not None]

    def _take_back(self, before: Mapping[str, EpisodeRecord | None]) -> None:
        """Undo a submission that could not be stored: its episodes leave the queue, and
        memory is as it was; what was queued for the store of them is dropped."""
        assert self.store is not None
        self.store.discard(before)
        self._queue = [entry for entry in self._queue if entry[2] not in before]
        heapq.heapify(self._queue)
        for episode_id, record in before.items():
            if record is None:
                self.records.pop(episode_id, None)
                self._queued_at.pop(episode_id, None)
                self.feed.forget(episode_id)
            else:
                self.records[episode_id] = record

    async def claimed(self, claim_key: str) -> Claim | None:
        """What was made under an idempotency key, if anything was."""
        await self.ready()
        if self.store is not None:
            return await self.store.claim(claim_key)
        return self._claims.get(claim_key)

    async def page(self, owner: str, status: EpisodeStatus | None = None, limit: int = 20,
                   cursor: int = 0, newest: bool = False
                   ) -> tuple[list[EpisodeView], int | None]:
        """An owner's episodes in submission order, or ``newest`` first, past arrival number
        ``cursor`` (0: from the start; only those in ``status``, if given): the page, and the
        cursor of the next (None at the end)."""
        await self.ready()
        if self.store is not None:
            rows = await self.store.page(owner=owner, status=status, limit=limit + 1,
                                         cursor=cursor, newest=newest)
            listed = [(r.arrival, r.id) for r in rows]
        else:
            listed = sorted(((r.arrival, r.id) for r in self.records.values()
                             if r.owner == owner and (status is None or r.status is status)
                             and (not cursor or (r.arrival < cursor if newest
                                                 else r.arrival > cursor))),
                            reverse=newest)[:limit + 1]
        page = listed[:limit]
        found = await self._find([i for _, i in page])
        more = len(listed) > limit
        return [EpisodeView.of(r) for r in found if r is not None], (page[-1][0] if more else None)

    async def unfinished_count(self, owner: str) -> int:
        """How many of an owner's episodes are queued or running."""
        await self.ready()
        if self.store is not None:
            return await self.store.count_unfinished(owner)
        return sum(1 for r in self.records.values()
                   if r.owner == owner and not r.status.finished)

    async def submit(self, request: EpisodeRequest, episode_id: str | None = None,
                     owner: str = "") -> str:
        """Queue one episode; returns its id."""
        [made] = await self.submit_many([request], ids=[episode_id] if episode_id else None,
                                        owner=owner)
        return made.id

    async def cancel(self, episode_id: str) -> EpisodeStatus:
        """End all of an episode's work; what finished is kept. Idempotent."""
        await self.ready()
        record = await self._get(episode_id)
        if record.status.finished:
            return record.status
        task = self._tasks.get(episode_id)
        if task is None:  # still queued
            self._queue = [entry for entry in self._queue if entry[2] != episode_id]
            heapq.heapify(self._queue)
            await self._end(record, EpisodeStatus.CANCELLED, "cancelled before it started")
        elif episode_id in self._ending:  # its ending is being written: that is what it is
            await asyncio.gather(task, return_exceptions=True)
        else:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if not record.status.finished:  # cancelled before its first step ran: ``_run``
                await self._end(record, EpisodeStatus.CANCELLED, "cancelled")  # never started,
                self._tasks.pop(episode_id, None)  # so its slot is given back here
                self._admit()
        return record.status

    async def episode(self, episode_id: str) -> EpisodeRecord:
        await self.ready()
        return await self._get(episode_id)

    async def records_of(self, episode_ids: list[str]) -> list[EpisodeRecord]:
        """Whole records, for the run report, once what they say is stored too."""
        await self.ready()
        await self._stored()
        return [await self._get(i) for i in episode_ids]

    async def view(self, episode_id: str) -> EpisodeView | None:
        await self.ready()
        [record] = await self._find([episode_id])
        return EpisodeView.of(record) if record is not None else None

    async def views(self, episode_ids: list[str]) -> list[EpisodeView]:
        await self.ready()
        return [EpisodeView.of(await self._get(i)) for i in episode_ids]

    async def statuses(self, episode_ids: list[str]) -> list[EpisodeStatus | None]:
        """Each episode's status; None for an id that names none."""
        await self.ready()
        stored = await self.store.statuses(
            [i for i in episode_ids if i not in self.records]) if self.store else {}
        return [r.status if (r := self.records.get(i)) is not None else stored.get(i)
                for i in episode_ids]

    async def changes(self, since: int, timeout_s: float = 30.0
                      ) -> tuple[int, list[EpisodeView]]:
        """The views of every episode changed after change number ``since`` (waiting up to
        ``timeout_s`` for one), and the number to ask from next.

        What each Serve replica follows to answer status polls from memory: one long poll per
        replica instead of one actor call per poll.
        """
        await self.ready()
        version = await self.feed.listen_for_change(since, min(timeout_s, LONGEST_POLL_S))
        return version, [EpisodeView.of(self.records[i]) for i in self.feed.changed_since(since)
                         if i in self.records]

    async def events(self, episode_id: str, after: int = 0, timeout_s: float = 0.0
                     ) -> list[Event]:
        """Events numbered above ``after``; waits up to ``timeout_s`` for one if there is none.

        A long poll: the caller's stream is a loop of these, resumable from any ``seq``.
        """
        await self.ready()
        record = await self._get(episode_id)
        if not _after(record, after) and not record.status.finished:
            await self.feed.listen_for_change(self.feed.version_of(episode_id),
                                              min(timeout_s, LONGEST_POLL_S), key=episode_id)
        # Only events that are stored: a client resuming after a restart must never have seen
        # a number the restarted coordinator gives to another event. Those emitted while this
        # waits for the commit are not in it: they are given out next time.
        given = _after(record, after)
        if given:
            await self._stored()
        return given

    async def wait(self, episode_ids: Iterable[str] | None = None) -> list[EpisodeView]:
        """Return when every given episode (default: all) has finished, and that is stored."""
        await self.ready()
        ids = list(episode_ids) if episode_ids is not None else list(self.records)
        for episode_id in ids:
            record = await self._get(episode_id)
            while not record.status.finished:
                await self.feed.listen_for_change(self.feed.version_of(episode_id), 5.0,
                                                  key=episode_id)
                record = await self._get(episode_id)  # (from the store, once let go)
        await self._stored()  # ended, and its ending stored
        return [EpisodeView.of(await self._get(i)) for i in ids]

    async def daily_budget(self, owner: str) -> DailyBudget | None:
        """The owner's budget for today, as it stands (None: there is no daily budget)."""
        await self.ready()
        today = await self.spending.today(owner)
        if today is None:
            return None
        return DailyBudget(limit_usd=today.limit_usd, spent_usd=today.spent_usd,
                           held_usd=today.held_usd, resets_at=self.spending.resets_at())

    async def close(self) -> None:
        """Stop watching for cancels and pruning, and let the store go (what runs is not
        stopped: a coordinator closed mid-run is taken up again from the store)."""
        background = [t for t in (self._cancel_watch, self._pruning, self._letting_go)
                      if t is not None]
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if self.store is not None:
            await self.store.close()

    async def ping(self) -> str:
        await self.ready()
        return "ok"

    async def episodes_storage(self) -> Storage | None:
        """The storage every episode's files are in (``EpisodeFolder`` names them), as this
        coordinator opened it: readers serve files from there."""
        return self.storage

    # -- the state store ----------------------------------------------------------------------

    async def ready(self) -> None:
        """Open the state store and take up its unfinished episodes, once, before anything is
        answered (every public method waits for this)."""
        if self._state_url is None:
            return
        if self._loaded is None:
            self._loaded = asyncio.create_task(self._take_up())
        await asyncio.shield(self._loaded)

    async def _take_up(self) -> None:
        assert self._state_url is not None
        self.store = await StateStore.open(self._state_url, exclusive=True)
        self._arrivals = await self.store.last_arrival()
        cancelled = await self.store.cancels_requested()
        for record in await self.store.unfinished():
            kept = record.engine.settled()
            if record.id in cancelled:  # asked while no coordinator ran it
                self.records[record.id] = record
                await self._end(record, EpisodeStatus.CANCELLED, "cancelled")
                continue
            self._queue_episode(record, f"taken up again after a restart: {kept} of "
                                f"{len(record.plan().nodes)} nodes kept")
            log.info("episode %s taken up again (%d nodes kept)", record.id, kept)
        self._admit()
        self._cancel_watch = asyncio.create_task(self._watch_cancels())
        if self.settings.retention_days is not None:
            self._pruning = asyncio.create_task(self._prune_every_hour())

    async def _spent_since(self, owner: str, since: float) -> float:
        return await self.store.spent(owner, since) if self.store is not None else 0.0

    async def _prune_every_hour(self) -> None:
        """Remove episodes that finished over ``retention_days`` ago, rows and folders."""
        assert self.store is not None and self.settings.retention_days is not None
        while True:
            cutoff = time.time() - self.settings.retention_days * 86_400
            try:
                removed = await prune(self.store, self.storage, cutoff)
            except Exception:  # a store that cannot be written now: try again next time
                log.warning("removing old episodes failed", exc_info=True)
            else:
                for episode_id in removed:
                    self._forget(episode_id)
                if removed:
                    log.info("removed %d episode(s) past the retention", len(removed))
            await asyncio.sleep(PRUNE_EVERY_S)

    async def _watch_cancels(self) -> None:
        """Act on cancels asked through the store (``showrunner cancel`` from another
        process), within a second, while episodes are unfinished."""
        assert self.store is not None
        while True:
            await asyncio.sleep(CANCEL_POLL_S)
            if self.store.superseded is not None:
                self._stand_down(self.store.superseded)
                return
            if not (self._tasks or self._queue):
                continue
            try:
                asked = await self.store.cancels_requested()
            except Exception:  # a store that cannot be read now: ask again next time
                log.warning("reading the cancels asked failed", exc_info=True)
                continue
            for episode_id, when in asked.items():
                # (not a cancel of an earlier run, read before its run again was stored)
                if episode_id in self.records and when > self._queued_at.get(episode_id, 0.0):
                    await self.cancel(episode_id)

    def _stand_down(self, reason: str) -> None:
        """Another coordinator took this store over (this one's lock was lost with its
        connection, and the other took it): its episodes are that one's now. Stop every call
        this one has going and take nothing more, or the same calls would be paid twice."""
        log.error("standing down: %s", reason)
        self._superseded = reason
        self._queue.clear()
        for task in self._tasks.values():
            task.cancel()

    def _queue_episode(self, record: EpisodeRecord, message: str) -> None:
        record.status = EpisodeStatus.QUEUED
        self._finished.pop(record.id, None)  # (one run again)
        self._queued_at[record.id] = time.time()
        self.records[record.id] = record
        if record.started_at is not None:  # its events' times go on from where they were
            self._started[record.id] = time.monotonic() - (time.time() - record.started_at)
        heapq.heappush(self._queue, (-record.request.priority, record.arrival, record.id))
        self._emit(record, EventKind.QUEUED, message=message)

    async def _stored(self) -> None:
        """Wait until what was queued for the store is committed. A store that cannot be
        written does not stop the work: it is said in the log, and kept trying."""
        if self.store is None:
            return
        try:
            await self.store.flush()
        except StateStoreError as err:
            log.warning("%s", err)

    # -- running episodes ---------------------------------------------------------------------

    async def _find(self, episode_ids: list[str]) -> list[EpisodeRecord | None]:
        """Each episode's record: in memory while it runs, else from the store (one a previous
        coordinator ran); None for an id that names none."""
        found = [self.records.get(i) for i in episode_ids]
        if self.store is not None:
            for n, episode_id in enumerate(episode_ids):
                if found[n] is None:
                    found[n] = await self.store.record(episode_id)
        return found

    async def _get(self, episode_id: str) -> EpisodeRecord:
        [record] = await self._find([episode_id])
        if record is None:
            raise KeyError(f"no episode {episode_id!r}")
        return record

    def _admit(self) -> None:
        """Start queued episodes, highest priority first, then earliest, while slots are free."""
        while self._queue and len(self._tasks) < self.settings.max_parallel_episodes:
            _, _, episode_id = heapq.heappop(self._queue)
            record = self.records[episode_id]
            record.status = EpisodeStatus.RUNNING
            self._tasks[episode_id] = asyncio.create_task(self._run(record))

    async def _run(self, record: EpisodeRecord) -> None:
        if record.started_at is None:  # (one taken up again keeps its first start)
            record.started_at = time.time()
            self._started[record.id] = time.monotonic()
        self._emit(record, EventKind.STARTED)
        try:
            outcome = await self._executor(record, await self.spending.budgets(record)).run()
            status, reason = outcome.status, _reason(record, outcome)
        except asyncio.CancelledError:
            status, reason = EpisodeStatus.CANCELLED, "cancelled"
        except Exception as err:  # a bug of ours: fail this episode, never the coordinator
            log.exception("episode %s crashed", record.id)
            status, reason = EpisodeStatus.FAILED, f"internal error: {err!r}"
        try:
            await self._end(record, status, reason)
        finally:
            self._tasks.pop(record.id, None)
            self._runs.pop(record.id, None)
            self._admit()
            # (its ending event reported the gauges while it still counted as running)
            self._report_gauges()

    def _executor(self, record: EpisodeRecord, budgets: list[Budget]) -> EpisodeExecutor:
        plan = record.plan()
        engine = EpisodeEngine(plan, record.engine,
                               skip_failed_scenes=record.request.on_scene_failure == "skip",
                               max_window=self.settings.max_parallel_scenes)
        folder = (EpisodeFolder(record.id)
                  if self.storage is not None and record.request.media else None)
        cache = self.settings.cache and record.request.cache
        providers = {kind: EpisodeCalls(provider, self.settings.provider(kind).prices,
                                        episode_id=record.id, owner=record.owner, cache=cache,
                                        budgets=budgets,
                                        tier=self._tier(record) if kind is ProviderKind.LLM
                                        else None)
                     for kind, provider in self.providers.items()}
        ctx = EpisodeContext(record, plan, folder, providers, self.tasks)
        executor = EpisodeExecutor(
            ctx, engine, self.runners,
            lambda kind, node, message: self._on_node_event(record, kind, node, message),
            started=self._started[record.id], metrics=self.metrics)
        self._runs[record.id] = executor
        return executor

    def _tier(self, record: EpisodeRecord) -> dict[str, Any] | None:
        """How the episode's chat calls go: on flex, with its own wait and fallback if it names
        them (else the provider's settings'); None at standard."""
        request = record.request
        if (request.tier or self.settings.llm.tier) != "flex":
            return None
        return {"tier": "flex", "flex_wait_s": request.flex_wait_s,
                "flex_fallback": request.flex_fallback}

    async def _end(self, record: EpisodeRecord, status: EpisodeStatus, reason: str | None
                   ) -> None:
        """End an episode, keeping what it paid for whatever the ending: the script so far (its
        media files are already in its folder), written before the ending is told."""
        self._ending.add(record.id)
        try:
            problem = await self._keep_script(record, final=True)
        finally:
            self._ending.discard(record.id)
            self._script_locks.pop(record.id, None)  # no write of it comes after this one
        self._finish(record, status, reason, problem)

    def _finish(self, record: EpisodeRecord, status: EpisodeStatus, reason: str | None,
                problem: str | None) -> None:
        """The ending itself, told at once; ``problem``: what kept the script from being
        written."""
        if problem is not None:
            reason = f"{reason}; {problem}" if reason else problem
            if status is EpisodeStatus.COMPLETED:
                status = EpisodeStatus.FAILED
        stitched = record.result(STITCH_ID, StitchedEpisode)
        if stitched is not None:
            record.artifacts = [*record.artifacts, *stitched.artifacts]
        record.status = status
        record.error = reason  # for a completed episode, a note such as the scenes it skipped
        record.finished_at = time.time()
        self._emit(record, EventKind.ending(status), message=reason or "")
        log.info("episode %s %s%s", record.id, status.value, f": {reason}" if reason else "")
        self._let_go(record.id)

    def _let_go(self, episode_id: str) -> None:
        """Keep the newest finished episodes in memory; let the oldest go once the store has
        their endings. One let go earlier would be read back from the store as still running,
        and whoever waits for it would wait forever."""
        if self.store is None:
            return
        self._finished[episode_id] = self.store.queued
        if self._letting_go is None or self._letting_go.done():
            self._letting_go = asyncio.create_task(self._let_go_once_stored())

    async def _let_go_once_stored(self) -> None:
        assert self.store is not None
        while len(self._finished) > KEEP_FINISHED:
            await self._stored()
            if self.store.failure is not None:
                return  # kept in memory while the store cannot be written; the next end retries
            while (len(self._finished) > KEEP_FINISHED
                   and next(iter(self._finished.values())) <= self.store.committed):
                self._forget(next(iter(self._finished)))

    def _forget(self, episode_id: str) -> None:
        """A finished episode leaves memory (the store has it, or it was removed)."""
        self._finished.pop(episode_id, None)
        self.records.pop(episode_id, None)
        self._started.pop(episode_id, None)
        self._queued_at.pop(episode_id, None)
        self.feed.forget(episode_id)

    async def _keep_script(self, record: EpisodeRecord, *, final: bool = False) -> str | None:
        """Write the episode's script as it stands, if it has one and a folder; say what went
        wrong if it could not be written. Made here, in the loop (the record changes), and
        written in a thread: object storage may wait out an outage for a minute, and this loop
        runs every episode. Only the ``final`` write, at the ending, comes after the ending."""
        storage = self.storage
        if storage is None or not record.outline_drafts():
            return None
        async with self._script_locks.setdefault(record.id, asyncio.Lock()):
            if not final and (record.id in self._ending or record.status.finished):
                return None
            files = script_files(record, EpisodeFolder(record.id))  # the newest, written last
            try:
                await asyncio.to_thread(write_files, storage, files)
            except OSError as err:
                log.warning("episode %s: script not written: %s", record.id, err)
                return f"the script could not be written: {storage_error(err)}"
        record.artifacts = list(SCRIPT_ARTIFACTS)
        return None

    def _on_node_event(self, record: EpisodeRecord, kind: EventKind, node: NodeId | None,
                       message: str) -> None:
        if self.store is not None and node is not None and kind is not EventKind.NODE_RETRYING:
            # A failure skips the rest of its scene (under "skip"): those are settled too.
            skipped = ([n for n in record.engine.skipped if n.scene == node.scene]
                       if kind is EventKind.NODE_FAILED and node.scene is not None else [])
            self.store.put_nodes(record, [node, *skipped])
        self._emit(record, kind, node, message)
        # The script is written as soon as its last dialogue is, before the media: an episode
        # that fails later (a full disk at the stitch, a dead coordinator) still has it.
        if (node is not None and node.kind is NodeKind.DIALOGUE and record.request.media
                and kind in (EventKind.NODE_FINISHED, EventKind.NODE_FAILED)
                and self._dialogues_settled(record)):
            writing = asyncio.create_task(self._keep_script(record))
            self._script_writes.add(writing)
            writing.add_done_callback(self._script_writes.discard)

    @staticmethod
    def _dialogues_settled(record: EpisodeRecord) -> bool:
        engine = record.engine
        settled = engine.done | engine.failed | engine.skipped
        return all(dialogue_id(scene) in settled
                   for scene in range(1, record.request.scenes + 1))

    # -- events -------------------------------------------------------------------------------

    def _emit(self, record: EpisodeRecord, kind: EventKind, node: NodeId | None = None,
              message: str = "") -> None:
        started = self._started.get(record.id)
        seq = record.events[-1].seq + 1 if record.events else 1
        record.events.append(Event(
            seq=seq, at_s=round(time.monotonic() - started, 4) if started else 0.0, kind=kind,
            node=node, percent=record.percent, message=message))
        if len(record.events) > MAX_EVENTS:
            del record.events[: len(record.events) - MAX_EVENTS]
        if self.store is not None:
            if node is None:  # the episode's own state changed with it
                self.store.put_episode(record)
            self.store.put_event(record.id, record.events[-1])
        self.feed.notify_changed(record.id)
        now = time.monotonic()
        # Episode-level events always, node events at most every GAUGE_INTERVAL_S: counting the
        # episodes is O(episodes), too much for every node's start and end.
        if node is None or now - self._gauges_at >= GAUGE_INTERVAL_S:
            self._gauges_at = now
            self._report_gauges()

    def _report_gauges(self) -> None:
        self.metrics.episodes(queued=len(self._queue), running=len(self._tasks),
                              nodes_in_flight=sum(len(r.engine.running)
                                                  for r in self._runs.values()))


def _to_run_again(record: EpisodeRecord) -> EpisodeRecord:
    """A failed or cancelled episode, made ready to run again: its done nodes kept, its failed
    and skipped ones to be tried again, its ending forgotten."""
    engine = record.engine.model_copy(update={"failed": set(), "skipped": set(),
                                              "stop_reason": None, "window": None})
    for nid in record.engine.failed:
        record.nodes.pop(nid, None)
    return record.model_copy(update={"engine": engine, "error": None, "finished_at": None,
                                     "artifacts": []})


def _after(record: EpisodeRecord, seq: int) -> list[Event]:
    return [e for e in record.events if e.seq > seq]


def _reason(record: EpisodeRecord, outcome: Outcome) -> str | None:
    """Why an episode ended as it did: the engine's reason, or its failed nodes' errors."""
    if outcome.reason is not None or not outcome.failed:
        return outcome.reason
    listed = "; ".join(f"{nid}: {record.nodes[nid].error}" for nid in outcome.failed)
    return f"{len(outcome.failed)} node(s) failed: {listed}"[:MAX_REASON_CHARS]
