"""What the bundled server simulates: latency, limits and faults, per endpoint."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EndpointConfig:
    """One endpoint kind (chat now; speech, images and video join the same table)."""

    latency_s: float  # mean, before latency_scale
    jitter_s: float  # uniform +/- around the mean, before latency_scale
    rpm: float | None = None
    tpm: float | None = None


def default_endpoints() -> dict[str, EndpointConfig]:
    """Latencies like a real provider's, before ``latency_scale``."""
    return {
        "chat": EndpointConfig(latency_s=0.8, jitter_s=0.3),
        "speech": EndpointConfig(latency_s=1.5, jitter_s=0.5),
        "image": EndpointConfig(latency_s=6.0, jitter_s=2.0),
        "video": EndpointConfig(latency_s=0.5, jitter_s=0.2),  # the create call itself
    }


@dataclass(frozen=True)
class ServerConfig:
    seed: int = 0
    latency_scale: float = 1.0
    burst_s: float = 1.0
    fault_rate: float = 0.0
    hang_rate: float = 0.0
    malformed_rate: float = 0.0
    hang_s: float = 600.0
    quota_exhausted: bool = False
    require_key: str | None = None
    video_job_s: float = 60.0  # how long a clip job takes, before latency_scale
    video_job_jitter_s: float = 15.0
    video_max_jobs: int = 10  # jobs in progress at once; more is a 429
    video_fail_rate: float = 0.0  # share of jobs that end "failed"
    endpoints: dict[str, EndpointConfig] = field(default_factory=default_endpoints)

    def endpoint(self, name: str) -> EndpointConfig:
        return self.endpoints[name]
