"""What the bundled server simulates: latency, limits and faults, per endpoint.

Endpoints are entries of one table keyed by name (``chat``, ``speech``, ``image``, ``video``), so
a new kind of model call gets its own latency and limits by adding an entry, not new fields.
The config is checked on construction: ``build_app`` can be called without the CLI (tests do), and
a rate of 1.5 or a negative latency would otherwise only show up as odd behaviour under load.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

# What a speech answer can be encoded as (OpenAI's ``response_format`` values).
SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
IMAGE_ANSWERS = ("b64_json", "url")


@dataclass(frozen=True)
class EndpointConfig:
    """Latency and limits of one endpoint kind.

    Latency is drawn per request, uniformly in ``latency_s +/- jitter_s``, clipped at 0, then
    multiplied by ``ServerConfig.latency_scale``. ``rpm``/``tpm`` of ``None`` mean no limit.
    """

    latency_s: float
    jitter_s: float
    rpm: float | None = None
    tpm: float | None = None

    def __post_init__(self) -> None:
        _check(self.latency_s >= 0, f"latency_s must be 0 or more, not {self.latency_s}")
        _check(self.jitter_s >= 0, f"jitter_s must be 0 or more, not {self.jitter_s}")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            _check(value is None or value > 0, f"{name} must be above 0 or None, not {value}")


def default_endpoints() -> dict[str, EndpointConfig]:
    """Latencies like a real provider's, before ``latency_scale``; no limits."""
    return {
        "chat": EndpointConfig(latency_s=0.8, jitter_s=0.3),
        "speech": EndpointConfig(latency_s=1.5, jitter_s=0.5),
        "image": EndpointConfig(latency_s=6.0, jitter_s=2.0),
        "video": EndpointConfig(latency_s=0.5, jitter_s=0.2),  # the create call itself
    }


@dataclass(frozen=True)
class ServerConfig:
    """Everything that shapes the server's behaviour; the same config and seed replay the same
    answers, latencies and faults (for requests arriving in the same order)."""

    seed: int = 0
    latency_scale: float = 1.0
    # Bucket capacity in seconds of quota: OpenAI documents that 60,000 RPM may be enforced as
    # 1,000 requests per second, so a burst of a whole minute's quota is refused.
    burst_s: float = 1.0
    fault_rate: float = 0.0  # share of admitted requests answered 500/502/503
    hang_rate: float = 0.0  # share held for ``hang_s`` before the answer
    malformed_rate: float = 0.0  # share answered 200 with a body that is not JSON
    hang_s: float = 600.0
    quota_exhausted: bool = False  # every request: 429 insufficient_quota
    require_key: str | None = None  # any other bearer key: 401 invalid_api_key
    video_job_s: float = 60.0  # how long a clip job takes, before latency_scale
    video_job_jitter_s: float = 15.0
    video_max_jobs: int = 10  # jobs in progress at once; more is a 429
    video_fail_rate: float = 0.0  # share of jobs that end "failed"
    # Clips rendered this size ("WxH") whatever the job asks, and at this frame rate: cheap
    # clips for benchmarks on a small machine. None: the size the job asks for.
    video_render_size: str | None = None
    video_render_fps: int = 24
    # Service tiers (chat): a flex answer's latency is multiplied by this, and this share of flex
    # requests is refused 429 resource_unavailable. ``flex_models``: the models that take flex
    # (others: 400); None: every model.
    flex_latency_factor: float = 3.0
    flex_unavailable_rate: float = 0.0
    flex_models: Sequence[str] | None = None
    # What an image request naming no response_format gets: "b64_json" (OpenAI's) or "url"
    # (some local servers' default).
    image_answer: str = "b64_json"
    # Every speech answer in this format, whatever the request asked: a provider that answers
    # another format than the one asked. None: the format asked.
    speech_format: str | None = None
    # The models that exist: a request naming another is a 404 model_not_found. None: any name.
    models: Sequence[str] | None = None
    endpoints: dict[str, EndpointConfig] = field(default_factory=default_endpoints)

    def __post_init__(self) -> None:
        # Kept as tuples: a config is a value, compared and never changed.
        for name in ("flex_models", "models"):
            names = getattr(self, name)
            if names is None:
                continue
            _check(not isinstance(names, str), f"{name} must be a list of names, not {names!r}")
            object.__setattr__(self, name, tuple(names))
            _check(bool(names) and all(isinstance(n, str) and n for n in names),
                   f"{name} must name at least one model, not {names!r}")
        _check(self.flex_latency_factor > 0, f"flex_latency_factor must be above 0, not "
                                             f"{self.flex_latency_factor}")
        _check(self.image_answer in IMAGE_ANSWERS, f"image_answer must be one of "
                                                   f"{', '.join(IMAGE_ANSWERS)}, not "
                                                   f"{self.image_answer!r}")
        _check(self.speech_format is None or self.speech_format in SPEECH_FORMATS,
               f"speech_format must be one of {', '.join(SPEECH_FORMATS)}, not "
               f"{self.speech_format!r}")
        for name in ("fault_rate", "hang_rate", "malformed_rate", "video_fail_rate",
                     "flex_unavailable_rate"):
            value = getattr(self, name)
            _check(0.0 <= value <= 1.0, f"{name} must be from 0 to 1, not {value}")
        _check(self.fault_rate + self.hang_rate + self.malformed_rate <= 1.0 + 1e-9,
               "fault_rate + hang_rate + malformed_rate must not exceed 1")
        _check(self.latency_scale >= 0, f"latency_scale must be 0 or more, not "
                                        f"{self.latency_scale}")
        _check(self.burst_s > 0, f"burst_s must be above 0, not {self.burst_s}")
        _check(self.hang_s >= 0, f"hang_s must be 0 or more, not {self.hang_s}")
        _check(self.video_job_s >= 0 and self.video_job_jitter_s >= 0,
               "video_job_s and video_job_jitter_s must be 0 or more")
        _check(self.video_max_jobs >= 0, f"video_max_jobs must be 0 or more, not "
                                         f"{self.video_max_jobs}")
        _check(1 <= self.video_render_fps <= 60, f"video_render_fps must be from 1 to 60, not "
                                                 f"{self.video_render_fps}")
        if self.video_render_size is not None:
            parse_size(self.video_render_size)  # a ValueError that says what is wrong

    def endpoint(self, name: str) -> EndpointConfig:
        return self.endpoints[name]

    def with_endpoint(self, name: str, **changes: float | None) -> ServerConfig:
        """A copy with one endpoint's settings changed: ``with_endpoint("chat", rpm=600)``."""
        endpoints = {**self.endpoints, name: dataclasses.replace(self.endpoints[name], **changes)}
        return dataclasses.replace(self, endpoints=endpoints)


def parse_size(text: str) -> tuple[int, int]:
    """``"320x180"`` → ``(320, 180)``; even sides from 16 to 4096 (H.264 wants even sides)."""
    width, sep, height = text.partition("x")
    if not (sep and width.isdigit() and height.isdigit()):
        raise ValueError(f"a size is WIDTHxHEIGHT, like 320x180, not {text!r}")
    w, h = int(width), int(height)
    if not (16 <= w <= 4096 and 16 <= h <= 4096 and w % 2 == 0 and h % 2 == 0):
        raise ValueError(f"a size's sides must be even and from 16 to 4096, not {text!r}")
    return w, h


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
