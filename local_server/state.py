"""The state of one running server and the checks every model endpoint shares.

In the order a provider applies them: auth (401) → the model (404 ``model_not_found``) → [the
endpoint checks the body: 400] → quota (429 ``insufficient_quota``) → flex capacity (429
``resource_unavailable``) → rate limits (429 ``rate_limit_exceeded``) → an injected fault →
latency. Fault draws and latencies come from one ``random.Random(seed)``, so a run replays.
"""

from __future__ import annotations

import itertools
import math
import random
import secrets
import time
from collections.abc import Mapping
from typing import Any

from local_server.config import ServerConfig
from local_server.errors import ApiError
from local_server.ratelimit import Clock, EndpointLimits, format_duration
from local_server.stats import EndpointStats
from local_server.tiers import TIERED_ENDPOINTS, Tier, resource_unavailable

QUOTA_MESSAGE = ("You exceeded your current quota, please check your plan and billing details. "
                 "For more information on this error, read the docs: "
                 "https://platform.openai.com/docs/guides/error-codes/api-errors.")
SERVER_ERROR_MESSAGE = ("The server had an error while processing your request. Sorry about that! "
                        "(injected by the local server's --fault-rate)")
FAULT_STATUSES = (500, 502, 503)


class ServerState:
    """Config, randomness, buckets and counters of one server, per endpoint."""

    def __init__(self, config: ServerConfig, clock: Clock = time.monotonic) -> None:
        self.config = config
        self.random = random.Random(config.seed)
        self.limits = {
            name: EndpointLimits(e.rpm, e.tpm, config.burst_s, clock)
            for name, e in config.endpoints.items()
        }
        self.stats = {name: EndpointStats(Tier if name in TIERED_ENDPOINTS else ())
                      for name in config.endpoints}
        self._models = None if config.models is None else frozenset(config.models)
        # Unique across servers and runs (unlike the seeded answers), cheap per request.
        self._id_prefix = secrets.token_hex(6)
        self._ids = itertools.count(1)
        self._bearer = None if config.require_key is None else f"Bearer {config.require_key}"

    def request_id(self) -> str:
        return f"req_{self._id_prefix}{next(self._ids):012x}"

    def check_auth(self, headers: Mapping[str, str]) -> None:
        """401 unless the bearer key is the required one (when one is required)."""
        if self._bearer is None:
            return
        given = headers.get("Authorization", "")
        if given == self._bearer:
            return
        if not given.startswith("Bearer ") or not given[7:].strip():
            raise ApiError(401, "You didn't provide an API key. You need to provide your API "
                           "key in an Authorization header using Bearer auth (i.e. "
                           "Authorization: Bearer YOUR_KEY).", counter="unauthorized")
        raise ApiError(401, f"Incorrect API key provided: {_mask(given[7:].strip())}. You can "
                       "find your API key at https://platform.openai.com/account/api-keys.",
                       code="invalid_api_key", counter="unauthorized")

    def check_model(self, raw: Any) -> None:
        """404 ``model_not_found`` when the body names a model the server does not have (with
        ``models`` set). A missing or mistyped model is left to the body check's 400."""
        if self._models is None or not isinstance(raw, Mapping):
            return
        model = raw.get("model")
        if isinstance(model, str) and model and model not in self._models:
            raise ApiError(404, f"The model `{model}` does not exist or you do not have access "
                           "to it.", code="model_not_found", counter="model_not_found")

    def admit(self, endpoint: str, tokens: int, tier: Tier | None = None) -> dict[str, str]:
        """Quota, then flex capacity, then rate limits; charges the request and returns its
        rate-limit headers. A flex request refused for want of capacity is refused before the
        buckets are looked at: it costs the key nothing and says nothing of its limits."""
        if self.config.quota_exhausted:
            raise ApiError(429, QUOTA_MESSAGE, type="insufficient_quota",
                           code="insufficient_quota", counter="quota_rejected")
        # No draw unless flex can be refused, so runs without it replay as before.
        rate = self.config.flex_unavailable_rate
        if tier is Tier.FLEX and rate and self.random.random() < rate:
            self.stats[endpoint].by_tier[tier].unavailable += 1
            raise resource_unavailable()
        limits = self.limits[endpoint]
        decision = limits.admit(tokens)
        headers = limits.headers()
        if not decision.admitted:
            wait = decision.retry_after_s
            headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000 - 1e-6)))
            headers["retry-after"] = str(max(1, math.ceil(wait - 1e-9)))
            unit = "RPM" if decision.kind == "requests" else "TPM"
            raise ApiError(
                429, f"Rate limit reached for {decision.kind} per min ({unit}) on the local "
                f"server ({endpoint}): Limit {decision.limit:.0f}, Requested "
                f"{decision.requested:.0f}. Please try again in {format_duration(wait)}.",
                type=decision.kind, code="rate_limit_exceeded", headers=headers,
                counter="rate_limited",
            )
        self.stats[endpoint].tokens += tokens
        return headers

    def draw_fault(self) -> str | None:
        """``"server_error"``, ``"hang"``, ``"malformed"`` or None, in the configured shares."""
        c = self.config
        draw = self.random.random()
        if draw < c.fault_rate:
            return "server_error"
        draw -= c.fault_rate
        if draw < c.hang_rate:
            return "hang"
        draw -= c.hang_rate
        if draw < c.malformed_rate:
            return "malformed"
        return None

    def server_error(self) -> ApiError:
        status = self.random.choice(FAULT_STATUSES)
        return ApiError(status, SERVER_ERROR_MESSAGE, type="server_error", counter="server_error")

    def latency(self, endpoint: str, tier: Tier | None = None) -> float:
        """This request's latency: uniform around the mean, clipped at 0, scaled; a flex
        request's multiplied by ``flex_latency_factor``."""
        e = self.config.endpoints[endpoint]
        if self.config.latency_scale == 0:
            return 0.0
        sample = e.latency_s + self.random.uniform(-e.jitter_s, e.jitter_s)
        factor = self.config.flex_latency_factor if tier is Tier.FLEX else 1.0
        return max(0.0, sample) * self.config.latency_scale * factor

    def reset_stats(self) -> None:
        for stats in self.stats.values():
            stats.reset()


def _mask(key: str) -> str:
    """How OpenAI echoes a wrong key: its ends, the middle starred."""
    if len(key) <= 8:
        return "*" * len(key)
    return f"{key[:3]}{'*' * (len(key) - 7)}{key[-4:]}"
