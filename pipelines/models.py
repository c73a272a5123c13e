"""The domain: what a user asks for, what the models write, and an episode's state.

Requests are validated at the edge with limits on every field. The models' answers are asked for
with Structured Outputs (the JSON schema of the ``*Draft`` classes) and validated on the way in.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipelines.settings import Tier

MAX_SCENES = 200
MAX_LINES_PER_SCENE = 40

_REQUEST = ConfigDict(extra="forbid", str_strip_whitespace=True)
_DRAFT = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Continuity:
    """Which earlier scenes' speeches a scene's dialogue sees.

    ``chain``: the previous scene's; ``window:K``: the last K scenes'; ``batch:K``: scenes go in
    batches of K and a batch sees every scene of the batches before it; ``none``: none.
    """

    mode: Literal["chain", "window", "batch", "none"]
    k: int = 1

    @classmethod
    @functools.lru_cache(maxsize=64)
    def parse(cls, text: str) -> Continuity:
        """A mode from its text (cached: plans are looked up by it on every status poll)."""
        text = text.strip().lower()
        if text in ("chain", "none"):
            return cls(text)  # type: ignore[arg-type]
        match = re.fullmatch(r"(window|batch):(\d{1,3})", text)
        if match and 1 <= int(match[2]) <= MAX_SCENES:
            return cls(match[1], int(match[2]))  # type: ignore[arg-type]
        raise ValueError(
            f"unknown continuity mode {text!r}: use chain, none, window:K or batch:K "
            f"(K from 1 to {MAX_SCENES})"
        )

    def __str__(self) -> str:
        return self.mode if self.mode in ("chain", "none") else f"{self.mode}:{self.k}"

    def sees(self, scene: int) -> list[int]:
        """The earlier scenes (1-based) whose speeches scene ``scene``'s dialogue is given."""
        if self.mode == "none":
            return []
        if self.mode == "chain":
            return [scene - 1] if scene > 1 else []
        if self.mode == "window":
            return list(range(max(1, scene - self.k), scene))
        batch_start = (scene - 1) // self.k * self.k + 1
        return list(range(1, batch_start))


class Character(BaseModel):
    model_config = _REQUEST

    name: str = Field(min_length=1, max_length=60, description="The character's name.")
    voice: str | None = Field(
        None, min_length=1, max_length=40, description="A speech voice for this character."
    )


class EpisodeRequest(BaseModel):
    """What a user asks for: one episode from one premise."""

    model_config = _REQUEST

    premise: str = Field(min_length=1, max_length=4000, description="What the episode is about.")
    title: str | None = Field(None, min_length=1, max_length=200, description="A working title.")
    scenes: int = Field(6, ge=1, le=MAX_SCENES, description="How many scenes.")
    lines_per_scene: int = Field(
        6, ge=1, le=MAX_LINES_PER_SCENE, description="Dialogue lines per scene."
    )
    characters: list[Character] = Field(
        default_factory=list, max_length=20, description="Named characters (optional)."
    )
    style: str = Field(
        "warm comedy-drama", min_length=1, max_length=200, description="Tone and genre."
    )
    continuity: str = Field(
        "chain",
        description="Which earlier scenes' speeches each scene's dialogue sees: chain, none, "
        "window:K or batch:K.",
    )
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Seed for reproducible runs.")
    budget_usd: float | None = Field(
        None, gt=0, le=100_000, description="The most its calls may cost: a call that could pass "
        "it is not sent, and the episode ends failed (`budget_exceeded`)."
    )
    priority: int = Field(0, ge=-100, le=100, description="Higher runs first when episodes wait.")
    on_scene_failure: Literal["fail", "skip"] = Field(
        "fail", description="fail: a failed scene fails the episode; skip: finish without it."
    )
    media: bool = Field(
        True, description="Go on from the script to speech, pictures, clips and one MP4."
    )
    cache: bool = Field(
        True, description="Answer a call from your identical earlier call, paying once (false: "
        "send every call). Without a seed, the same request draws the same seeds."
    )

    tier: Tier | None = Field(
        None, description="Processing tier of its chat calls: standard, or flex (half price, "
        "slower, at times no capacity). Default: the settings' (`SHOWRUNNER_LLM__TIER`)."
    )
    flex_wait_s: float | None = Field(
        None, ge=0, le=86_400, description="On flex: how long a call keeps trying flex while it "
        "has no capacity, seconds. Default: the settings'."
    )
    flex_fallback: bool | None = Field(
        None, description="On flex: once that wait is over, send the call at standard (false: "
        "it fails, and the episode with it). Default: the settings'."
    )

    @field_validator("continuity")
    @classmethod
    def _valid_continuity(cls, value: str) -> str:
        return str(Continuity.parse(value))

    @property
    def continuity_mode(self) -> Continuity:
        return Continuity.parse(self.continuity)


def with_seeds(requests: Sequence[EpisodeRequest]) -> list[EpisodeRequest]:
    """The requests, each without a seed given one drawn from what it asks and from how many
    alike came before it in ``requests``: the same submission again draws the same seeds, so
    its calls are the same and the call cache answers them, while two alike in one submission
    stay two episodes."""
    seen: Counter[str] = Counter()
    seeded = []
    for request in requests:
        if request.seed is not None:
            seeded.append(request)
            continue
        asked = request.model_dump_json()
        digest = hashlib.sha256(f"{asked}\0{seen[asked]}".encode()).digest()
        seen[asked] += 1
        seed = int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
        seeded.append(request.model_copy(update={"seed": seed}))
    return seeded


# -- what the language model writes ------------------------------------------------------------

ShortText = Annotated[str, Field(min_length=1, max_length=300)]
LongText = Annotated[str, Field(min_length=1, max_length=2000)]


class CharacterSketch(BaseModel):
    model_config = _DRAFT

    name: str = Field(min_length=1, max_length=60)
    description: ShortText


class SceneOutline(BaseModel):
    model_config = _DRAFT

    number: int = Field(ge=1, le=MAX_SCENES)
    title: ShortText
    setting: ShortText
    summary: LongText
    characters: list[str] = Field(min_length=1, max_length=20)


class OutlineDraft(BaseModel):
    """One chunk of an outline: long episodes are outlined a chunk at a time."""

    model_config = _DRAFT

    title: ShortText
    logline: LongText
    characters: list[CharacterSketch] = Field(min_length=1, max_length=20)
    scenes: list[SceneOutline] = Field(min_length=1, max_length=MAX_SCENES)


class SceneContent(BaseModel):
    model_config = _DRAFT

    setting: LongText
    action: LongText
    mood: ShortText


class DialogueLine(BaseModel):
    model_config = _DRAFT

    speaker: str = Field(min_length=1, max_length=60)
    text: str = Field(min_length=1, max_length=1000)
    direction: str = Field("", max_length=300)


class SceneDialogue(BaseModel):
    model_config = _DRAFT

    lines: list[DialogueLine] = Field(min_length=1, max_length=MAX_LINES_PER_SCENE)


# -- an episode's state ------------------------------------------------------------------------


class EpisodeStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (EpisodeStatus.COMPLETED, EpisodeStatus.FAILED, EpisodeStatus.CANCELLED)


class ListOrder(StrEnum):
    """How a listing of episodes runs: in submission order, or the newest first."""

    OLDEST = "oldest"
    NEWEST = "newest"


class SceneState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
