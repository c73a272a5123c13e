"""Short-lived tokens for the URLs a browser fetches by itself.

An ``EventSource``, a ``<video src>`` and a download link cannot send an ``Authorization``
header, and an API key in a URL would end up in logs, history and Referer headers. So the page
asks for a token (with its key) and puts that in the URL instead: it names one tenant and one
episode, expires after minutes, and is signed (HMAC-SHA256) with a secret every replica shares.
Pure: the caller gives the secret and the clock.

A token is ``<payload>.<signature>``, both base64url without padding; the payload is
``tenant\\nepisode id\\nexpiry`` (epoch seconds). It is checked only when a request starts: an
event stream or a download under way when it expires goes on, as with signed URLs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass


class TokenRefused(Exception):
    """Why a token does not admit a request: it says so in words a person can act on."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class StreamTokens:
    secret: bytes
    ttl_s: float

    def issue(self, tenant: str, episode_id: str, now: float) -> str:
        payload = f"{tenant}\n{episode_id}\n{int(now + self.ttl_s)}".encode()
        return f"{_b64(payload)}.{_b64(self._sign(payload))}"

    def tenant(self, token: str, episode_id: str, now: float) -> str:
        """The tenant a token speaks for, if it is this server's, for this episode, and not
        expired; else ``TokenRefused``."""
        encoded, _, signature = token.partition(".")
        if not encoded or not signature:
            raise TokenRefused("the token is malformed; ask for a new one")
        try:
            payload, given = _unb64(encoded), _unb64(signature)
        except (binascii.Error, ValueError):
            raise TokenRefused("the token is malformed; ask for a new one") from None
        if not hmac.compare_digest(given, self._sign(payload)):
            raise TokenRefused("the token is not one this server gave; ask for a new one")
        tenant, scoped, expiry = payload.decode().split("\n")
        if scoped != episode_id:
            raise TokenRefused("the token is for another episode")
        if now >= int(expiry):
            raise TokenRefused("the token expired; ask for a new one")
        return tenant

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self.secret, payload, hashlib.sha256).digest()
