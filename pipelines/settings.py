"""Settings: every knob a user turns, from the environment or a TOML file.

Environment names are ``SHOWRUNNER_`` + the field path joined by ``__``, e.g.
``SHOWRUNNER_LLM__BASE_URL`` or ``SHOWRUNNER_MAX_PARALLEL_EPISODES``. A TOML file given with
``--config`` holds the same fields as tables (``[llm]``, ``[llm.prices]``); the environment wins
over the file, so a deployment can override one value without editing it.

A provider whose ``base_url`` is unset is served by the bundled local server, so a newcomer needs no
key. Bad values stop the program at start with one line naming the field (see ``SettingsError``),
and so does a ``SHOWRUNNER_`` variable that names no setting: pydantic-settings would ignore it, and
a misspelt ``SHOWRUNNER_LLM_BASE_URL`` would quietly run everything on the placeholder server.
"""

from __future__ import annotations

import difflib
import functools
import os
import tomllib
from collections.abc import Iterable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from pipelines import storage
from pipelines.storage import PATIENCE_S


class ProviderKind(StrEnum):
    """The kinds of model provider; each has its settings (``Settings.llm``, ...) and one actor."""

    LLM = "llm"
    TTS = "tts"
    IMAGE = "image"
    VIDEO = "video"


_STRICT = ConfigDict(extra="forbid", frozen=True)

ENV_PREFIX = "SHOWRUNNER_"
ENV_DELIMITER = "__"

# The state store's drivers: SQLAlchemy's async ones, which the store is written against.
STATE_URL_SCHEMES = ("sqlite+aiosqlite://", "postgresql+asyncpg://")
STATE_DB_FILE = "showrunner.db"


class SettingsError(Exception):
    """Settings that cannot be used; the message is one line, safe to print (no secrets)."""


# Processing tiers of chat calls: OpenAI's default one, and Flex processing (``service_tier``).
Tier = Literal["standard", "flex"]
FLEX_PRICE_SHARE = 0.5  # flex is billed at Batch prices: half the standard ones


class Prices(BaseModel):
    """What a provider charges, so the report can say where the money went."""

    model_config = _STRICT

    input_per_1m_tokens: float = Field(0.0, ge=0, description="USD per 1M prompt tokens.")
    output_per_1m_tokens: float = Field(0.0, ge=0, description="USD per 1M completion tokens.")
    per_image: float = Field(0.0, ge=0, description="USD per generated image.")
    per_1m_speech_chars: float = Field(0.0, ge=0, description="USD per 1M characters spoken.")
    per_video_second: float = Field(0.0, ge=0, description="USD per second of generated video.")


class DeploymentSettings(BaseModel):
    """One more key or endpoint for the same provider; unset fields fall back to the provider's."""

    model_config = _STRICT

    base_url: AnyHttpUrl | None = Field(
        None, description="OpenAI-compatible base URL, e.g. https://api.openai.com/v1."
    )
    api_key: SecretStr | None = Field(None, description="API key for this deployment (secret).")
    rpm: PositiveFloat | None = Field(None, description="Requests per minute for this deployment.")
    tpm: PositiveFloat | None = Field(None, description="Tokens per minute for this deployment.")
    max_inflight: PositiveInt | None = Field(
        None, description="Most requests in flight at once to this deployment."
    )


class ProviderSettings(BaseModel):
    """One model provider: where it is, what it allows, what it costs."""

    model_config = _STRICT

    base_url: AnyHttpUrl | None = Field(
        None,
        description="OpenAI-compatible base URL (OpenAI, vLLM, Ollama, a LiteLLM proxy). "
        "Unset: the bundled local server.",
    )
    api_key: SecretStr | None = Field(
        None, description="API key; a secret that is never logged, printed or reported."
    )
    model: str = Field(
        "local", min_length=1, max_length=200, description="Model name sent with each call."
    )
    rpm: PositiveFloat | None = Field(
        None, description="Requests per minute the key allows (None: no request limit)."
    )
    tpm: PositiveFloat | None = Field(
        None, description="Tokens per minute the key allows (None: no token limit)."
    )
    max_inflight: PositiveInt = Field(64, description="Most requests in flight at once.")
    timeout_s: PositiveFloat = Field(60.0, description="Timeout of one HTTP request, seconds.")
    max_attempts: int = Field(
        5, ge=1, le=20, description="Attempts per call, the first included, before giving up."
    )
    burst_s: PositiveFloat = Field(
        1.0,
        le=60,
        description="Bucket capacity in seconds of quota. Providers enforce per-minute limits "
        "per second, so a larger burst earns 429s.",
    )
    prices: Prices = Field(default_factory=Prices, description="What this provider charges.")
    deployments: list[DeploymentSettings] = Field(
        default_factory=list,
        max_length=32,
        description="Extra keys or endpoints for this provider; calls go to the least-loaded "
        "healthy one. Empty: the single deployment described by the fields above.",
    )

    # A kind's list prices; a user's partial `prices` table is laid over them, not instead of them.
    default_prices: ClassVar[dict[str, float]] = {}

    @model_validator(mode="before")
    @classmethod
    def _merge_default_prices(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("prices", {}), dict):
            data = {**data, "prices": {**cls.default_prices, **data.get("prices", {})}}
        return data

    def resolved_deployments(self) -> list[DeploymentSettings]:
        """Every deployment with the provider's values filled in where it leaves them unset."""
        base = DeploymentSettings(
            base_url=self.base_url, api_key=self.api_key, rpm=self.rpm, tpm=self.tpm,
            max_inflight=self.max_inflight,
        )
        if not self.deployments:
            return [base]
        return [
            base.model_copy(update=d.model_dump(exclude_none=True, exclude_unset=True))
            for d in self.deployments
        ]


# Per-kind defaults are an OpenAI tier-1 key's limits: safe to point at a paid API as they are.
class LLMSettings(ProviderSettings):
    """The text model: outlines, scenes, dialogue."""

    # OpenAI's cheapest current chat model (checked 2026-12-03; gpt-4o-mini is deprecated and
    # shuts down on 2027-01-14). docs/providers.md says where these names and prices come from.
    model: str = Field("gpt-6-luna", min_length=1, max_length=200, description="Chat model.")
    rpm: PositiveFloat | None = Field(500, description="Requests per minute the key allows.")
    tpm: PositiveFloat | None = Field(200_000, description="Tokens per minute the key allows.")
    max_tokens_field: Literal["max_completion_tokens", "max_tokens"] = Field(
        "max_completion_tokens",
        description="The request field that caps an answer's length: OpenAI's GPT-5 and later "
        "refuse `max_tokens`; some older servers know only it.",
    )
    reasoning_effort: str | None = Field(
        "none", max_length=20,
        description="Sent as `reasoning_effort`: `none` keeps a reasoning model's output tokens "
        "for the answer. Empty: not sent (models that do not reason refuse it).",
    )
    tier: Tier = Field(
        "standard",
        description="Processing tier of an episode that names none: standard, or flex (OpenAI's "
        "Flex processing: Batch prices, slower answers, at times no capacity).",
    )
    flex_prices: Prices | None = Field(
        None, description="What a flex call costs. Unset: half of `prices`, as OpenAI bills flex "
        "at Batch prices.",
    )
    flex_timeout_s: PositiveFloat = Field(
        900.0, description="Timeout of one flex request, seconds (flex queues: OpenAI advises 15 "
        "minutes).",
    )
    flex_wait_s: float = Field(
        300.0, ge=0, le=86_400,
        description="Default for episodes: how long a call keeps trying flex while it has no "
        "capacity, seconds.",
    )
    flex_fallback: bool = Field(
        True, description="Default for episodes: once that wait is over, send the call at "
        "standard (false: it fails).",
    )
    default_prices: ClassVar[dict[str, float]] = {
        "input_per_1m_tokens": 0.10, "output_per_1m_tokens": 0.50
    }

    @field_validator("reasoning_effort", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    def tier_prices(self, tier: Tier) -> Prices:
        """What a call on ``tier`` costs."""
        if tier == "standard":
            return self.prices
        return self.flex_prices or Prices(**{name: value * FLEX_PRICE_SHARE for name, value
                                             in self.prices.model_dump().items()})


class TTSSettings(ProviderSettings):
    """The speech model: one call per dialogue line."""

    model: str = Field("gpt-4o-mini-tts", min_length=1, max_length=200, description="TTS model.")
    rpm: PositiveFloat | None = Field(300, description="Requests per minute the key allows.")
    max_inflight: PositiveInt = Field(32, description="Most requests in flight at once.")
    default_prices: ClassVar[dict[str, float]] = {"per_1m_speech_chars": 15.0}


class ImageSettings(ProviderSettings):
    """The image model: one picture per scene."""

    # gpt-image-1 shut down on 2026-10-23; the 2.6 models replace it (flare: the fast one).
    model: str = Field("gpt-image-2.6-flare", min_length=1, max_length=200,
                       description="Image model.")
    rpm: PositiveFloat | None = Field(50, description="Requests per minute the key allows.")
    max_inflight: PositiveInt = Field(16, description="Most requests in flight at once.")
    timeout_s: PositiveFloat = Field(120.0, description="Timeout of one HTTP request, seconds.")
    default_prices: ClassVar[dict[str, float]] = {"per_image": 0.04}


class VideoSettings(ProviderSettings):
    """The video model: one clip per scene, made as an asynchronous job."""

    # OpenAI's Videos API shut down on 2026-09-24: the default is an image-to-video model that
    # vLLM-Omni serves on /v1/videos (a clip is made from its scene's picture).
    model: str = Field("Wan-AI/Wan2.2-TI2V-5B-Diffusers", min_length=1, max_length=200,
                       description="Video model.")
    rpm: PositiveFloat | None = Field(10, description="Requests per minute the key allows.")
    max_inflight: PositiveInt = Field(10, description="Most requests in flight at once.")
    max_jobs: PositiveInt = Field(
        10, le=10_000,
        description="Most clip jobs at once, queued or rendering: the provider's job limit.",
    )
    timeout_s: PositiveFloat = Field(120.0, description="Timeout of one HTTP request, seconds.")
    poll_initial_s: PositiveFloat = Field(
        2.0, le=600, description="First wait between polls of a clip job, seconds."
    )
    poll_max_s: PositiveFloat = Field(
        10.0, le=600, description="Longest wait between polls of a clip job, seconds."
    )
    clip_timeout_s: PositiveFloat = Field(
        1200.0, le=86_400, description="A clip job that takes longer than this has failed."
    )
    # Self-hosted: what its hardware costs is the user's to say (`PRICES__PER_VIDEO_SECOND`).
    default_prices: ClassVar[dict[str, float]] = {"per_video_second": 0.0}


X264Preset = Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium"]


class EncodingSettings(BaseModel):
    """How scenes and episodes are encoded: smaller and faster for previews and benchmarks."""

    model_config = _STRICT

    width: int = Field(1280, ge=160, le=3840, multiple_of=2, description="Video width, pixels.")
    height: int = Field(720, ge=90, le=2160, multiple_of=2, description="Video height, pixels.")
    fps: int = Field(24, ge=1, le=60, description="Frames per second of the episode video.")
    x264_preset: X264Preset = Field(
        "veryfast", description="H.264 speed/size trade-off; `ultrafast` for previews."
    )


class ServiceSettings(BaseModel):
    """The HTTP service (`showrunner serve`, `serve run serve_app:app`)."""

    model_config = _STRICT

    host: str = Field("127.0.0.1", description="Address to listen on; loopback without API keys.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    max_active_episodes: PositiveInt = Field(
        20, le=10_000, description="Per tenant: episodes queued plus running at once."
    )
    max_scenes_per_request: PositiveInt = Field(
        1000, le=1_000_000, description="Per tenant: scenes in one request, all its episodes."
    )
    requests_per_minute: PositiveInt = Field(
        600, le=1_000_000, description="Per tenant and per replica: HTTP requests a minute."
    )
    max_batch: PositiveInt = Field(50, le=1000, description="Episodes in one batch request.")
    local_latency_scale: float = Field(
        1.0, ge=0, le=100,
        description="The bundled server's latency as a multiple of a real provider's (0: none).",
    )
    max_body_bytes: PositiveInt = Field(
        1 << 20, le=64 << 20, description="Largest request body accepted, bytes (else 413)."
    )
    body_timeout_s: float = Field(
        30.0, gt=0, le=3600,
        description="A request body not fully arrived after this long is answered 408.",
    )
    unhealthy_after_s: float = Field(
        60.0, gt=0, le=86_400,
        description="`/healthz` fails once an actor the service needs has been down this long,"
        " so an orchestrator restarts the replica.",
    )
    daily_budget_usd: float | None = Field(
        None, gt=0, le=1_000_000,
        description="Per tenant: USD its calls may cost in a UTC day (none: no limit). A call "
        "that could pass it is not sent; a submission once it is spent is answered 429.",
    )
    replicas: PositiveInt = Field(
        1, le=1000, description="Serve replicas of the HTTP API (`showrunner serve`).")
    presigned_urls_s: int | None = Field(
        None, ge=1, le=7 * 86_400,
        description="With object storage that signs URLs (S3, GCS): a file download is "
        "redirected (307) to a URL signed for this many seconds, so its bytes skip the service "
        "(none: the service streams them, with Range).",
    )
    stream_token_ttl_s: int = Field(
        600, ge=10, le=86_400,
        description="How long a token the studio page asks for lasts: one episode's event "
        "stream, video and downloads, whose URLs cannot carry the API key.",
    )
    token_secret: SecretStr | None = Field(
        None, min_length=32,
        description="Signs those tokens; a secret (unset: the service draws one as it starts, "
        "shared by its replicas, and tokens end with it).",
    )
    dashboard_url: str | None = Field(
        None, pattern=r"^https?://",
        description="Ray's dashboard as the studio page should link to it, on a server with "
        "API keys (a keyless, local server links to its own).",
    )


Resources = dict[str, Annotated[float, Field(gt=0, le=1_000_000)]]


class PlacementSettings(BaseModel):
    """Where on a Ray cluster each part runs: the Ray custom resources its actors or tasks ask
    for, so that they land only on nodes started with them (``ray start --resources``). Empty:
    anywhere. E.g. the coordinator on on-demand nodes, compositions on CPU nodes."""

    model_config = _STRICT

    coordinator: Resources = Field(
        default_factory=dict, description="The coordinator actor's resources (JSON object).")
    providers: Resources = Field(
        default_factory=dict, description="The provider actors' resources (JSON object).")
    media: Resources = Field(
        default_factory=dict, description="Each composition task's resources (JSON object).")
    replicas: Resources = Field(
        default_factory=dict, description="Each Serve replica's resources (JSON object).")


class ObjectStoreSettings(BaseModel):
    """An S3 or S3-compatible object store (MinIO, Ceph, Cloudflare R2) for `storage`.
    Unset fields fall back to the AWS SDK's own chain: `AWS_*` variables, a profile, an
    instance's or pod's IAM role (the way to go on AWS: no keys to keep)."""

    model_config = _STRICT

    endpoint_url: str | None = Field(
        None, pattern=r"^https?://", description="An S3-compatible server's URL (unset: AWS)."
    )
    region: str | None = Field(None, max_length=64, description="The bucket's region.")
    access_key_id: SecretStr | None = Field(None, description="A key id; a secret.")
    secret_access_key: SecretStr | None = Field(None, description="Its secret; a secret.")

    def options(self) -> dict[str, Any]:
        """The fsspec (s3fs) options: credentials only where set, never logged."""
        options: dict[str, Any] = {}
        if self.endpoint_url is not None:
            options["endpoint_url"] = self.endpoint_url
        if self.region is not None:
            options["client_kwargs"] = {"region_name": self.region}
        if self.access_key_id is not None:
            options["key"] = self.access_key_id.get_secret_value()
        if self.secret_access_key is not None:
            options["secret"] = self.secret_access_key.get_secret_value()
        return options


class Settings(BaseSettings):
    """Everything Showrunner reads at start."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        extra="forbid",
        frozen=True,
    )

    llm: LLMSettings = Field(default_factory=LLMSettings, description="The text provider.")
    tts: TTSSettings = Field(default_factory=TTSSettings, description="The speech provider.")
    image: ImageSettings = Field(default_factory=ImageSettings, description="The image provider.")
    video: VideoSettings = Field(default_factory=VideoSettings, description="The video provider.")
    max_parallel_episodes: PositiveInt = Field(
        3, le=1000, description="Episodes running at once; the rest wait by priority."
    )
    max_parallel_scenes: PositiveInt = Field(
        8, le=10_000, description="Nodes running at once in one episode (clip jobs not counted)."
    )
    storage: str = Field(
        "out", min_length=1,
        description="Root of episode folders and cached media: a local folder (relative to the "
        "working directory), or an fsspec URL: s3://bucket/prefix, gs://bucket/prefix.",
    )
    storage_patience_s: float = Field(
        PATIENCE_S, ge=0, le=3600,
        description="How long a file operation on object storage keeps trying while the store "
        "cannot be reached or answers that it is busy or failing (a 500 or 503), after its "
        "client's own retries, before the work fails (0: at once).",
    )
    s3: ObjectStoreSettings = Field(
        default_factory=ObjectStoreSettings,
        description="The S3 (or S3-compatible) store of an s3:// storage.",
    )
    state_url: SecretStr | None = Field(
        None,
        description="The state store's database (sqlite+aiosqlite:// or postgresql+asyncpg://); "
        f"a secret. Unset: SQLite, {STATE_DB_FILE} in the storage folder (which must then be a "
        "local folder).",
    )
    retention_days: float | None = Field(
        None, gt=0, le=36_500,
        description="Episodes that finished this many days ago are removed, rows and files, "
        "by the running coordinator (none: kept until `showrunner prune`).",
    )
    cache: bool = Field(
        True, description="Answer a call from the owner's identical earlier call, paying once "
        "(`--no-cache` and a request's `cache: false` turn it off).",
    )
    encoding: EncodingSettings = Field(
        default_factory=EncodingSettings, description="Video encoding of scenes and episodes."
    )
    placement: PlacementSettings = Field(
        default_factory=PlacementSettings, description="Where each part runs on a Ray cluster."
    )
    service: ServiceSettings = Field(
        default_factory=ServiceSettings, description="The HTTP service."
    )
    api_keys: SecretStr | None = Field(
        None, description="HTTP API keys, comma-separated; each key is one tenant."
    )
    api_keys_file: Path | None = Field(
        None, description="A file of HTTP API keys, one a line (`#` comments allowed)."
    )

    @field_validator("storage")
    @classmethod
    def _storage_url(cls, value: str) -> str:
        try:
            storage.check_url(value)
        except ValueError as err:
            raise PydanticCustomError("storage_url", str(err)) from None
        return value

    @model_validator(mode="after")
    def _state_beside_object_storage(self) -> Settings:
        # SQLite needs a local file: in a bucket it cannot be locked or written in place.
        if self.state_url is None and not storage.is_local(self.storage):
            raise PydanticCustomError(
                "state_url_needed",
                "with object storage, set SHOWRUNNER_STATE_URL too (postgresql+asyncpg://… on "
                "a cluster, or sqlite+aiosqlite:////a/local/file.db on one machine)",
            )
        return self

    @field_validator("state_url")
    @classmethod
    def _known_driver(cls, value: SecretStr | None) -> SecretStr | None:
        # The message names the schemes, never the value: it may hold a password.
        if value is not None and not value.get_secret_value().startswith(STATE_URL_SCHEMES):
            raise PydanticCustomError(
                "state_url_scheme", "must start with {schemes}",
                {"schemes": " or ".join(STATE_URL_SCHEMES)},
            )
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        toml_file = settings_cls.model_config.get("toml_file")
        if toml_file:
            sources += (TomlConfigSettingsSource(settings_cls, toml_file=toml_file),)
        return sources

    def provider(self, kind: ProviderKind) -> ProviderSettings:
        return getattr(self, kind.value)

    def open_storage(self, url: str | None = None) -> storage.Storage:
        """The storage (``url`` if given, as the CLI's ``--output``, else ``storage``), with
        the object store's options where it is one. A local folder is made absolute here, in
        the working directory of whoever opens it."""
        where = url if url is not None else self.storage
        options = self.s3.options() if where.startswith(("s3://", "s3a://")) else {}
        return storage.Storage(where, options, patience_s=self.storage_patience_s)

    def state_database_url(self, files: storage.Storage | None = None) -> str:
        """The state store's SQLAlchemy URL: ``state_url``, else a SQLite file in the storage
        folder (``files`` if given, as the CLI's ``--output``), as an absolute path so that
        every process finds the same file.

        The result may hold a password: hand it to the engine, never to a log.
        """
        if self.state_url is not None:
            return self.state_url.get_secret_value()
        files = files if files is not None else self.open_storage()
        if not files.local:
            raise SettingsError(f"storage {files.where()} is object storage: set "
                                "SHOWRUNNER_STATE_URL, SQLite cannot live in a bucket")
        return f"sqlite+aiosqlite:///{files.path(STATE_DB_FILE)}"


# ``SHOWRUNNER_*`` variables that something reads for itself, not as a setting, so the check below
# lets them pass (tests mark their own processes with other prefixes, e.g.
# ``TEST_RAY_JOB_CLUSTER``). A new one goes here, with the module that reads it, or every entry
# point refuses to start while it is set.
NOT_SETTINGS: frozenset[str] = frozenset({
    # pipelines.storage, on each node where media work runs: that node's own scratch folder,
    # set in the node's environment (a setting would be the driver's, the same for every node).
    storage.SCRATCH_VARIABLE,
})


# Settings that were renamed: a deployment still setting the old name is stopped (as for any
# unknown name) and told the new one, where the closest spelling would point somewhere else.
RENAMED: dict[str, str] = {"SHOWRUNNER_SERVICE__OUTPUT_DIR": "SHOWRUNNER_STORAGE"}


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from the environment and an optional TOML file; raises ``SettingsError``.

    Every entry point (the CLI, the service's replicas) comes through here, so the check of the
    environment's names is here rather than in each of them.
    """
    check_environment_names(os.environ)
    settings_cls = Settings
    if config_file is not None:
        path = Path(config_file)
        try:
            tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise SettingsError(f"cannot read config file {path}: {err.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise SettingsError(f"config file {path} is not valid TOML: {err}") from None
        settings_cls = type(
            "Settings", (Settings,), {"model_config": {**Settings.model_config, "toml_file": path}}
        )
    try:
        return settings_cls(**overrides)
    except ValidationError as err:
        raise SettingsError(describe_validation_error(err)) from None


def describe_validation_error(err: ValidationError) -> str:
    """One line naming every bad field and its value, with secrets masked."""
    parts = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"])
        value = "***" if _is_secret(field) else _short(e.get("input"))
        if not field:  # a rule across fields: its input is every setting, secrets too
            parts.append(f"invalid settings: {e['msg']}")
        elif e["type"] == "extra_forbidden":
            parts.append(f"unknown setting {field!r}")
        elif e["type"] == "missing":
            parts.append(f"missing setting {field!r}")
        else:
            parts.append(f"invalid setting {field} = {value}: {e['msg']}")
    return "; ".join(parts)


def _is_secret(field: str) -> bool:
    # state_url is a database URL, which may carry a password; s3's keys are credentials.
    return "api_key" in field or field == "state_url" or field.startswith(
        ("s3.access_key_id", "s3.secret_access_key"))


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_environment_names(names: Iterable[str]) -> None:
    """Raise ``SettingsError`` naming each ``SHOWRUNNER_`` variable that no setting reads.

    Only names are looked at, never values: a value may be a secret. Names are compared in upper
    case because pydantic-settings reads them in any case.
    """
    known = environment_names() | NOT_SETTINGS
    unknown = [n for n in names if n.upper().startswith(ENV_PREFIX) and n.upper() not in known]
    if unknown:
        raise SettingsError("; ".join(_describe_unknown(name) for name in sorted(unknown)))


def _describe_unknown(name: str) -> str:
    if name.upper() in RENAMED:
        return f"unknown setting {name} (renamed: use {RENAMED[name.upper()]})"
    closest = closest_environment_name(name)
    hint = (f"did you mean {closest}?" if closest is not None
            else "no setting has a similar name; `showrunner config --reference` lists them")
    return f"unknown setting {name} ({hint})"


def closest_environment_name(name: str) -> str | None:
    """The real setting a mistyped ``SHOWRUNNER_`` name most likely meant, if one is close.

    A name left out of its table (``SHOWRUNNER_PORT``) means the one field of that name, if only
    one table has it. Otherwise the most similar name wins; the shared prefix is left out of that
    comparison, as every name has it and it would make any two names look alike.
    """
    suffixes = {n.removeprefix(ENV_PREFIX): n for n in environment_names()}
    asked = name.upper().removeprefix(ENV_PREFIX)
    same_field = [n for s, n in suffixes.items() if s.rsplit(ENV_DELIMITER, 1)[-1] == asked]
    if len(same_field) == 1:
        return same_field[0]
    matches = difflib.get_close_matches(asked, sorted(suffixes), n=1, cutoff=0.6)
    return suffixes[matches[0]] if matches else None


class _EnvField(NamedTuple):
    """One environment variable the settings read, with what the reference shows for it."""

    name: str
    field: FieldInfo
    default: Any
    table: bool  # a nested model: its fields have their own names, or it is given whole as JSON


def _environment_fields() -> Iterator[_EnvField]:
    """Every variable the settings read, tables before their fields: the one source of names."""

    def walk(model: type[BaseModel], prefix: str, defaults: Any) -> Iterator[_EnvField]:
        for name, field in model.model_fields.items():
            env = f"{prefix}{name.upper()}"
            default = getattr(defaults, name, None) if defaults is not None else None
            annotation = field.annotation
            table = isinstance(annotation, type) and issubclass(annotation, BaseModel)
            yield _EnvField(env, field, default, table)
            if table:
                yield from walk(annotation, env + ENV_DELIMITER, default)

    yield from walk(Settings, ENV_PREFIX, Settings.model_construct(
        **{k: f.get_default(call_default_factory=True) for k, f in Settings.model_fields.items()}
    ))


@functools.cache
def environment_names() -> frozenset[str]:
    """Every ``SHOWRUNNER_`` name a setting is read from, in upper case.

    A table's own name (``SHOWRUNNER_LLM``, ``SHOWRUNNER_LLM__PRICES``) is one: pydantic-settings
    reads it as JSON of the whole table.
    """
    return frozenset(f.name for f in _environment_fields())


def settings_reference() -> str:
    """A Markdown table of every environment variable, its default and its description.

    ``docs/settings.md`` holds this text under its introduction; a test keeps the two equal.
    """
    rows = ["| environment variable | default | description |", "| --- | --- | --- |"]
    for env in _environment_fields():
        if env.table:
            continue
        shown = "(list, JSON)" if isinstance(env.default, list) else _default_text(env.default)
        rows.append(f"| `{env.name}` | {shown} | {env.field.description or ''} |")
    return "\n".join(rows) + "\n"


def _default_text(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"
