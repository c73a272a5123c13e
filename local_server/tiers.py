"""Service tiers of chat completions, as OpenAI's ``service_tier``: ``flex`` is billed at half
price, answers more slowly and is sometimes refused for want of capacity.

A refusal for want of capacity is a 429 but not a rate limit: OpenAI does not charge for it, and
it says nothing of the key's limits. So it is decided before the rate-limit buckets are charged,
carries no ``x-ratelimit-*`` or ``retry-after`` header that a client would take for a limit's
pause, and is told apart by its ``code``, ``resource_unavailable``.
"""

from __future__ import annotations

from collections.abc import Collection
from enum import StrEnum
from typing import Any

from local_server.errors import ApiError, bad_request


class Tier(StrEnum):
    """The tier a request is served (and billed) at, as echoed in the completion's
    ``service_tier``."""

    DEFAULT = "default"
    FLEX = "flex"
    PRIORITY = "priority"


# What a request may ask for; "auto" (and no tier at all) is served at the default tier.
REQUESTABLE = ("auto", "default", "flex", "priority")
# Endpoints whose requests name a tier: their ``/stats`` count calls per tier.
TIERED_ENDPOINTS = frozenset({"chat"})
UNAVAILABLE_MESSAGE = ("Resource unavailable. Please try again later or use the default service "
                       "tier.")


def tier_of(raw: dict[str, Any], flex_models: Collection[str] | None) -> Tier:
    """The tier of a checked chat body; a 400 for a tier OpenAI does not know, and for flex on a
    model outside ``flex_models`` (as Azure refuses it, rather than serving it at the default
    tier and price)."""
    asked = raw.get("service_tier")
    if asked is None or asked == "auto":
        return Tier.DEFAULT
    if asked not in REQUESTABLE:
        supported = ", ".join(f"'{t}'" for t in REQUESTABLE[:-1])
        raise bad_request(f"Invalid value: {asked!r}. Supported values are: {supported}, and "
                          f"'{REQUESTABLE[-1]}'.", param="service_tier", code="invalid_value")
    tier = Tier(asked)
    if tier is Tier.FLEX and flex_models is not None and raw["model"] not in flex_models:
        raise bad_request(f"The model `{raw['model']}` does not support service_tier 'flex'; "
                          "use 'auto' or 'default'.", param="service_tier",
                          code="unsupported_value")
    return tier


def resource_unavailable() -> ApiError:
    """The 429 of a flex request refused for want of capacity. ``server_error``, not
    ``invalid_request_error``: the request was fine, the server had no room for it; nor a
    limit's type (``requests``, ``tokens``): it is no rate limit."""
    return ApiError(429, UNAVAILABLE_MESSAGE, type="server_error", code="resource_unavailable")
