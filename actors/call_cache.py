"""The ledger and the call cache of one provider: every paid call is written down as it is
answered, with its answer, so the same call asked again is given that answer and paid for once.

A call's key is the digest of the provider's kind and the whole request body (model, prompt,
seed, every parameter; a reference picture by its bytes' digest): each call on its own, never a
prefix, so an early call that failed does not spoil the later ones that succeeded. Answers are
scoped per owner: one tenant is never given another's. A text answer lives in its ledger row; a
file (speech, picture, clip) under the storage's ``cache/`` folder, named by the owner's and the
request's digests, written before the row that points at it.

Two identical calls at once are made once: the second waits for the first and is given its
answer. Which calls have an answer kept is known in memory (loaded once, then kept as answers
are written: a provider actor is the only writer of its provider's rows), so a call never asked
before costs no query, and only a hit reads the store. A call whose owner turned the cache off is
still written in the ledger (it was paid for), without its answer. A row is committed with the
store's next group commit, milliseconds after the answer, not waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from actors.call_results import Attempts, ChatResult, MediaResult
from actors.state_store import PaidCall, StateStore
from pipelines.settings import ProviderKind
from pipelines.storage import Storage

log = logging.getLogger("showrunner.cache")

CACHE_DEPLOYMENT = "cache"  # where a cached answer "landed", in its result and figures
CACHE_FOLDER = "cache"  # under the storage's root: the cached files (speech, pictures, clips)


def request_digest(kind: ProviderKind, body: Mapping[str, Any]) -> str:
    """The key of a call: its provider's kind and the whole body it sends. Bytes (a reference
    picture) count by their digest."""
    def encode(value: Any) -> Any:
        if isinstance(value, bytes):
            return {"sha256": hashlib.sha256(value).hexdigest()}
        if isinstance(value, tuple):  # a file part: (name, bytes, content type)
            return [encode(v) for v in value]
        raise TypeError(f"cannot key a request holding {type(value).__name__}")

    canonical = json.dumps({"kind": kind.value, "body": body}, sort_keys=True,
                           separators=(",", ":"), default=encode)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class CallKey:
    owner: str
    digest: str


class CallCache:
    """One provider's ledger and cache; the store is opened on first use (``open_store``)."""

    def __init__(self, kind: ProviderKind, model: str,
                 open_store: Callable[[], Awaitable[StateStore | None]],
                 storage: Storage | None) -> None:
        self.kind = kind
        self.model = model
        self._open_store = open_store
        self._storage = storage
        self._busy: dict[CallKey, tuple[asyncio.Lock, int]] = {}
        self._kept: set[int] | None = None  # hashes of the keys whose answers are kept
        self._loading = asyncio.Lock()

    async def chat(self, key: CallKey, use: bool, episode_id: str,
                   call: Callable[[], Awaitable[ChatResult]]) -> ChatResult:
        """A chat call through the cache (``use``) or around it, written in the ledger."""
        async with self._alone(key, use):
            store = await self._open_store()
            if use and store is not None:
                hit = await self._hit(store, key)
                if hit is not None and hit.answer is not None:
                    answer = json.loads(hit.answer)
                    return ChatResult(**vars(_from_cache(hit)), text=answer["text"],
                                      finish_reason=answer["finish_reason"],
                                      tokens_in=hit.tokens_in, tokens_out=hit.tokens_out,
                                      request_id=None)
            result = await call()
            answer = {"text": result.text, "finish_reason": result.finish_reason}
            await self._write(store, key, episode_id, result, json.dumps(answer) if use else None)
            return result

    async def media(self, key: CallKey, use: bool, episode_id: str, out: str,
                    call: Callable[[], Awaitable[MediaResult]]) -> MediaResult:
        """A call that makes the file ``out`` (a storage key), through the cache or around
        it. Files are copied within the storage: on S3 by the server, no bytes come here."""
        async with self._alone(key, use):
            store = await self._open_store()
            storage = self._storage
            if use and store is not None and storage is not None:
                hit = await self._hit(store, key)
                kept = _kept_file(hit)
                if hit is not None and kept is not None:
                    try:
                        await asyncio.to_thread(storage.copy, kept, out)
                        size = await asyncio.to_thread(storage.size, out)
                    except FileNotFoundError:  # pruned since: paid for again, below
                        pass
                    else:
                        return MediaResult(**vars(_from_cache(hit)), key=out, size_bytes=size,
                                           units=hit.units, request_id=None)
            result = await call()
            kept_as = None
            if use and storage is not None and store is not None:
                relative = self._file_of(key)
                await asyncio.to_thread(storage.copy, out, f"{CACHE_FOLDER}/{relative}")
                kept_as = json.dumps({"file": relative})
            await self._write(store, key, episode_id, result, kept_as)
            return result

    # -- inside ----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _alone(self, key: CallKey, use: bool) -> AsyncIterator[None]:
        """Held around one cached call: another asking the same waits, then hits."""
        if not use:
            yield
            return
        lock, users = self._busy.get(key) or (asyncio.Lock(), 0)
        self._busy[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._busy[key]
            if users == 1:
                del self._busy[key]
            else:
                self._busy[key] = (lock, users - 1)

    async def _hit(self, store: StateStore, key: CallKey) -> PaidCall | None:
        if self._kept is None:
            async with self._loading:
                if self._kept is None:
                    self._kept = {hash(k) for k in await store.cached_keys(self.kind.value)}
        if hash((key.owner, key.digest)) not in self._kept:
            return None
        return await store.cached_call(key.owner, self.kind.value, key.digest)

    async def _write(self, store: StateStore | None, key: CallKey, episode_id: str,
                     result: Attempts, answer: str | None) -> None:
        """The paid call's ledger row, queued for the store's next commit (within
        milliseconds: waiting for it would put a commit on every call's critical path, and
        the node's own result is stored after this anyway; a store that cannot be written
        keeps it queued)."""
        if store is None:
            return
        store.put_call(PaidCall(
            owner=key.owner, kind=self.kind.value, model=self.model, digest=key.digest,
            episode_id=episode_id or None, tokens_in=getattr(result, "tokens_in", 0),
            tokens_out=getattr(result, "tokens_out", 0), units=getattr(result, "units", 0.0),
            cost_usd=result.cost_usd, at=time.time(), answer=answer))
        if answer is not None and self._kept is not None:
            self._kept.add(hash((key.owner, key.digest)))

    def _file_of(self, key: CallKey) -> str:
        """Where a call's file is kept, under the storage's ``cache/`` folder."""
        owner = hashlib.sha256(key.owner.encode()).hexdigest()[:16]
        return f"{owner}/{self.kind.value}/{key.digest[:2]}/{key.digest}"


def _kept_file(hit: PaidCall | None) -> str | None:
    """The storage key of a cached call's file; None when none was kept."""
    if hit is None or hit.answer is None:
        return None
    try:
        return f"{CACHE_FOLDER}/{json.loads(hit.answer)['file']}"
    except (KeyError, ValueError, TypeError):
        return None


def _from_cache(hit: PaidCall) -> Attempts:
    """The figures of a call answered from the cache: free, instant, and what it saved."""
    return Attempts(CACHE_DEPLOYMENT, 0, 0, 0.0, 0.0, 0.0, cache_hit=True,
                    saved_usd=hit.cost_usd)
