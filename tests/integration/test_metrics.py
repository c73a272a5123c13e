"""Showrunner's metrics reach the node's Prometheus endpoint, say what ``stats()`` says, and
fill every panel of the Grafana dashboard when a real Prometheus scrapes them.

Metrics are pushed to the endpoint periodically (once a second in the test session), so each
check scrapes until the figures arrive. The counters are cumulative for the
whole session, so samples are picked by a label only this test's calls carry: the deployment
(the local server's own port) or the driver's worker id.

The module makes one run of real traffic (``workload``), which its tests share: a second run
would cost as much again. Prometheus starts before it and scrapes it as it happens.
"""

from __future__ import annotations

import contextlib
import json
import re
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import ray

from actors import metrics
from actors.gateway import deployment_label
from actors.ray_metrics import RayCoordinatorMetrics
from actors.remote import coordinator_actor, provider_actor
from local_server.process import LocalServer
from pipelines.episode_view import EpisodeView
from pipelines.errors import QuotaExhausted
from pipelines.models import EpisodeRequest, EpisodeStatus
from pipelines.planner import NodeKind
from pipelines.settings import (
    LLMSettings,
    ProviderKind,
    ProviderSettings,
    Settings,
    VideoSettings,
)
from pipelines.storage import Storage
from tests.integration.prometheus import (
    Prometheus,
    draws,
    fill_in,
    installed,
    missing,
    opening_choices,
    panels_of,
    scraping,
)
from tests.support import wait_for

pytestmark = pytest.mark.usefixtures("ray_session")
MESSAGES = [{"role": "user", "content": "Two rivals share a taxi in the rain."}]
DEADLINE_S = 20.0
LLM_ACTOR = "test:metrics-llm"
DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "showrunner.json"
Sample = tuple[str, dict[str, str], float]
_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(url: str) -> list[Sample]:
    """Every sample of the Prometheus text at ``url``: name, labels, value."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            name, labels, value = match.groups()
            samples.append((name, dict(_LABEL.findall(labels or "")), float(value)))
    return samples


def total(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(v for n, tags, v in samples
               if n == name and all(tags.get(k) == want for k, want in labels.items()))


def scrape_until(url: str, read: Callable[[list[Sample]], Any], expected: Any) -> Any:
    """``read`` of the latest scrape, once it equals ``expected``."""
    observed: list[Any] = [None]

    def arrived() -> bool:
        observed[0] = read(scrape(url))
        return bool(observed[0] == expected)

    wait_for(arrived, DEADLINE_S, lambda: f"{expected}; the endpoint shows {observed[0]}",
             interval=0.2)
    return observed[0]


def provider_figures(samples: list[Sample], provider: str, deployment: str) -> dict[str, Any]:
    """What the endpoint says about one deployment, in ``stats()``'s terms."""
    tags = {"provider": provider, "deployment": deployment}
    return {
        "ok": total(samples, "ray_showrunner_provider_calls_total", outcome="ok", **tags),
        "failed": total(samples, "ray_showrunner_provider_calls_total", outcome="error", **tags),
        "rate_limited": total(samples, "ray_showrunner_provider_rate_limited_total", **tags),
        "retries": total(samples, "ray_showrunner_provider_retries_total", **tags),
        "tokens_in": total(samples, "ray_showrunner_provider_tokens_total",
                           direction="prompt", **tags),
        "tokens_out": total(samples, "ray_showrunner_provider_tokens_total",
                            direction="completion", **tags),
        "cost_usd": total(samples, "ray_showrunner_provider_cost_usd_total", **tags),
        "latency_count": total(samples, "ray_showrunner_provider_latency_seconds_count", **tags),
        "attempts": total(samples, "ray_showrunner_provider_limiter_wait_seconds_count", **tags),
        "job_s": total(samples, "ray_showrunner_provider_job_seconds_total", **tags),
        # (no deployment: a cached answer reached none)
        "cache_hits": total(samples, "ray_showrunner_provider_cache_hits_total",
                            provider=provider),
        "saved_usd": total(samples, "ray_showrunner_provider_saved_usd_total", provider=provider),
    }


CACHE_FIGURES = ("cache_hits", "saved_usd")  # per provider, so every test's actors' together


def stats_figures(stats: dict[str, Any], before: dict[str, float]) -> Any:
    """The same figures from ``stats()`` (whose cost is rounded to a millionth of a dollar);
    ``before``: the provider's cache figures before the test, which other tests' actors of the
    same provider counted."""
    return pytest.approx({
        **{k: stats[k] for k in ("ok", "failed", "rate_limited", "retries", "tokens_in",
                                 "tokens_out", "cost_usd", "job_s")},
        **{k: stats[k] + before[k] for k in CACHE_FIGURES},
        "latency_count": stats["latency"]["count"],
        "attempts": stats["ok"] + sum(stats["errors"].values()),  # each waited for a permit
    }, rel=0, abs=1e-6)


def settings(**fields: object) -> ProviderSettings:
    return ProviderSettings(**{"model": "test-model", **fields})


@pytest.fixture(scope="module")
def scraper(metrics_url: str, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Prometheus | None]:
    """A real Prometheus scraping the node's endpoint from before the workload to after the
    dashboard test, as it would scrape a cluster. None where it is not installed: only the
    dashboard test needs it (``prometheus``), and the other tests go on without."""
    if not installed():
        yield None
        return
    with scraping(metrics_url, tmp_path_factory.mktemp("prometheus")) as started:
        yield started


@pytest.fixture(scope="module")
def prometheus(scraper: Prometheus | None) -> Prometheus:
    """The Prometheus, for a test that needs it: asked for before ``workload``, it skips (fails
    under CI=true) before the run is made for nothing."""
    if scraper is None:
        missing()
    assert scraper is not None
    return scraper


@dataclass
class Workload:
    """What the module's one run of real traffic left: the provider actors it called (each
    with its provider and the base URL of its server), their providers' cache figures before
    it, and the episodes the coordinator ran."""

    actors: list[tuple[Any, str, str]]
    cache_before: dict[str, dict[str, float]]
    episodes: list[EpisodeView]


def episode(coordinator: Any, scenes: int) -> str:
    """Queue an episode of ``scenes`` without media (no storage needed, its calls all the
    LLM's), and return its id."""
    [queued] = ray.get(coordinator.submit_many.remote([EpisodeRequest(
        premise="Two rivals share a taxi in the rain.", scenes=scenes, lines_per_scene=1,
        continuity="none", media=False, cache=False)]))
    return str(queued.id)


def wait_until_scraped(prometheus: Prometheus, coordinator: Any) -> None:
    """Until Prometheus holds a sample of every stage series of the coordinator's process."""
    worker = ray.get(coordinator.__ray_call__.remote(
        lambda _: ray.get_runtime_context().get_worker_id()))
    count = f'ray_showrunner_stage_seconds_count{{WorkerId="{worker}"}}'
    stages = {kind.value for kind in (NodeKind.OUTLINE, NodeKind.CONTENT, NodeKind.DIALOGUE)}
    wait_for(lambda: {s["metric"]["stage"] for s in prometheus.query(count)} >= stages,
             DEADLINE_S, f"Prometheus to scrape {count}", interval=0.2)


@pytest.fixture(scope="module")
def workload(metrics_url: str, scraper: Prometheus | None,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workload]:
    """One run, shared by the module's tests (it takes seconds; a second would double them):
    provider actors against bundled servers, 429s included, and a real coordinator running
    episodes through the LLM actor, as Prometheus scrapes."""
    tmp_path = tmp_path_factory.mktemp("workload")
    with contextlib.ExitStack() as servers:
        def serve(**flags: Any) -> LocalServer:
            return servers.enter_context(LocalServer(**{"latency_scale": 0.0, **flags}))

        server = serve(llm_rpm=300)  # 5 a second: 20 at once earn 429s on any machine
        broke = serve(quota_exhausted=True)  # every call fails at once: outcome "error"
        # Clip jobs of about half a second, small renders: polled while they run.
        clips = serve(latency_scale=0.01, video_render_size="320x180", video_render_fps=8)
        prices = {"input_per_1m_tokens": 2.0, "output_per_1m_tokens": 8.0, "per_image": 0.04}
        llm = provider_actor(ProviderKind.LLM, settings(rpm=60_000, prices=prices),  # above
                             local_base_url=server.base_url, name=LLM_ACTOR)  # the server's
        broke_llm = provider_actor(ProviderKind.LLM, settings(), local_base_url=broke.base_url,
                                   name="test:metrics-broke")
        files = Storage(str(tmp_path))  # where the media calls' files go, by key
        image = provider_actor(ProviderKind.IMAGE, settings(prices=prices),
                               local_base_url=server.base_url, name="test:metrics-image",
                               state_url=f"sqlite+aiosqlite:///{tmp_path / 'state.db'}",
                               storage=files)
        video = provider_actor(ProviderKind.VIDEO,
                               VideoSettings(rpm=None, poll_initial_s=0.05, poll_max_s=0.1),
                               local_base_url=clips.base_url, name="test:metrics-video",
                               storage=files)
        # The coordinator's LLM is the actor above (got by name): its episodes' calls share
        # the server's limit with the calls below, and are counted with them.
        coordinator = coordinator_actor(
            Settings(llm=LLMSettings(model="test-model", prices=prices)),
            {ProviderKind.LLM: LLM_ACTOR}, name="test:metrics-coordinator")
        actors = [(llm, "llm", server.base_url), (image, "image", server.base_url),
                  (broke_llm, "llm", broke.base_url), (video, "video", clips.base_url)]
        try:
            kinds = ("llm", "image", "video")
            before = {k: {f: total(scrape(metrics_url), f"ray_showrunner_provider_{f}_total",
                                   provider=k) for f in CACHE_FIGURES} for k in kinds}
            first = episode(coordinator, scenes=2)
            # The actors' calls at once: a run's length is the LLM's, paced by its server.
            ray.get([*(llm.chat.remote(MESSAGES, episode_id=f"e{i % 3}") for i in range(20)),
                     video.clip.remote("a ferry in fog", out="clip.mp4"),
                     *(image.image.remote("a taxi in the rain", out=f"{i}.png", size="256x256")
                       for i in range(2))])
            for again in range(2):  # the second is answered by the cache: counted, and saved
                ray.get(image.image.remote("a gull", out=f"gull{again}.png", size="256x256",
                                           owner="t", cache=True))
            with pytest.raises(QuotaExhausted):
                ray.get(broke_llm.chat.remote(MESSAGES))
            ray.get(coordinator.wait.remote([first]))
            if scraper is not None:
                # A rate (and so a stage's quantile) needs a series to grow between two of
                # its samples: one that first appears already holding all its episode's
                # nodes never does. Once Prometheus has the stages, a second episode adds
                # to them.
                wait_until_scraped(scraper, coordinator)
            second = episode(coordinator, scenes=1)
            episodes = ray.get(coordinator.wait.remote([first, second]))
            yield Workload(actors, before, episodes)
        finally:
            for actor in (coordinator, *(a for a, _, _ in actors)):
                ray.kill(actor)


def test_provider_metrics_match_the_actors_stats(workload: Workload, metrics_url: str) -> None:
    for actor, kind, url in workload.actors:
        expected = stats_figures(ray.get(actor.stats.remote()), workload.cache_before[kind])
        observed = scrape_until(
            metrics_url, lambda s, k=kind, u=url: provider_figures(s, k, deployment_label(u)),
            expected)
        assert observed == expected, kind
    llm, image, _, video = (actor for actor, _, _ in workload.actors)
    llm_stats = ray.get(llm.stats.remote())  # the episodes' calls went through it too
    assert llm_stats["ok"] > 20 and llm_stats["rate_limited"] > 0 and llm_stats["cost_usd"] > 0
    image_stats = ray.get(image.stats.remote())
    assert image_stats["cache_hits"] == 1 and image_stats["saved_usd"] == 0.04
    assert ray.get(video.stats.remote())["job_s"] > 0  # the job was seen running
    assert_exported_as_specified(metrics_url, [s for s in metrics.SPECS if "provider" in s.tags])


def test_every_dashboard_query_returns_data_from_a_real_prometheus(
    prometheus: Prometheus, workload: Workload, metrics_url: str,
) -> None:
    """Each panel's PromQL, its Grafana variables filled in as Grafana would fill them, asked of
    the Prometheus that scraped the run: each must draw something (a series with a number, not
    only NaN, which Grafana draws as nothing)."""
    assert {e.status for e in workload.episodes} == {EpisodeStatus.COMPLETED}  # (stages shown)
    dashboard = json.loads(DASHBOARD.read_text())
    values = opening_choices(dashboard, prometheus)
    sessions = {tags["SessionName"] for _, tags, _ in scrape(metrics_url) if "SessionName" in tags}
    assert values["SessionName"] in sessions  # the run's session, as a user would pick it
    queries = [(panel["title"], target["refId"], fill_in(target["expr"], values))
               for panel in panels_of(dashboard) for target in panel["targets"]]
    assert queries
    blank: list[str] = []

    def every_query_draws() -> bool:  # Prometheus may not have scraped the run's end yet
        blank[:] = [f"{title} ({ref}): {expr}" for title, ref, expr in queries
                    if not draws(prometheus.query(expr))]
        return not blank

    wait_for(every_query_draws, DEADLINE_S,
             lambda: "every panel's query to return data; these return none:\n"
                     + "\n".join(blank) + f"\n(Prometheus's scrapes: {prometheus.scrapes()})",
             interval=0.5)


def test_coordinator_gauges_and_stages_reach_the_endpoint(metrics_url: str) -> None:
    me = ray.get_runtime_context().get_worker_id()  # the driver records them, under its id
    sink = RayCoordinatorMetrics()  # what the factory gives a coordinator actor
    sink.episodes(queued=3, running=2, nodes_in_flight=7)
    for seconds in (0.5, 1.5):
        sink.stage(NodeKind.DIALOGUE, seconds)
    # Ray exports a histogram's buckets exactly, but rebuilds its _sum from bucket midpoints.
    expected = {
        ("ray_showrunner_episodes_queued", ""): 3, ("ray_showrunner_episodes_running", ""): 2,
        ("ray_showrunner_nodes_in_flight", ""): 7, ("ray_showrunner_stage_seconds_count", ""): 2,
        ("ray_showrunner_stage_seconds_bucket", "0.25"): 0,
        ("ray_showrunner_stage_seconds_bucket", "0.5"): 1,
        ("ray_showrunner_stage_seconds_bucket", "1.0"): 1,
        ("ray_showrunner_stage_seconds_bucket", "2.5"): 2,
    }

    def read(samples: list[Sample]) -> dict[tuple[str, str], float]:
        def tags(name: str, le: str) -> dict[str, str]:
            stage = {"stage": "dialogue"} if name.startswith("ray_showrunner_stage") else {}
            return {"WorkerId": me, **stage, **({"le": le} if le else {})}

        return {(name, le): total(samples, name, **tags(name, le)) for name, le in expected}

    assert scrape_until(metrics_url, read, expected) == expected
    stages = {tags.get("stage") for name, tags, _ in scrape(metrics_url)
              if name == "ray_showrunner_stage_seconds_bucket" and tags.get("WorkerId") == me}
    assert "dialogue" in stages
    coordinator = [s for s in metrics.SPECS if "provider" not in s.tags]
    assert_exported_as_specified(metrics_url, coordinator)


def assert_exported_as_specified(url: str, specs: list[metrics.Spec]) -> None:
    """Ray's names for these metrics are the ones ``Spec.exported`` (and so the dashboard, see
    tests/unit/test_metrics.py) assumes."""
    names = {name for name, _, _ in scrape(url)}
    assert [n for spec in specs for n in spec.exported() if n not in names] == []
