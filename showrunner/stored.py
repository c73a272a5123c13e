"""What the CLI reads from the state store itself, without Ray: ``status``, ``list`` and
``cancel``, and the unfinished episodes ``run`` and ``resume`` take up.

The store is the truth whether or not a run is going (SQLite in WAL mode lets these read while
a coordinator writes), so none of these start anything. A storage folder that has no store is
said so in one line and left as it is: reading never creates the folder or the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from actors import retention
from actors.state_store import EpisodeSummary, StateStore, StateStoreError
from pipelines.episode_folder import EpisodeFolder
from pipelines.episode_state import EpisodeRecord
from pipelines.episode_view import EpisodeView
from pipelines.models import EpisodeStatus, SceneState
from pipelines.settings import Settings
from pipelines.storage import Storage

PAGE = 500  # summaries read at a time while looking for the newest
CANCEL_WAIT_S = 3.0  # a run going on the storage acts on a cancel within a second
CANCEL_POLL_S = 0.1
PREMISE_CHARS = 50
T = TypeVar("T")
NO_RUN = ("cancel recorded: no run is going on this storage; it is cancelled when the storage "
          "is next resumed")


class NoStore(Exception):
    """Nothing has run on this storage: it has no state store."""


class UnknownEpisode(Exception):
    """The store has no episode of that id."""


@dataclass(frozen=True)
class StoreAt:
    """Where a storage folder's episodes are kept, and how messages name that place."""

    url: str  # may hold a password: for the engine only
    label: str  # the storage folder, or the URL without its password

    @classmethod
    def of(cls, settings: Settings, storage: Storage) -> StoreAt:
        url = settings.state_database_url(storage)
        label = (storage.where() if settings.state_url is None
                 else make_url(url).render_as_string(hide_password=True))
        return cls(url, label)

    def exists(self) -> bool:
        """False for a SQLite file not made yet; a server database is taken to exist (opening
        it says otherwise)."""
        parsed = make_url(self.url)
        if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "",
                                                                            ":memory:"):
            return True
        return Path(parsed.database).is_file()


@contextlib.asynccontextmanager
async def opened(at: StoreAt) -> AsyncIterator[StateStore]:
    """The store, closed after; ``NoStore`` rather than making one."""
    if not at.exists():
        raise NoStore(f"no episodes in {at.label}: nothing has run there")
    store = await StateStore.open(at.url)
    try:
        yield store
    except (SQLAlchemyError, OSError) as err:  # a locked or broken file, a store of other columns
        original = getattr(err, "orig", None) or err  # SQLAlchemy adds the statement below
        first = (str(original).strip().splitlines() or [type(original).__name__])[0]
        raise StateStoreError(f"cannot use the state store in {at.label}: {first}") from None
    finally:
        await store.close()


# -- reads ------------------------------------------------------------------------------------


async def newest(store: StateStore, status: EpisodeStatus | None = None,
                 limit: int | None = None) -> list[EpisodeSummary]:
    """The newest ``limit`` episodes (all if None; those in ``status`` if given), newest last."""
    kept: list[EpisodeSummary] = []
    cursor = 0
    while limit is None or len(kept) < limit:
        size = PAGE if limit is None else min(PAGE, limit - len(kept))
        page = await store.page(status=status, limit=size, cursor=cursor, newest=True)
        kept.extend(page)
        if len(page) < size:
            break
        cursor = page[-1].arrival
    return kept[::-1]


def unfinished(at: StoreAt) -> list[EpisodeSummary]:
    """The episodes a coordinator started on this storage takes up, in arrival order; none
    where there is no store yet."""
    if not at.exists():
        return []

    async def read() -> list[EpisodeSummary]:
        async with opened(at) as store:
            found = [summary for status in EpisodeStatus if not status.finished
                     for summary in await newest(store, status)]
        return sorted(found, key=lambda s: s.arrival)

    return asyncio.run(read())


# -- the commands ----------------------------------------------------------------------------


def list_episodes(at: StoreAt, status: EpisodeStatus | None, limit: int, as_json: bool) -> int:
    """``showrunner list``: one line per episode, from its row alone."""
    async def read() -> list[EpisodeSummary]:
        async with opened(at) as store:
            return await newest(store, status, limit)

    summaries = _or_none(lambda: asyncio.run(read()), as_json)
    if summaries is None:
        return 0
    if as_json:
        print(json.dumps([s.model_dump(mode="json") for s in summaries], indent=2))
        return 0
    if not summaries:
        _say(f"no episodes in {at.label}" + (f" with status {status}" if status else ""))
    now = time.time()
    for summary in summaries:
        print(summary_line(summary, now))
    return 0


def status_of_all(at: StoreAt, limit: int, as_json: bool) -> int:
    """``showrunner status``: the newest episodes with how far each got (read from its nodes,
    so only for the few a screen shows)."""
    async def read() -> list[tuple[EpisodeSummary, float]]:
        async with opened(at) as store:
            return [(s, await _percent(store, s)) for s in await newest(store, None, limit)]

    rows = _or_none(lambda: asyncio.run(read()), as_json)
    if rows is None:
        return 0
    if as_json:
        print(json.dumps([{**s.model_dump(mode="json"), "percent": p} for s, p in rows],
                         indent=2))
        return 0
    if not rows:
        _say(f"no episodes in {at.label}")
    now = time.time()
    for summary, percent in rows:
        print(summary_line(summary, now, percent))
    return 0


def status_of(at: StoreAt, storage: Storage, episode_id: str, as_json: bool) -> int:
    """``showrunner status ID``: the episode's view, where its files are, and (as JSON) its
    events."""
    async def read() -> EpisodeRecord | None:
        async with opened(at) as store:
            return await store.record(episode_id)

    record = asyncio.run(read())
    if record is None:
        raise UnknownEpisode(f"no episode {episode_id} in {at.label}")
    details = episode_details(record, storage)
    if as_json:
        print(json.dumps(details, indent=2))
    else:
        print("\n".join(detail_lines(details)))
    return 0


def cancel(at: StoreAt, episode_id: str) -> int:
    """``showrunner cancel ID``: record the cancel, then wait a little for a run to act on it."""
    async def ask() -> str:
        async with opened(at) as store:
            status = await store.request_cancel(episode_id)
            if status is None:
                raise UnknownEpisode(f"no episode {episode_id} in {at.label}")
            if status.finished:
                return f"already {status}"
            deadline = time.monotonic() + CANCEL_WAIT_S
            while time.monotonic() < deadline:
                await asyncio.sleep(CANCEL_POLL_S)
                status = (await store.statuses([episode_id]))[episode_id]
                if status is EpisodeStatus.CANCELLED:
                    return "cancelled"
                if status.finished:  # it ended otherwise before the cancel reached it
                    return f"already {status}"
            return NO_RUN

    print(f"{episode_id}: {asyncio.run(ask())}")
    return 0


def prune(at: StoreAt, storage: Storage, older_than_days: float) -> int:
    """``showrunner prune --older-than DAYS``: the rows and folders of episodes that finished
    more than that long ago (``actors.retention``)."""
    async def remove() -> list[str]:
        async with opened(at) as store:
            return await retention.prune(store, storage,
                                         time.time() - older_than_days * 86_400)

    removed = asyncio.run(remove())
    print(f"pruned {len(removed)} episode(s) finished over {older_than_days:g} day(s) ago")
    return 0


def _or_none(read: Callable[[], T], as_json: bool) -> T | None:
    """What ``read`` gives, or None once a missing store is said: an empty listing, not an
    error (``[]`` for JSON, so a script reading it needs no special case)."""
    try:
        return read()
    except NoStore as err:
        _say(str(err))
        if as_json:
            print("[]")
        return None


async def _percent(store: StateStore, summary: EpisodeSummary) -> float:
    if summary.status is EpisodeStatus.COMPLETED:
        return 100.0
    record = await store.record(summary.id)
    return record.percent if record is not None else 0.0


def _say(message: str) -> None:
    print(message, file=sys.stderr)


# -- formats ---------------------------------------------------------------------------------


def summary_line(summary: EpisodeSummary, now: float, percent: float | None = None) -> str:
    """``id  status  [percent]  scenes  age  premise``: one line, whatever the premise."""
    cells = [summary.id, f"{summary.status.value:<9}"]
    if percent is not None:
        cells.append(f"{percent:5.1f}%")
    cells += [f"{summary.scenes:>3} scenes", f"{age(now - summary.submitted_at):>8}"]
    if summary.cancel_requested and not summary.status.finished:
        cells.append("[cancel asked]")
    cells.append(shorten(summary.premise, PREMISE_CHARS))
    return "  ".join(cells)


def age(seconds: float) -> str:
    """How long ago, in the largest whole unit: ``42s ago``, ``5m ago``, ``3h ago``, ``2d ago``."""
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def shorten(text: str, limit: int) -> str:
    flat = " ".join(text.split())  # a premise may hold newlines
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def episode_details(record: EpisodeRecord, storage: Storage) -> dict[str, Any]:
    """The episode's view, with what a person at this machine wants besides: the premise, the
    times, where its files are, and its events."""
    view = EpisodeView.of(record)
    folder = EpisodeFolder(record.id)
    return {
        **view.model_dump(mode="json"),
        "premise": record.request.premise,
        "submitted_at": record.submitted_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "output_dir": storage.where(folder.prefix) if view.artifacts else None,
        "files": {a.value: storage.where(folder.artifact(a)) for a in view.artifacts},
        "events": [e.model_dump(mode="json") for e in record.events],
    }


def detail_lines(details: dict[str, Any]) -> list[str]:
    """``status ID`` for a person: a field a line, the scenes as ranges per state."""
    lines = [f"episode   {details['id']}: {details['status']}, {details['percent']:.1f}%",
             f"title     {details['title'] or '-'}",
             f"premise   {shorten(details['premise'], 100)}",
             f"scenes    {scene_ranges(SceneState(s) for s in details['scenes'])}",
             f"cost      ${details['cost_usd']:.4f}"]
    if details["error"]:
        lines.append(f"error     {details['error']}")
    lines += [f"missing   {m['what']}: {m['why']}" for m in details["missing"]]
    lines += [f"file      {path}" for path in details["files"].values()]
    if details["events"]:
        last = details["events"][-1]
        lines.append(f"last      #{last['seq']} {last['kind']} at {last['at_s']:.1f} s"
                     + (f": {last['message']}" if last["message"] else ""))
    return lines


def scene_ranges(states: Iterable[SceneState]) -> str:
    """``done 1-4, running 5, pending 6-8``: a 200-scene episode still fits a line."""
    runs: list[tuple[SceneState, int, int]] = []
    for number, state in enumerate(states, start=1):
        if runs and runs[-1][0] is state and runs[-1][2] == number - 1:
            runs[-1] = (state, runs[-1][1], number)
        else:
            runs.append((state, number, number))
    return ", ".join(f"{state} {first}" if first == last else f"{state} {first}-{last}"
                     for state, first, last in runs) or "-"
