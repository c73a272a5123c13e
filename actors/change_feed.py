"""Versions of changing things, and a long poll on them: how other processes follow episodes.

Every change to a key (an episode id) takes the next version number. A follower asks for what
changed after the version it last saw and waits, up to a timeout, when nothing has: one long
poll per follower instead of one call per status poll. Ray Serve's ``LongPollHost``, cut down to
what the coordinator needs. Pure asyncio, no Ray.
"""

from __future__ import annotations

import asyncio
import contextlib

ANY = ""  # waiters on every key


class ChangeFeed:
    def __init__(self) -> None:
        self.version = 0
        # Each key's last version, oldest first: what changed after a version is read off the
        # end, in time proportional to the changes rather than to every key ever seen.
        self._versions: dict[str, int] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}

    def notify_changed(self, key: str) -> None:
        self.version += 1
        self._versions.pop(key, None)
        self._versions[key] = self.version
        for waiters in (self._waiters.pop(key, ()), self._waiters.pop(ANY, ())):
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def forget(self, key: str) -> None:
        """Stop tracking a key that will not change again (a finished episode let go), so the
        feed does not grow with every key it ever saw. Its waiters, if any, stay."""
        self._versions.pop(key, None)

    def changed_since(self, since: int) -> list[str]:
        """Keys changed after version ``since``, oldest change first."""
        changed = []
        for key in reversed(self._versions):
            if self._versions[key] <= since:
                break
            changed.append(key)
        return changed[::-1]

    def version_of(self, key: str) -> int:
        return self._versions.get(key, 0)

    async def listen_for_change(self, since: int, timeout_s: float, key: str = ANY) -> int:
        """Wait until ``key`` (any key, if none is given) changes after version ``since``, or
        ``timeout_s`` passes; return the current version."""
        current = self.version if key == ANY else self.version_of(key)
        if current > since or timeout_s <= 0:
            return self.version
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, timeout_s)
        finally:
            waiting = self._waiters.get(key)
            if waiting is not None and waiter in waiting:
                waiting.remove(waiter)
                if not waiting:
                    del self._waiters[key]
        return self.version
