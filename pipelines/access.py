"""Who may call the HTTP API, and how often: API keys as tenants, per-tenant request rates, and
idempotency keys as episode ids. Pure logic with an injected clock; ``serve_app`` does the I/O.

Keys are kept only as SHA-256 digests and compared in constant time, so neither memory dumps nor
response timing give a key away. A tenant is named by a short digest of its key, never the key.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pipelines.settings import Settings, SettingsError

LOCAL_TENANT = "local"  # everyone, when no keys are configured (loopback only)
MAX_IDEMPOTENCY_KEY = 255


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    """The configured keys, hashed; ``tenant(authorization)`` says whose a request is."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [_digest(k) for k in dict.fromkeys(keys)]

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        keys: list[str] = []
        if settings.api_keys is not None:
            keys += [k.strip() for k in settings.api_keys.get_secret_value().split(",")]
        if settings.api_keys_file is not None:
            try:
                text = settings.api_keys_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise SettingsError(
                    f"cannot read api_keys_file {settings.api_keys_file}: {err}") from None
            keys += [line.strip() for line in text.splitlines()
                     if line.strip() and not line.lstrip().startswith("#")]
        keys = [k for k in keys if k]
        short = [k for k in keys if len(k) < 16]
        if short:
            raise SettingsError(f"{len(short)} API key(s) shorter than 16 characters: "
                                "use long random keys, e.g. `python -m secrets`-made ones")
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def tenant(self, authorization: str | None) -> str | None:
        """The tenant of an ``Authorization: Bearer KEY`` header; ``None`` if it is not a key."""
        if not self.enabled:
            return LOCAL_TENANT
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        candidate = _digest(key.strip())
        match = None
        for digest in self._digests:  # every digest is compared: timing says nothing
            if hmac.compare_digest(candidate, digest):
                match = digest
        return None if match is None else "t_" + match.hex()[:16]


@dataclass
class _Bucket:
    tokens: float
    at: float


class TenantRateLimiter:
    """Requests per minute per tenant: a bucket holding a minute's quota, refilled smoothly."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, tenant: str) -> float:
        """Count one request; 0 if allowed, else the seconds until one would be."""
        now = self.clock()
        bucket = self._buckets.setdefault(tenant, _Bucket(self.capacity, now))
        bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


def check_idempotency_key(key: str) -> str:
    """A key as sent, if usable: 1-255 visible ASCII characters."""
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not all(33 <= ord(c) <= 126 for c in key):
        raise ValueError(f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} visible ASCII "
                         "characters")
    return key


def request_key(tenant: str, idempotency_key: str | None) -> str | None:
    """The name of an idempotent request: derived from the tenant too, so two tenants' equal
    keys never meet."""
    if idempotency_key is None:
        return None
    return hashlib.sha256(f"{tenant}\0{idempotency_key}".encode()).hexdigest()[:16]


def episode_ids(tenant: str, idempotency_key: str | None, count: int) -> list[str] | None:
    """Stable episode ids for an idempotent request (``None``: let the coordinator pick)."""
    base = request_key(tenant, idempotency_key)
    if base is None:
        return None
    return [base] if count == 1 else [f"{base}-{i}" for i in range(count)]
