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
    return {"chat": EndpointConfig(latency_s=0.8, jitter_s=0.3)}


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
    endpoints: dict[str, EndpointConfig] = field(default_factory=default_endpoints)

    def endpoint(self, name: str) -> EndpointConfig:
        return self.endpoints[name]
