"""What every benchmark shares: the modelled provider, the prompts the prior strategies send
(the same Showrunner sends), a result row, Showrunner's real path on a workload, the JSON line."""

from __future__ import annotations

import socket
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import openai
import ray

from pipelines.composition import ComposedScene
from pipelines.models import EpisodeRequest, SceneDialogue
from pipelines.report import build_report
from pipelines.settings import LLMSettings, Settings
from pipelines.stages import StageCall, content_call, dialogue_call, outline_call
from pipelines.storage import Storage
from showrunner import launcher

REAL_LATENCY_S, REAL_JITTER_S, REAL_RPM, REAL_TPM = 8.0, 2.0, 500, 200_000


@dataclass
class Episode:
    """One episode being written by a prior strategy: the same prompts Showrunner sends."""

    request: EpisodeRequest
    outline: list[Any] = field(default_factory=list)
    contents: dict[int, Any] = field(default_factory=dict)
    dialogues: dict[int, SceneDialogue] = field(default_factory=dict)
    scene_videos: dict[int, ComposedScene] = field(default_factory=dict)  # media runs only

    def outline_call(self) -> StageCall[Any]:
        return outline_call(self.request, range(1, self.request.scenes + 1), [])

    def content_call(self, scene: int) -> StageCall[Any]:
        return content_call(self.request, self.outline[0].scenes, scene)

    def dialogue_call(self, scene: int, sees: list[int]) -> StageCall[Any]:
        earlier = {s: self.dialogues[s] for s in sees if s in self.dialogues}
        return dialogue_call(self.request, self.outline[0].scenes[scene - 1],
                             self.contents[scene], earlier)


async def ask(client: openai.AsyncOpenAI, call: StageCall[Any]) -> Any:
    completion = await client.chat.completions.create(
        model="bench", messages=call.messages,  # type: ignore[arg-type]
        response_format=call.response_format, max_tokens=call.max_tokens,  # type: ignore
    )
    return call.parse(completion.choices[0].message.content or "")


def ask_sync(client: openai.OpenAI, call: StageCall[Any]) -> Any:
    completion = client.chat.completions.create(
        model="bench", messages=call.messages,  # type: ignore[arg-type]
        response_format=call.response_format, max_tokens=call.max_tokens,  # type: ignore
    )
    return call.parse(completion.choices[0].message.content or "")


@dataclass
class Row:
    name: str
    continuity: str
    seconds: float
    server_429: int
    episodes_at_once: str
    prior: bool = True


def run_showrunner(requests: list[EpisodeRequest], base_url: str, rpm: float, tpm: float,
                   name: str, overrides: dict[str, Any] | None = None,
                   records: dict[str, Any] | None = None) -> tuple[float, dict[str, Any]]:
    """Showrunner's real path on ``requests``; ``overrides`` are more ``Settings`` fields (the
    media providers, the encoding). Returns the makespan and the run's report, whose CPU term
    uses the Ray cluster's CPUs. ``records``, when given, receives the episode records."""
    llm = LLMSettings(model="bench", rpm=rpm, tpm=tpm, max_inflight=256, timeout_s=60)
    fields: dict[str, Any] = {"llm": llm, "max_parallel_episodes": len(requests),
                              "max_parallel_scenes": 8, **(overrides or {})}
    settings = Settings(**fields)
    with tempfile.TemporaryDirectory() as out:
        run = launcher.start_run(settings, Storage(str(out)), base_url, prefix=f"bench-{name}")
        # Actors are long-lived in use; their one-off process start is not part of a run.
        run.wait_ready()
        started = time.perf_counter()
        ids = launcher.submit(run, requests)
        ray.get(run.coordinator.wait.remote(ids))
        elapsed = time.perf_counter() - started
        made = ray.get(run.coordinator.records_of.remote(ids))
        stats = {kind: ray.get(actor.stats.remote()) for kind, actor in run.providers.items()}
        report = build_report(made, stats, settings, cpus=ray.cluster_resources().get("CPU"))
        if records is not None:
            records.update({r.id: r for r in made})
        run.stop()
    failed = [e for e in report["episodes"] if e["status"] != "completed"]
    if failed:
        raise RuntimeError(f"Showrunner episodes failed: {failed[0]['error']}")
    return elapsed, report


def result_line(showrunner: Row, bound: float, best: Row | None, rows: list[Row]
                ) -> dict[str, Any]:
    """The JSON line every strategies benchmark ends with (text and media alike)."""
    return {
        "showrunner_s": round(showrunner.seconds, 3),
        "lower_bound_s": round(bound, 3),
        "showrunner_vs_bound": round(showrunner.seconds / bound, 3),
        "best_baseline": best.name if best else None,
        "best_baseline_s": round(best.seconds, 3) if best else None,
        "speedup_vs_best_baseline": round(best.seconds / showrunner.seconds, 3) if best else None,
        "showrunner_429": showrunner.server_429,
        "baseline_429": {f"{r.name} ({r.episodes_at_once})": r.server_429
                         for r in rows if r.prior},
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def free_port() -> int:
    """A loopback port free now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
