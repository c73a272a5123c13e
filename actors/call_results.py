"""What a provider call returns to its caller, and what it costs. Small, so cheap to send
between actors: a media file's bytes stay in storage and only its key travels."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pipelines.settings import Prices, ProviderKind

T = TypeVar("T")


@dataclass(frozen=True)
class Usage:
    """What one successful call consumed, for the limiter and the bill."""

    tokens_in: int = 0
    tokens_out: int = 0
    units: float = 0.0  # images, speech characters or video seconds


@dataclass(frozen=True)
class Answer(Generic[T]):
    """One successful attempt: the value, what it consumed, and the headers it came with."""

    value: T
    usage: Usage
    headers: Mapping[str, str]


@dataclass(frozen=True)
class Attempts:
    """How a call went: where it landed, how many tries, how long it waited and ran. Every
    result carries these, so callers account for any call the same way."""

    deployment: str
    attempts: int
    rate_limited: int  # 429s met on the way, so callers can back off their own concurrency
    latency_s: float  # of the successful attempt, from send to parsed answer
    wait_s: float  # spent waiting for the limiter, all attempts together
    cost_usd: float
    # Answered by the call cache: nothing sent, nothing paid, ``saved_usd`` not spent again.
    cache_hit: bool = field(default=False, kw_only=True)
    saved_usd: float = field(default=0.0, kw_only=True)
    # The processing tier that answered (a flex call may have fallen back to standard), and
    # what answering on flex saved against the standard price.
    tier: str = field(default="standard", kw_only=True)
    flex_saved_usd: float = field(default=0.0, kw_only=True)


@dataclass(frozen=True)
class MediaResult(Attempts):
    """A generated file, written to the storage key ``key``."""

    key: str
    size_bytes: int
    units: float  # speech characters, images, or video seconds
    request_id: str | None

    @classmethod
    def of(cls, key: str, data: bytes, answer: Answer[Any], how: Attempts) -> MediaResult:
        return cls(**vars(how), key=key, size_bytes=len(data), units=answer.usage.units,
                   request_id=answer.headers.get("x-request-id"))


@dataclass(frozen=True)
class ChatResult(Attempts):
    """A chat completion, reduced to what the pipeline uses."""

    text: str
    finish_reason: str | None
    tokens_in: int
    tokens_out: int
    request_id: str | None


def cost_usd(prices: Prices, usage: Usage, kind: ProviderKind) -> float:
    """What a call cost: its tokens, plus its units at the price of the provider's kind."""
    unit_price = {
        ProviderKind.TTS: prices.per_1m_speech_chars / 1e6,
        ProviderKind.IMAGE: prices.per_image,
        ProviderKind.VIDEO: prices.per_video_second,
    }.get(kind, 0.0)
    return (
        usage.tokens_in * prices.input_per_1m_tokens / 1e6
        + usage.tokens_out * prices.output_per_1m_tokens / 1e6
        + usage.units * unit_price
    )
