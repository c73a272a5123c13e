"""Downloads from real HTTP servers on loopback: the provider's own host is downloaded from, and
another loopback port is not, even by a redirect; the size cap and the deadline hold."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from actors.answer_download import Downloaded, download
from pipelines.errors import BadRequest, FatalError, ProviderTimeout, ProviderUnavailable
from tests.support import free_port

pytestmark = pytest.mark.integration

PICTURE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40  # 10 KiB; only its bytes matter
Serve = Callable[[web.RouteTableDef], Awaitable[str]]


@pytest.fixture
async def release() -> asyncio.Event:
    """Set when the test ends: handlers that wait on it stall until then."""
    return asyncio.Event()


@pytest.fixture
async def serve(release: asyncio.Event) -> AsyncIterator[Serve]:
    """Start an HTTP server on 127.0.0.1 with the given routes and give its base URL; stalled
    handlers are let go before the servers stop."""
    runners: list[web.AppRunner] = []

    async def start(routes: web.RouteTableDef) -> str:
        app = web.Application()
        app.add_routes(routes)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield start
    release.set()
    for runner in runners:
        await runner.cleanup()


def provider_routes(hits: list[str], release: asyncio.Event | None = None, other: str = ""
                    ) -> web.RouteTableDef:
    """A provider's file routes; ``hits`` gets the path and query of every request."""
    stall = release or asyncio.Event()
    routes = web.RouteTableDef()

    @routes.get("/files/{name}")
    async def picture(request: web.Request) -> web.StreamResponse:
        hits.append(request.path_qs)
        name = request.match_info["name"]
        if name == "a.png":
            return web.Response(body=PICTURE, content_type="image/png")
        if name == "streamed.png":  # no Content-Length: the cap must count what arrives
            response = web.StreamResponse(headers={"content-type": "image/png"})
            await response.prepare(request)
            for _ in range(100):
                await response.write(PICTURE)
            return response
        if name == "moved.png":
            raise web.HTTPFound("/files/a.png?sig=2")
        if name == "elsewhere.png":
            raise web.HTTPTemporaryRedirect(f"{other}/files/a.png?sig=SECRET")
        if name == "broken.png":
            return web.Response(status=302, headers={"location": "http://[::1/files/a.png"})
        if name == "loop.png":
            raise web.HTTPFound("/files/loop.png")
        if name == "slow.png":
            await stall.wait()
        if name == "drip.png":  # headers at once, then the body slower than the deadline
            response = web.StreamResponse(headers={"content-type": "image/png"})
            await response.prepare(request)
            await response.write(PICTURE[:10])
            await stall.wait()
            return response
        if name == "busy.png":
            raise web.HTTPServiceUnavailable()
        raise web.HTTPNotFound()

    return routes


async def fetch(url: str, provider: str, **overrides: Any) -> Downloaded:
    options: dict[str, Any] = {"provider_base_url": f"{provider}/v1", "timeout_s": 10.0,
                     "max_bytes": 100_000, **overrides}
    return await download(url, **options)


async def test_a_picture_on_the_providers_own_host_is_downloaded(serve: Serve) -> None:
    hits: list[str] = []
    provider = await serve(provider_routes(hits))
    got = await fetch(f"{provider}/files/a.png?sig=1", provider)
    assert got.content == PICTURE and got.status == 200
    assert got.headers["content-type"] == "image/png"

    moved = await fetch(f"{provider}/files/moved.png", provider)  # a redirect on its own host
    assert moved.content == PICTURE
    assert hits == ["/files/a.png?sig=1", "/files/moved.png", "/files/a.png?sig=2"]


async def test_a_host_name_is_connected_to_at_the_address_checked(serve: Serve) -> None:
    """``.invalid`` names resolve nowhere: the download reaches the server only through the
    address its lookup gave and the check pinned."""
    hits: list[str] = []
    port = (await serve(provider_routes(hits))).rsplit(":", 1)[1]

    async def dns(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    provider = f"http://images.invalid:{port}"
    got = await fetch(f"{provider}/files/a.png", provider, lookup=dns)
    assert got.content == PICTURE

    with pytest.raises(FatalError, match="resolves to 127.0.0.1, which is a loopback address"):
        await fetch(f"http://elsewhere.invalid:{port}/files/a.png", provider, lookup=dns)
    assert hits == ["/files/a.png"]


async def test_a_redirect_to_another_loopback_port_is_refused(serve: Serve) -> None:
    other_hits: list[str] = []
    other = await serve(provider_routes(other_hits))
    provider = await serve(provider_routes([], other=other))
    with pytest.raises(FatalError) as caught:
        await fetch(f"{provider}/files/elsewhere.png?sig=MINE", provider)
    message = str(caught.value)
    assert f"refused to download {other}/files/a.png… (a redirect from " in message
    assert "127.0.0.1 is a loopback address" in message
    assert "SECRET" not in message and "MINE" not in message
    assert other_hits == []

    with pytest.raises(FatalError, match="more than 3 redirects"):
        await fetch(f"{provider}/files/loop.png", provider)
    with pytest.raises(FatalError, match=r"http://\[::1/files/a.png \(a redirect from .*: it is "
                                         r"not a URL"):
        await fetch(f"{provider}/files/broken.png", provider)


async def test_a_picture_over_the_cap_is_refused(serve: Serve) -> None:
    provider = await serve(provider_routes([]))
    for name in ("a.png", "streamed.png"):
        with pytest.raises(FatalError, match="it is larger than 1000 bytes"):
            await fetch(f"{provider}/files/{name}", provider, max_bytes=1000)
    got = await fetch(f"{provider}/files/a.png", provider, max_bytes=len(PICTURE))
    assert got.content == PICTURE


async def test_the_deadline_covers_the_whole_download(serve: Serve,
                                                      release: asyncio.Event) -> None:
    provider = await serve(provider_routes([], release))
    for name in ("slow.png", "drip.png"):
        with pytest.raises(ProviderTimeout, match="not downloaded within 0.3 s") as caught:
            await fetch(f"{provider}/files/{name}", provider, timeout_s=0.3)
        assert caught.value.retryable


async def test_failures_are_retried_or_not_by_their_kind(serve: Serve) -> None:
    provider = await serve(provider_routes([]))
    with pytest.raises(ProviderUnavailable) as busy:
        await fetch(f"{provider}/files/busy.png", provider)
    assert busy.value.status == 503 and busy.value.retryable
    with pytest.raises(BadRequest) as gone:
        await fetch(f"{provider}/files/expired.png?sig=SECRET", provider)
    assert gone.value.status == 404 and not gone.value.retryable
    assert "SECRET" not in str(gone.value)

    nobody = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ProviderUnavailable, match="cannot download"):
        await fetch(f"{nobody}/files/a.png", nobody)
