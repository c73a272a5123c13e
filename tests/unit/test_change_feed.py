"""Following changes with a long poll: versions, keys, waiting and waking."""

from __future__ import annotations

import asyncio

from actors.change_feed import ChangeFeed


async def test_what_changed_after_a_version_oldest_first() -> None:
    feed = ChangeFeed()
    for key in ("a", "b", "a", "c"):
        feed.notify_changed(key)
    assert feed.version == 4
    assert feed.changed_since(0) == ["b", "a", "c"]  # a changed again after b
    assert feed.changed_since(2) == ["a", "c"] and feed.changed_since(4) == []
    assert feed.version_of("a") == 3 and feed.version_of("zzz") == 0


async def test_a_listener_wakes_on_a_change_of_its_key_or_times_out() -> None:
    feed = ChangeFeed()
    assert await feed.listen_for_change(0, 0.01) == 0  # nothing: the timeout
    on_a = asyncio.create_task(feed.listen_for_change(0, 10, key="a"))
    on_any = asyncio.create_task(feed.listen_for_change(0, 10))
    await asyncio.sleep(0)
    feed.notify_changed("b")
    assert await asyncio.wait_for(on_any, 1) == 1
    await asyncio.sleep(0.05)
    assert not on_a.done()  # b is not a
    feed.notify_changed("a")
    assert await asyncio.wait_for(on_a, 1) == 2
    assert await feed.listen_for_change(0, 10, key="a") == 2  # changed already: no wait
    assert feed._waiters == {}  # nobody left waiting
