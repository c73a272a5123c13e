"""Downloading a picture that a provider answered with a URL instead of ``b64_json`` (DALL·E
models do unless asked otherwise; some local servers always do).

The provider chooses the URL, so fetching it could be a server-side request forgery: a URL on
``169.254.169.254`` reads the cloud's metadata (and its credentials), one on ``10.x`` reaches the
cluster's own services. So:

- only ``http`` and ``https``;
- every address the host resolves to must be public (one private address among public ones
  refuses the lot: the client picks which to connect to), unless the URL is on the provider's own
  host and port, from its base URL: the operator chose that one, and the bundled local server on
  127.0.0.1 answers with URLs on itself;
- the connection goes to the addresses checked: aiohttp's resolver answers only from them, so a
  second DNS answer (DNS rebinding) cannot replace what was checked;
- redirects are followed here, not by aiohttp, at most ``MAX_REDIRECTS``, each hop checked alike
  (an address literal in a ``Location`` never reaches a resolver, so only a check per hop sees it);
- one deadline for the whole download, hops included, and a cap on its bytes (counted after
  decompression, so a small gzip bomb cannot pass it);
- no proxy from the environment (it would connect for us, to whatever it resolves) and no
  credentials: the provider's key is never sent to a URL it named.

What fails, as the provider errors of ``pipelines.errors``:

    FatalError           the URL is refused, too many redirects, the picture is over the cap:
                         another attempt gets the same answer
    BadRequest           a 4xx other than 408, 409, 429: the URL expired (signed URLs last an
                         hour) or never was
    ProviderUnavailable  the host cannot be resolved or reached, or answered 408, 409, 429, 5xx
    ProviderTimeout      not downloaded within the deadline

The URL in a message is shortened and never shows its query (it may hold a signature) nor a
user and password. The checks (``checked_url``, ``check_addresses``, ``address_refusal``) are
pure; ``download`` is the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from pipelines.errors import (
    BadRequest,
    FatalError,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Lookup = Callable[[str, int], Awaitable[Sequence[str]]]  # (host, port) -> its addresses

SCHEMES = {"http": 80, "https": 443}
MAX_REDIRECTS = 3
REDIRECTS = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 64 * 1024
SHOWN_CHARS = 80
# A host name as DNS spells it (IDNs arrive here in punycode); the last label starts with a
# letter, so legacy number forms (``2130706433``, ``127.1``, ``0x7f.1``), which resolvers turn
# into addresses, are refused instead of resolved.
_HOST_NAME = re.compile(r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*"
                        r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_KINDS: tuple[tuple[str, Callable[[IPAddress], bool]], ...] = (
    ("an unspecified address", lambda ip: ip.is_unspecified),
    ("a loopback address", lambda ip: ip.is_loopback),
    ("a link-local address", lambda ip: ip.is_link_local),  # 169.254.169.254: cloud metadata
    ("a multicast address", lambda ip: ip.is_multicast),
    ("a site-local address",
     lambda ip: isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local),
    ("a reserved address", lambda ip: ip.is_reserved),
    ("a private address", lambda ip: ip.is_private),
)


@dataclass(frozen=True)
class Origin:
    """Where a URL connects: its host (lower case, without a trailing dot; an address in its
    canonical form) and port (the scheme's default if none is written)."""

    host: str
    port: int

    @classmethod
    def of(cls, url: URL) -> Origin:
        port = url.explicit_port or SCHEMES.get(url.scheme, 0)
        return cls(_normal_host(url.raw_host or ""), port)


@dataclass(frozen=True)
class Downloaded:
    """The picture's bytes and the final answer's status and headers (lower-case names), as
    ``answer_checks`` takes them."""

    content: bytes
    headers: Mapping[str, str]
    status: int


# -- the checks: pure --------------------------------------------------------------------------


def shown(url: str) -> str:
    """``url`` for a message: scheme, host and path, shortened; never its query, fragment, user
    or password."""
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        text = urlunsplit((parts.scheme, host, parts.path, "", ""))
        hidden = bool(parts.query or parts.fragment)
    except ValueError:  # a broken IPv6 literal: cut by hand
        text = re.sub(r"//[^/]*@", "//", re.split(r"[?#]", url, maxsplit=1)[0])
        hidden = bool(re.search(r"[?#]", url))
    if len(text) > SHOWN_CHARS:
        text, hidden = text[:SHOWN_CHARS], True
    return text + ("…" if hidden else "")


def address_refusal(ip: IPAddress) -> str | None:
    """Why a download may not connect to ``ip``, as what it is (``"a loopback address"``); None
    if it is a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:  # the IPv4 host it reaches decides
            why = address_refusal(inner)
            return f"{inner}, {why}" if why else None
    for kind, is_kind in _KINDS:
        if is_kind(ip):
            return kind
    return None if ip.is_global else "not a public address"


def checked_url(url: str, provider: Origin, came_from: str | None = None) -> URL:
    """``url`` parsed, if its scheme and host may be downloaded from; otherwise a ``FatalError``
    that says why. A host name's addresses are checked once resolved (``check_addresses``).
    ``came_from``: the URL that redirected here, for the message."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        _refuse(url, "it is not a URL", came_from)
    if parsed.scheme not in SCHEMES:
        why = f"its scheme is {parsed.scheme!r}" if parsed.scheme else "it has no scheme"
        _refuse(url, f"{why}; only http and https are downloaded", came_from)
    if not parsed.raw_host:
        _refuse(url, "it names no host", came_from)
    if Origin.of(parsed) == provider:
        return parsed
    host = _normal_host(parsed.raw_host)
    address = _address(host)
    if address is not None:
        why = address_refusal(address)
        if why:
            _refuse(url, f"{address} is {why}", came_from)
    elif host == "localhost" or host.endswith(".localhost"):
        _refuse(url, f"{host} is this machine (loopback)", came_from)
    elif not _HOST_NAME.fullmatch(host):
        _refuse(url, f"{host!r} is neither a host name nor an address in standard form",
                came_from)
    return parsed


def check_addresses(url: URL, addresses: Sequence[str], provider: Origin) -> None:
    """Refuse (``FatalError``) unless every address ``url``'s host resolved to is public, or it is
    the provider's own host and port."""
    if Origin.of(url) == provider:
        return
    if not addresses:
        raise ProviderUnavailable(f"cannot download {shown(str(url))}: its host has no address")
    for text in addresses:
        address = _address(text)
        why = address_refusal(address) if address is not None else "not an address"
        if why:
            _refuse(str(url), f"{url.raw_host} resolves to {text}, which is {why}")


def status_error(status: int, url: str, request_id: str | None = None) -> ProviderError:
    """The error of a download answered with ``status`` (neither 2xx nor a redirect followed):
    the kinds ``actors.sdk_errors`` gives the same statuses from the provider's API, except
    429, which is the file host's, not the API's limit to pause every caller for."""
    fields = {"status": status, "request_id": request_id}
    if status in (408, 409, 429) or status >= 500:
        return ProviderUnavailable(f"the download of {shown(url)} failed", **fields)
    if 400 <= status < 500:
        return BadRequest(f"the download of {shown(url)} was refused: the URL has expired or "
                          f"never was; generate the picture again", **fields)
    return FatalError(f"the download of {shown(url)} answered neither a picture nor a redirect "
                      f"to follow", **fields)


def _refuse(url: str, why: str, came_from: str | None = None) -> NoReturn:
    via = f" (a redirect from {shown(came_from)})" if came_from else ""
    raise FatalError(f"refused to download {shown(url)}{via}: {why}")


def _normal_host(host: str) -> str:
    host = host.lower().rstrip(".")
    address = _address(host)
    return str(address) if address is not None else host


def _address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64, IPv4-compatible): the
    packets reach that host, so it is the one to judge."""
    if ip.ipv4_mapped or ip.sixtofour:
        return ip.ipv4_mapped or ip.sixtofour
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):  # :: and ::1 are themselves
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


# -- the download: I/O -------------------------------------------------------------------------


async def system_lookup(host: str, port: int) -> list[str]:
    """Every address the system's resolver gives ``host``."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class _PinnedResolver(AbstractResolver):
    """aiohttp's resolver for one download: it answers only with addresses already checked and
    never asks DNS, so the connection goes to what was checked."""

    def __init__(self) -> None:
        self.pinned: dict[Origin, list[str]] = {}

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        addresses = self.pinned.get(Origin(_normal_host(host), port))
        if addresses is None:  # a host reached without a check: a bug here, never a fetch
            raise OSError(f"{host}:{port} was not checked before connecting")
        results = []
        for text in addresses:
            found = socket.AF_INET6 if ":" in text else socket.AF_INET
            if family in (socket.AF_UNSPEC, found):
                results.append(ResolveResult(hostname=host, host=text, port=port, family=found,
                                             proto=0, flags=socket.AI_NUMERICHOST))
        return results

    async def close(self) -> None:
        pass


async def download(
    url: str, *, provider_base_url: str, timeout_s: float, max_bytes: int,
    max_redirects: int = MAX_REDIRECTS, lookup: Lookup = system_lookup,
) -> Downloaded:
    """Download the picture at ``url``, which the provider at ``provider_base_url`` answered
    with, following at most ``max_redirects`` redirects, within ``timeout_s`` in all, and at
    most ``max_bytes`` of it. ``lookup`` resolves a host name (tests give their own DNS)."""
    provider = Origin.of(URL(provider_base_url))
    resolver = _PinnedResolver()
    with _errors(url, timeout_s):
        async with asyncio.timeout(timeout_s), aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False),
            timeout=aiohttp.ClientTimeout(),  # the deadline above is the only one
            trust_env=False,
        ) as session:
            came_from: str | None = None
            for _ in range(max_redirects + 1):
                hop = checked_url(url, provider, came_from)
                await _pin(hop, resolver, lookup, provider)
                async with session.get(hop, allow_redirects=False) as response:
                    location = response.headers.get("location")
                    if response.status in REDIRECTS and location:
                        came_from, url = url, _redirected(hop, location)
                        continue
                    request_id = response.headers.get("x-request-id")
                    if not 200 <= response.status < 300:
                        raise status_error(response.status, url, request_id)
                    content = await _read(response, max_bytes, url)
                    headers = {name.lower(): value for name, value in response.headers.items()}
                    return Downloaded(content, headers, response.status)
    raise FatalError(f"refused to download {shown(url)}: more than {max_redirects} redirects")


async def _pin(url: URL, resolver: _PinnedResolver, lookup: Lookup, provider: Origin) -> None:
    origin = Origin.of(url)
    if origin in resolver.pinned or _address(origin.host) is not None:
        return  # checked already; an address literal is connected to as written
    addresses = list(await lookup(origin.host, origin.port))
    check_addresses(url, addresses, provider)
    resolver.pinned[origin] = addresses


def _redirected(hop: URL, location: str) -> str:
    try:
        return str(hop.join(URL(location)))
    except ValueError:
        return location  # not a URL: the check of the next hop refuses it, and says so


async def _read(response: aiohttp.ClientResponse, max_bytes: int, url: str) -> bytes:
    too_large = FatalError(f"refused to download {shown(url)}: it is larger than {max_bytes} "
                           f"bytes", status=response.status)
    if response.content_length is not None and response.content_length > max_bytes:
        raise too_large
    body = bytearray()
    async for chunk in response.content.iter_chunked(CHUNK_BYTES):
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    return bytes(body)


@contextlib.contextmanager
def _errors(url: str, timeout_s: float) -> Iterator[None]:
    """aiohttp's and the system's errors as provider errors, at this one edge. Their own text is
    left out when it may hold the URL's query."""
    try:
        yield
    except ProviderError:
        raise
    except TimeoutError as err:  # the deadline, or one of aiohttp's own
        raise ProviderTimeout(f"{shown(url)} was not downloaded within {timeout_s:g} s") from err
    except (aiohttp.ClientError, OSError) as err:
        why = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
        raise ProviderUnavailable(f"cannot download {shown(url)}: {why}") from err
