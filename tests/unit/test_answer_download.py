"""A URL a provider answered with is downloaded only from where it is safe to: the checks, and a
download refused before it connects (no network)."""

from __future__ import annotations

import ipaddress
import pickle
import socket

import pytest
from yarl import URL

from actors.answer_download import (
    Origin,
    address_refusal,
    check_addresses,
    checked_url,
    download,
    shown,
    status_error,
)
from actors.retry import RetryPolicy, should_retry
from pipelines.errors import (
    BadRequest,
    FatalError,
    ProviderError,
    ProviderUnavailable,
)

PROVIDER = Origin.of(URL("http://127.0.0.1:8000/v1"))
CLOUD = Origin.of(URL("https://api.openai.com/v1"))


def refusal(url: str, provider: Origin = CLOUD) -> str:
    with pytest.raises(FatalError) as caught:
        checked_url(url, provider)
    assert not caught.value.retryable
    return str(caught.value)


@pytest.mark.parametrize(("url", "why"), [
    ("file:///etc/passwd", "its scheme is 'file'"),
    ("ftp://example.com/a.png", "its scheme is 'ftp'"),
    ("data:image/png;base64,iVBORw0KGgo=", "its scheme is 'data'"),
    ("gopher://example.com/", "its scheme is 'gopher'"),
    ("example.com/a.png", "it has no scheme"),
    ("//example.com/a.png", "it has no scheme"),
    ("http:///a.png", "it names no host"),
])
def test_only_http_and_https_urls_are_downloaded(url: str, why: str) -> None:
    message = refusal(url)
    assert f"refused to download {shown(url)}: {why}" in message


@pytest.mark.parametrize(("host", "what"), [
    ("127.0.0.1", "a loopback address"),
    ("127.8.9.10", "a loopback address"),
    ("10.1.2.3", "a private address"),
    ("172.16.0.1", "a private address"),
    ("192.168.1.1", "a private address"),
    ("169.254.169.254", "a link-local address"),  # the cloud's metadata service
    ("0.0.0.0", "an unspecified address"),
    ("100.64.0.1", "not a public address"),  # carrier-grade NAT
    ("224.0.0.1", "a multicast address"),
    ("240.0.0.1", "a reserved address"),
    ("255.255.255.255", "a reserved address"),
    ("[::1]", "a loopback address"),
    ("[::]", "an unspecified address"),
    ("[fe80::1]", "a link-local address"),
    ("[fe80::1%25eth0]", "a link-local address"),
    ("[fc00::1]", "a private address"),
    ("[fec0::1]", "a site-local address"),
    ("[ff02::1]", "a multicast address"),
    ("[2001:db8::1]", "a private address"),  # documentation
    ("[::ffff:127.0.0.1]", "127.0.0.1, a loopback address"),
    ("[::ffff:169.254.169.254]", "169.254.169.254, a link-local address"),
    ("[::127.0.0.1]", "127.0.0.1, a loopback address"),  # IPv4-compatible
    ("[64:ff9b::a00:1]", "10.0.0.1, a private address"),  # NAT64
    ("[2002:a00:1::]", "10.0.0.1, a private address"),  # 6to4
])
def test_addresses_that_are_not_public_are_refused(host: str, what: str) -> None:
    assert f"is {what}" in refusal(f"https://{host}/a.png")


@pytest.mark.parametrize("host", [
    "localhost", "LOCALHOST.", "images.localhost",  # this machine, whatever DNS says
    "2130706433", "127.1", "0x7f.1", "0177.0.0.1",  # numbers a resolver would make 127.0.0.1
])
def test_this_machine_by_name_or_by_a_number_is_refused(host: str) -> None:
    message = refusal(f"http://{host}/a.png")
    assert "loopback" in message or "neither a host name nor an address" in message


@pytest.mark.parametrize("url", [
    "https://oaidalleapiprodscus.blob.core.windows.net/private/a.png?se=2026&sig=x",
    "http://93.184.216.34/a.png",
    "https://[2001:4860:4860::8888]/a.png",
    "https://[::ffff:8.8.8.8]/a.png",  # the public host it stands for
    "https://bücher.example/a.png",
    "HTTPS://Example.COM./a.png",
])
def test_public_hosts_pass(url: str) -> None:
    assert checked_url(url, CLOUD) == URL(url)


def test_the_providers_own_host_and_port_may_be_anything() -> None:
    """The bundled server on 127.0.0.1 answers with URLs on itself: its base URL was chosen by
    the operator, not by the answer."""
    assert checked_url("http://127.0.0.1:8000/files/a.png", PROVIDER)
    assert checked_url("https://127.0.0.1:8000/files/a.png", PROVIDER)  # host and port decide
    assert "loopback" in refusal("http://127.0.0.1:8001/files/a.png", PROVIDER)
    assert "loopback" in refusal("http://localhost:8000/files/a.png", PROVIDER)
    assert "loopback" in refusal("http://127.0.0.1/files/a.png", PROVIDER)

    local = Origin.of(URL("http://localhost:8000/v1"))
    assert checked_url("http://LocalHost.:8000/a.png", local)
    assert "loopback" in refusal("http://localhost:9000/a.png", local)

    default_port = Origin.of(URL("http://127.0.0.1/v1"))
    assert checked_url("http://127.0.0.1:80/a.png", default_port)
    assert "loopback" in refusal("https://127.0.0.1/a.png", default_port)  # 443, not 80

    ipv6 = Origin.of(URL("http://[::1]:8000/v1"))
    assert checked_url("http://[0:0::1]:8000/a.png", ipv6)  # the same address, spelled longer
    assert "loopback" in refusal("http://[::1]:8001/a.png", ipv6)


def test_every_address_a_name_resolves_to_must_be_public() -> None:
    url = URL("https://images.example.com/a.png")
    check_addresses(url, ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"], CLOUD)
    for mixed in (["93.184.216.34", "10.0.0.7"], ["10.0.0.7", "93.184.216.34"],
                  ["2606:2800:220:1:248:1893:25c8:1946", "::ffff:127.0.0.1"],
                  ["93.184.216.34", "fd00::7"]):
        with pytest.raises(FatalError) as caught:
            check_addresses(url, mixed, CLOUD)
        private = next(a for a in mixed if address_refusal(ipaddress.ip_address(a)))
        assert f"images.example.com resolves to {private}, which is" in str(caught.value)
    with pytest.raises(FatalError, match="which is not an address"):
        check_addresses(url, ["not-an-address"], CLOUD)
    with pytest.raises(ProviderUnavailable, match="its host has no address"):
        check_addresses(url, [], CLOUD)


def test_the_providers_own_host_name_may_resolve_anywhere() -> None:
    provider = Origin.of(URL("http://tts-server:8000/v1"))
    check_addresses(URL("http://tts-server:8000/a.png"), ["10.0.0.7", "127.0.0.1"], provider)
    with pytest.raises(FatalError):
        check_addresses(URL("http://tts-server:8001/a.png"), ["10.0.0.7"], provider)


def test_a_url_in_a_message_never_shows_its_query_nor_credentials() -> None:
    url = "https://user:hunter2@10.0.0.1/images/a.png?se=2026-01-01&sig=SECRET#frag"
    message = refusal(url)
    assert "https://10.0.0.1/images/a.png…" in message
    assert "SECRET" not in message and "hunter2" not in message and "user" not in message
    long = "https://example.com/" + "a" * 300 + "?sig=SECRET"
    assert len(shown(long)) <= 81 and "SECRET" not in shown(long)
    assert shown("http://u:p@[::1/x?sig=SECRET") == "http://[::1/x…"  # unparseable: cut anyway


@pytest.mark.parametrize(("status", "kind"), [
    (500, ProviderUnavailable), (502, ProviderUnavailable), (503, ProviderUnavailable),
    (408, ProviderUnavailable), (409, ProviderUnavailable), (429, ProviderUnavailable),
    (400, BadRequest), (401, BadRequest), (403, BadRequest), (404, BadRequest), (410, BadRequest),
    (304, FatalError), (300, FatalError),
])
def test_a_failed_status_is_retried_only_if_another_attempt_can_succeed(
        status: int, kind: type[ProviderError]) -> None:
    err = status_error(status, "https://files.example/a.png?sig=SECRET", "req_7")
    assert type(err) is kind and err.status == status and err.request_id == "req_7"
    assert should_retry(err, 1, RetryPolicy()) == (kind is ProviderUnavailable)
    assert "SECRET" not in str(err)


def test_a_refusal_pickles_whole() -> None:
    with pytest.raises(FatalError) as caught:
        checked_url("http://169.254.169.254/latest/meta-data/?x=1", CLOUD)
    again = pickle.loads(pickle.dumps(caught.value))
    assert type(again) is FatalError and str(again) == str(caught.value)


class FakeDNS:
    def __init__(self, answer: list[str] | OSError) -> None:
        self.answer = answer
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        if isinstance(self.answer, OSError):
            raise self.answer
        return self.answer


async def test_a_name_resolving_to_a_private_address_is_never_connected_to() -> None:
    """Refused after the lookup, before any connection: were it connected to, there is no
    server at 10.255.255.1 and the error would be another."""
    dns = FakeDNS(["93.184.216.34", "10.255.255.1"])
    with pytest.raises(FatalError, match="resolves to 10.255.255.1, which is a private"):
        await download("https://images.example.com/a.png?sig=1",
                       provider_base_url="https://api.openai.com/v1", timeout_s=5,
                       max_bytes=1000, lookup=dns)
    assert dns.asked == [("images.example.com", 443)]


async def test_a_name_that_does_not_resolve_may_resolve_later() -> None:
    dns = FakeDNS(socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"))
    with pytest.raises(ProviderUnavailable, match="Temporary failure") as caught:
        await download("https://images.example.com/a.png",
                       provider_base_url="https://api.openai.com/v1", timeout_s=5,
                       max_bytes=1000, lookup=dns)
    assert caught.value.retryable
