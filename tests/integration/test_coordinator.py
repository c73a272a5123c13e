"""The coordinator with real gateways over loopback to the bundled server (no Ray here)."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from actors.coordinator import CANCEL_POLL_S, EpisodeCoordinator
from actors.gateway import ProviderGateway
from actors.metrics import NoMetrics
from actors.state_store import StateStore, StateStoreError
from local_server.process import LocalServer
from pipelines.engine import NodeState
from pipelines.episode_folder import SCRIPT_ARTIFACTS
from pipelines.episode_state import EpisodeRecord, EventKind
from pipelines.errors import BadRequest, ProviderUnavailable
from pipelines.files import umask
from pipelines.models import EpisodeRequest, EpisodeStatus, SceneState
from pipelines.planner import NodeId, content_id, dialogue_id, outline_id, speech_id
from pipelines.report import build_report
from pipelines.settings import ImageSettings, LLMSettings, ProviderKind, Settings, TTSSettings
from pipelines.storage import SCRATCH_FOLDER, Storage
from tests.support import small_disk, wait_for_async

Start = Callable[..., LocalServer]


def script(**fields: Any) -> EpisodeRequest:
    """A request that stops at the script: these tests are about scheduling, not media."""
    return EpisodeRequest(media=False, **fields)


OPEN: list[ProviderGateway] = []


@pytest.fixture(autouse=True)
async def _close_gateways() -> AsyncIterator[None]:
    yield
    while OPEN:
        await OPEN.pop().close()


def make(
    server: LocalServer,
    tmp_path: Path,
    *,
    wrap: Callable[[Any], Any] | None = None,
    attempts: int = 2,
    timeout_s: float = 10,
    state_url: str | None = None,
    **settings: Any,
) -> tuple[EpisodeCoordinator, ProviderGateway]:
    """A coordinator on real gateways to ``server``: text, and speech and images for media."""
    llm = LLMSettings(model="test", rpm=None, tpm=None, max_attempts=attempts,
                      timeout_s=timeout_s)
    tts = TTSSettings(rpm=None, timeout_s=timeout_s, max_attempts=max(attempts, 5))
    image = ImageSettings(rpm=None, timeout_s=timeout_s, max_attempts=max(attempts, 5))
    gateways = {
        kind: ProviderGateway(kind, conf, local_base_url=server.base_url,
                              storage=Storage(str(tmp_path)))
        for kind, conf in ((ProviderKind.LLM, llm), (ProviderKind.TTS, tts),
                           (ProviderKind.IMAGE, image))
    }
    OPEN.extend(gateways.values())
    providers: dict[ProviderKind, Any] = dict(gateways)
    if wrap:
        providers[ProviderKind.LLM] = wrap(gateways[ProviderKind.LLM])
    coordinator = EpisodeCoordinator(
        Settings(llm=llm, tts=tts, image=image, **settings), providers,
        storage=Storage(str(tmp_path)), state_url=state_url,
    )
    return coordinator, gateways[ProviderKind.LLM]


def interval(record: EpisodeRecord, node: NodeId) -> tuple[float, float]:
    n = record.nodes[node]
    assert n.started_s is not None and n.finished_s is not None
    return n.started_s, n.finished_s


class FailFor:
    """Wraps the real gateway; refuses calls whose prompt mentions one scene (a fault on cue)."""

    def __init__(self, gateway: ProviderGateway, marker: str, episode: str | None = None):
        self.gateway, self.marker, self.episode = gateway, marker, episode
        self.refused = 0

    async def chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        prompt = messages[-1]["content"]
        targeted = self.episode is None or kwargs.get("episode_id") == self.episode
        if self.marker in prompt and targeted:
            self.refused += 1
            raise ProviderUnavailable("injected fault", provider="llm", status=503)
        return await self.gateway.chat(messages, **kwargs)


async def test_chain_keeps_continuity_yet_pipelines(local_server: Start, tmp_path: Path) -> None:
    server = local_server(latency_scale=0.05)
    coordinator, _ = make(server, tmp_path)
    eid = await coordinator.submit(
        script(premise="A heist at a bakery.", scenes=5, lines_per_scene=3, seed=7)
    )
    [view] = await coordinator.wait([eid])
    assert view.status is EpisodeStatus.COMPLETED and view.scenes == [SceneState.DONE] * 5
    record = await coordinator.episode(eid)
    for k in range(2, 6):  # each dialogue starts only after the previous one finished
        assert interval(record, dialogue_id(k))[0] >= interval(record, dialogue_id(k - 1))[1]
    # ... while later scenes' content was written alongside, not after, the first dialogue.
    assert interval(record, content_id(5))[0] < interval(record, dialogue_id(1))[1]
    assert [len(record.dialogue(k).lines) for k in range(1, 6)] == [3] * 5
    data = json.loads((tmp_path / eid / "script.json").read_text())
    assert [s["number"] for s in data["scenes"]] == [1, 2, 3, 4, 5]
    screenplay = (tmp_path / eid / "script.md").read_text()
    assert screenplay.startswith("# ") and "## Scene 5" in screenplay
    assert record.events[-1].kind is EventKind.COMPLETED and record.events[-1].percent == 100.0


async def test_max_parallel_scenes_one_is_sequential(local_server: Start, tmp_path: Path) -> None:
    server = local_server(latency_scale=0.02)
    coordinator, _ = make(server, tmp_path, max_parallel_scenes=1)
    request = script(premise="Ghost ship.", scenes=3, continuity="none")
    eid = await coordinator.submit(request)
    await coordinator.wait([eid])
    record = await coordinator.episode(eid)
    spans = sorted(interval(record, nid) for nid in record.nodes)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))


async def test_episodes_wait_by_priority_and_never_exceed_the_cap(
    local_server: Start, tmp_path: Path
) -> None:
    server = local_server(latency_scale=0.03)
    coordinator, _ = make(server, tmp_path, max_parallel_episodes=2)
    low = await coordinator.submit(script(premise="low", scenes=2, priority=0))
    mid = await coordinator.submit(script(premise="mid", scenes=2, priority=1))
    late_high = await coordinator.submit(script(premise="high", scenes=2, priority=5))
    late_low = await coordinator.submit(script(premise="low2", scenes=2, priority=0))
    await coordinator.wait()
    records = {i: await coordinator.episode(i) for i in (low, mid, late_high, late_low)}
    starts = sorted((r.started_at, i) for i, r in records.items())
    # low and mid took the two slots at once; high jumps ahead of the earlier-queued low2.
    assert [i for _, i in starts[2:]] == [late_high, late_low]
    for moment, _ in starts:
        running = [r for r in records.values() if r.started_at <= moment < r.finished_at]
        assert len(running) <= 2


async def test_a_failed_scene_fails_its_episode_only(local_server: Start, tmp_path: Path) -> None:
    server = local_server(latency_scale=0.02)
    wrapped: list[FailFor] = []

    def wrap(gateway: ProviderGateway) -> FailFor:
        wrapped.append(FailFor(gateway, "Write scene 2:", episode="doomed"))
        return wrapped[0]

    coordinator, _ = make(server, tmp_path, wrap=wrap)
    await coordinator.submit(script(premise="p", scenes=4), episode_id="doomed")
    await coordinator.submit(script(premise="q", scenes=4), episode_id="fine")
    doomed, fine = await coordinator.wait(["doomed", "fine"])
    assert doomed.status is EpisodeStatus.FAILED and "content:2" in doomed.error
    assert "injected fault" in doomed.error
    assert fine.status is EpisodeStatus.COMPLETED
    # What it paid for is kept: the script so far, the failed scene marked as not written.
    kept = json.loads((tmp_path / "doomed" / "script.json").read_text())
    assert [s["content"] is None for s in kept["scenes"]][1] is True
    assert not list((tmp_path / "doomed").glob(".*"))  # and nothing half-written


async def test_skip_mode_completes_without_the_failed_scene(
    local_server: Start, tmp_path: Path
) -> None:
    server = local_server(latency_scale=0.02)
    coordinator, _ = make(server, tmp_path, wrap=lambda g: FailFor(g, "Write scene 2:"))
    eid = await coordinator.submit(script(premise="p", scenes=4, on_scene_failure="skip"))
    [view] = await coordinator.wait([eid])
    assert view.status is EpisodeStatus.COMPLETED
    assert [s.value for s in view.scenes] == ["done", "failed", "done", "done"]
    assert "completed without scene(s) [2]" in view.error
    record = await coordinator.episode(eid)
    assert record.engine.node_state(dialogue_id(2)) is NodeState.SKIPPED
    assert record.dialogue(2) is None and record.dialogue(3) is not None


async def test_an_invalid_answer_is_retried_once_with_the_error(
    local_server: Start, tmp_path: Path
) -> None:
    server = local_server()

    class FirstAnswerBroken:
        def __init__(self, gateway: ProviderGateway) -> None:
            self.gateway, self.prompts = gateway, []

        async def chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
            self.prompts.append(messages)
            result = await self.gateway.chat(messages, **kwargs)
            if len(self.prompts) == 1:
                return type(result)(**{**result.__dict__, "text": '{"title": 3}'})
            return result

    holder: list[FirstAnswerBroken] = []
    coordinator, _ = make(
        server, tmp_path, wrap=lambda g: holder.append(FirstAnswerBroken(g)) or holder[0]
    )
    eid = await coordinator.submit(script(premise="p", scenes=1))
    [view] = await coordinator.wait([eid])
    assert view.status is EpisodeStatus.COMPLETED
    retry = holder[0].prompts[1]
    assert "That answer was invalid" in retry[-1]["content"]
    assert (await coordinator.episode(eid)).nodes[outline_id(1)].calls == 2


async def test_cancel_cuts_off_the_calls_in_flight_and_keeps_what_finished(
    local_server: Start, tmp_path: Path
) -> None:
    server = local_server(latency_scale=2.0)  # slow calls, so some are in flight when cancelled
    coordinator, gateway = make(server, tmp_path)
    eid = await coordinator.submit(script(premise="p", scenes=6, continuity="none"))
    record = await coordinator.episode(eid)
    await wait_for_async(lambda: outline_id(1) in record.engine.done, 30, "the outline")
    await wait_for_async(lambda: server.stats()["chat"]["inflight"], 30,
                         "content calls in flight")
    assert await coordinator.cancel(eid) is EpisodeStatus.CANCELLED
    assert outline_id(1) in record.engine.done and record.outline_drafts()
    assert record.engine.running == set()  # nothing half-kept
    assert gateway.deployments[0].limiter.inflight == 0
    assert await coordinator.cancel(eid) is EpisodeStatus.CANCELLED  # idempotent
    await wait_for_async(lambda: not server.stats()["chat"]["inflight"], 5,
                         "the HTTP requests to be aborted")
    assert server.stats()["chat"]["left"] >= 1  # cut off unanswered, not waited for


async def test_report_explains_the_speedup(local_server: Start, tmp_path: Path) -> None:
    server = local_server(latency_scale=0.05)
    coordinator, gateway = make(server, tmp_path)
    ids = [await coordinator.submit(script(premise=f"p{i}", scenes=3)) for i in range(3)]
    await coordinator.wait(ids)
    records = [await coordinator.episode(i) for i in ids]
    report = build_report(records, {ProviderKind.LLM: gateway.snapshot()}, coordinator.settings)
    totals = report["totals"]
    assert totals["speedup"] == pytest.approx(totals["sequential_s"] / totals["wall_s"], rel=1e-2)
    assert totals["speedup"] > 1.5  # three episodes and their scenes overlapped
    assert 0 < totals["lower_bound_s"] <= totals["wall_s"]
    assert totals["bottleneck"] == "critical path"
    assert totals["providers"]["llm"]["calls"] == sum(
        n.calls for r in records for n in r.nodes.values()
    )
    assert {e["status"] for e in report["episodes"]} == {"completed"}


async def test_a_bug_fails_its_episode_not_the_coordinator(
    local_server: Start, tmp_path: Path
) -> None:
    server = local_server(latency_scale=0.02)

    class Broken:
        def __init__(self, gateway: ProviderGateway) -> None:
            self.gateway = gateway

        async def chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
            if kwargs["episode_id"] == "buggy":
                return object()  # not a ChatResult: the coordinator's own code will trip
            return await self.gateway.chat(messages, **kwargs)

    coordinator, _ = make(server, tmp_path, wrap=Broken)
    await coordinator.submit(script(premise="p", scenes=2), episode_id="buggy")
    await coordinator.submit(script(premise="q", scenes=2), episode_id="fine")
    buggy, fine = await coordinator.wait(["buggy", "fine"])
    assert buggy.status is EpisodeStatus.FAILED and "internal error" in buggy.error
    assert fine.status is EpisodeStatus.COMPLETED
    record = await coordinator.episode("buggy")
    assert record.engine.running == set()


async def test_an_episode_becomes_one_mp4_with_speech_and_subtitles(
    local_server: Start, tmp_path: Path
) -> None:
    import re
    import subprocess

    import imageio_ffmpeg

    from pipelines.composition import GAP_S, wav_seconds

    server = local_server(latency_scale=0.02)
    coordinator, _ = make(server, tmp_path)
    request = EpisodeRequest(
        premise="A radio host hears the past.", scenes=2, lines_per_scene=2, seed=3
    )
    eid = await coordinator.submit(request)
    [view] = await coordinator.wait([eid])
    assert view.status is EpisodeStatus.COMPLETED, view.error
    assert {a.value for a in view.artifacts} == {
        "script.json", "script.md", "episode.mp4", "episode.srt", "poster.png"}
    files = {"video": tmp_path / eid / "episode.mp4", "subtitles": tmp_path / eid / "episode.srt",
             "poster": tmp_path / eid / "poster.png"}
    lines = sorted((tmp_path / eid / "media").glob("scene*/line*.wav"))
    assert len(lines) == 4
    expected = sum(wav_seconds(str(p)) for p in lines) + GAP_S * len(lines)
    info = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", files["video"]],
        capture_output=True,
        text=True,
    ).stderr
    h, m, sec = re.search(r"Duration: (\d+):(\d+):([\d.]+)", info).groups()
    assert "Video: h264" in info and "Audio: aac" in info
    assert int(h) * 3600 + int(m) * 60 + float(sec) == pytest.approx(expected, rel=0.10)
    assert Path(files["subtitles"]).read_text().count(" --> ") == 4
    assert Path(files["poster"]).is_file()
    record = await coordinator.episode(eid)
    # Speech started as soon as its scene's dialogue existed, before later scenes were done.
    assert record.nodes[speech_id(1, 1)].started_s < record.nodes[dialogue_id(2)].finished_s
    assert record.cost_usd > 0 and record.stage_busy_s()["speech"] > 0
    # Every file has the mode the umask gives: scripts, speech and pictures were 0600.
    made = [p for p in (tmp_path / eid).rglob("*") if p.is_file()]
    assert {stat.S_IMODE(p.stat().st_mode) for p in made} == {0o666 & ~umask()}


async def test_changes_give_each_changed_episode_its_newest_view(
    local_server: Start, tmp_path: Path
) -> None:
    """What Serve replicas follow: every change is seen, views never go back, owners kept."""
    server = local_server(latency_scale=0.02)
    coordinator, _ = make(server, tmp_path)
    assert await coordinator.changes(0, timeout_s=0.05) == (0, [])  # nothing yet: waits, empty
    waiting = asyncio.create_task(coordinator.changes(0, timeout_s=10))
    a = await coordinator.submit(script(premise="a", scenes=2), owner="t1")
    since, views = await waiting
    [first] = views
    assert since >= 1 and first.id == a and first.owner == "t1"
    assert first.status in (EpisodeStatus.QUEUED, EpisodeStatus.RUNNING)
    b = await coordinator.submit(script(premise="b", scenes=2), owner="t2")
    latest: dict[str, Any] = {}
    while not all(i in latest and latest[i].status is EpisodeStatus.COMPLETED for i in (a, b)):
        since, views = await coordinator.changes(since, timeout_s=10)
        for view in views:
            assert view.last_event_id >= (latest[view.id].last_event_id if view.id in latest
                                          else 0)
            latest[view.id] = view
    assert latest[b].owner == "t2" and latest[a].percent == 100.0
    assert latest[a].last_event_id == (await coordinator.episode(a)).events[-1].seq
    assert (await coordinator.view(a)).id == a and await coordinator.view("nope") is None


async def test_an_episode_cancelled_as_it_is_admitted_frees_its_slot(
    local_server: Start, tmp_path: Path
) -> None:
    """Cancelled before its first step ran (admitted in the same turn, as Ctrl-C's cancels
    arrive together): the slot it was given goes to the next episode."""
    server = local_server(latency_scale=0.02)
    coordinator, _ = make(server, tmp_path, max_parallel_episodes=1)
    first = await coordinator.submit(script(premise="p", scenes=1))
    assert await coordinator.cancel(first) is EpisodeStatus.CANCELLED
    second = await coordinator.submit(script(premise="q", scenes=1))
    [view] = await asyncio.wait_for(coordinator.wait([second]), 30)
    assert view.status is EpisodeStatus.COMPLETED


async def test_broken_answers_cost_a_retry_not_the_episode(
    local_server: Start, tmp_path: Path
) -> None:
    """A provider that sometimes answers 200 with a broken body: every such answer is retried,
    whatever the call (chat, speech, picture), and the episode is made of real files."""
    import wave

    server = local_server(latency_scale=0.02, malformed_rate=0.2, seed=11)
    coordinator, _ = make(server, tmp_path, attempts=6)
    eid = await coordinator.submit(EpisodeRequest(premise="A storm at sea.", scenes=2,
                                                  lines_per_scene=4, seed=5))
    [view] = await coordinator.wait([eid])
    assert view.status is EpisodeStatus.COMPLETED, view.error
    for kind, endpoint in ((ProviderKind.LLM, "chat"), (ProviderKind.TTS, "speech")):
        broken = server.stats()[endpoint]["faults"]["malformed"]
        counted = coordinator.providers[kind].snapshot()["errors"].get("MalformedResponse", 0)
        assert broken > 0 and counted == broken, kind
    for line in (tmp_path / eid / "media").glob("scene*/line*.wav"):
        with wave.open(str(line)) as audio:
            assert audio.getnframes() > 0
    assert (tmp_path / eid / "episode.mp4").read_bytes()[4:8] == b"ftyp"


async def test_every_episode_completes_through_errors_hangs_and_broken_answers(
    local_server: Start, tmp_path: Path
) -> None:
    """The bundled server's fault flags at 10% errors, 5% hangs and 5% broken bodies, media on."""
    server = local_server(latency_scale=0.02, fault_rate=0.10, hang_rate=0.05,
                          malformed_rate=0.05, hang_s=60, seed=23)
    coordinator, _ = make(server, tmp_path, attempts=8, timeout_s=3)
    ids = [await coordinator.submit(EpisodeRequest(premise=f"A storm at sea, part {n}.",
                                                   scenes=3, lines_per_scene=3, seed=n))
           for n in range(3)]
    views = await coordinator.wait(ids)
    assert [v.status for v in views] == [EpisodeStatus.COMPLETED] * 3, [v.error for v in views]
    faults = {endpoint: server.stats()[endpoint]["faults"] for endpoint in ("chat", "speech")}
    assert all(sum(f.values()) > 0 for f in faults.values()), faults  # they did happen
    for eid in ids:
        assert (tmp_path / eid / "episode.mp4").read_bytes()[4:8] == b"ftyp"


PAGE = 4096


def _on_disk_file(path: Path) -> int:
    return -(-path.stat().st_size // PAGE) * PAGE


def _on_disk(folder: Path) -> int:
    """What a folder takes on a tmpfs: whole pages, for its files and its folders."""
    return sum(_on_disk_file(p) if p.is_file() else PAGE for p in folder.rglob("*"))


async def test_a_full_disk_at_the_stitch_keeps_the_script_and_says_so(
    local_server: Start, tmp_path: Path
) -> None:
    """It used to fail at 100% with every scene composed, as an internal error, the script
    lost. A first run measures the episode; the second runs on a real filesystem that holds
    everything but half the episode's video."""
    server = local_server(latency_scale=0.02)
    request = EpisodeRequest(premise="A radio host hears the past.", scenes=2,
                             lines_per_scene=2, seed=3)
    coordinator, _ = make(server, tmp_path / "measured")
    first = await coordinator.submit(request)
    await coordinator.wait([first])
    folder = tmp_path / "measured" / first
    stitched = {folder / a for a in ("episode.mp4", "episode.srt", "poster.png")}
    before = _on_disk(folder) - sum(_on_disk_file(p) for p in stitched)
    video = (folder / "episode.mp4").stat().st_size
    with small_disk(tmp_path / "small", before + video // 2) as disk:
        coordinator, _ = make(server, disk)
        eid = await coordinator.submit(request)
        [view] = await coordinator.wait([eid])
        assert view.status is EpisodeStatus.FAILED
        assert "stitch:0" in view.error and "No space left on device" in view.error
        assert "internal error" not in view.error
        assert len(json.loads((disk / eid / "script.json").read_text())["scenes"]) == 2
        assert len(list((disk / eid).glob("media/scene*/scene.mp4"))) == 2  # kept
        assert "No space left" in {m.what: m.why for m in view.missing}["episode.mp4"]
        assert not any((disk / SCRATCH_FOLDER).glob("*"))


class RefuseImage:
    """Wraps the image gateway; refuses one scene's picture for good (a fatal answer)."""

    def __init__(self, gateway: Any, scene: int) -> None:
        self.gateway, self.scene = gateway, scene

    async def image(self, prompt: str, **kwargs: Any) -> Any:
        out = kwargs["out"]
        if f"scene{self.scene:03d}" in out:
            # Late, once the whole script is written: what a failed episode keeps is then known.
            script = self.gateway.storage.path(out.split("/")[0]) / "script.json"
            await wait_for_async(script.exists, 30, "the script")
            raise BadRequest("injected refusal", provider="image", status=400)
        return await self.gateway.image(prompt, **kwargs)


async def test_a_failed_or_cancelled_episode_keeps_what_it_paid_for(
    local_server: Start, tmp_path: Path
) -> None:
    """A failed episode used to leave its paid script nowhere on disk."""
    server = local_server(latency_scale=0.02)
    coordinator, _ = make(server, tmp_path)
    images = coordinator.providers[ProviderKind.IMAGE]
    coordinator.providers[ProviderKind.IMAGE] = RefuseImage(images, scene=2)
    request = EpisodeRequest(premise="A radio host hears the past.", scenes=2, lines_per_scene=2,
                             seed=3)
    failed = await coordinator.submit(request)
    [view] = await coordinator.wait([failed])
    assert view.status is EpisodeStatus.FAILED and "image:2" in view.error
    folder = tmp_path / failed
    script_data = json.loads((folder / "script.json").read_text())
    assert all(len(s["dialogue"]) == 2 for s in script_data["scenes"])  # the whole script
    assert (folder / "script.md").is_file() and set(view.artifacts) >= set(SCRIPT_ARTIFACTS)
    assert len(list(folder.glob("media/scene001/line*.wav"))) == 2  # and the speech it made
    missing = {m.what: m.why for m in view.missing}
    assert "injected refusal" in missing["scene 2"] and "image:2" in missing["scene 2"]
    assert missing["scene 1"].startswith("not made: 1 node(s) failed: image:2")  # halted
    assert "image:2" in missing["episode.mp4"]
    entry = build_report([await coordinator.episode(failed)], {}, coordinator.settings,
                         storage=Storage(str(tmp_path)))["episodes"][0]
    assert entry["missing"] == [m.model_dump() for m in view.missing]

    # Cancelled once its script is written (a speech call in flight): the script is kept.
    coordinator.providers[ProviderKind.IMAGE] = images
    cancelled = await coordinator.submit(request.model_copy(update={"seed": 4}))

    async def script_written() -> bool:
        return (tmp_path / cancelled / "script.json").exists()

    await wait_for_async(script_written, 30, "the script to be written before the media")
    await coordinator.cancel(cancelled)
    [view] = await coordinator.wait([cancelled])
    assert view.status is EpisodeStatus.CANCELLED
    assert json.loads((tmp_path / cancelled / "script.json").read_text())["scenes"][1]["dialogue"]
    assert "episode.mp4" in {m.what for m in view.missing}


# -- with a state store ------------------------------------------------------------------------


class Counting:
    """Wraps the real gateway; counts the calls it passes on, by the prompt's first line."""

    def __init__(self, gateway: Any) -> None:
        self.gateway, self.calls = gateway, []

    async def chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        self.calls.append(messages[-1]["content"].splitlines()[0])
        return await self.gateway.chat(messages, **kwargs)


async def test_a_failed_episode_runs_again_from_its_done_nodes(
    local_server: Start, tmp_path: Path
) -> None:
    server = local_server(latency_scale=0.02)
    url = f"sqlite+aiosqlite:///{tmp_path / 'showrunner.db'}"
    request = script(premise="A tide clock stops.", scenes=3)
    first, _ = make(server, tmp_path, state_url=url,
                    wrap=lambda g: FailFor(g, "Write scene 2:"))
    [made] = await first.submit_many([request], ids=["ep-again"])
    [view] = await first.wait([made.id])
    assert view.status is EpisodeStatus.FAILED
    done_before = (await first.episode("ep-again")).engine.done
    assert done_before and content_id(2) not in done_before
    await first.store.close()

    counting: list[Counting] = []
    second, _ = make(server, tmp_path, state_url=url,
                     wrap=lambda g: counting.append(Counting(g)) or counting[0])
    with pytest.raises(ValueError, match="must be new"):
        await second.submit_many([request], ids=["ep-again"])
    with pytest.raises(ValueError, match="another request"):
        await second.submit_many([script(premise="Other.", scenes=3)], ids=["ep-again"],
                                 resume=True)
    [again] = await second.submit_many([request], ids=["ep-again"], resume=True)
    [view] = await second.wait([again.id])
    assert view.status is EpisodeStatus.COMPLETED, view.error
    record = await second.episode("ep-again")
    assert done_before <= record.engine.done
    # Only what was not done before was asked for.
    assert len(counting[0].calls) == len(record.engine.done) - len(done_before)
    [same] = await second.submit_many([request], ids=["ep-again"], resume=True)
    assert same.status is EpisodeStatus.COMPLETED and len(counting[0].calls) == len(
        record.engine.done) - len(done_before)  # completed: returned as it is
    await second.store.close()


async def test_a_cancel_asked_through_the_store_stops_the_episode(
    local_server: Start, tmp_path: Path
) -> None:
    server = local_server(latency_scale=0.3)
    url = f"sqlite+aiosqlite:///{tmp_path / 'showrunner.db'}"
    coordinator, _ = make(server, tmp_path, state_url=url)
    [long, short] = await coordinator.submit_many(
        [script(premise="A long night.", scenes=30), script(premise="A short day.", scenes=1)])
    other = await StateStore.open(url)  # as ``showrunner cancel`` does, from another process
    try:
        assert await other.request_cancel(long.id) in (EpisodeStatus.QUEUED,
                                                       EpisodeStatus.RUNNING)
        assert await other.request_cancel("nobody") is None
        # (bounded, not timed: a watcher that never looked would hang here)
        [view] = await asyncio.wait_for(coordinator.wait([long.id]), 60)
        assert view.status is EpisodeStatus.CANCELLED
        [view] = await coordinator.wait([short.id])
        assert view.status is EpisodeStatus.COMPLETED
        assert await other.statuses([long.id]) == {long.id: EpisodeStatus.CANCELLED}
        assert await other.request_cancel(short.id) is EpisodeStatus.COMPLETED
        # Run again, it is not cancelled again by the cancel its earlier run was asked.
        request = (await coordinator.episode(long.id)).request
        await coordinator.submit_many([request], ids=[long.id], resume=True)
        await asyncio.sleep(3 * CANCEL_POLL_S)
        assert (await coordinator.view(long.id)).status is EpisodeStatus.RUNNING
        assert await other.cancels_requested() == {}
        await coordinator.cancel(long.id)
    finally:
        await other.close()
        await coordinator.store.close()


async def test_finished_episodes_leave_memory_and_are_served_from_the_store(
    local_server: Start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("actors.coordinator.KEEP_FINISHED", 2)
    server = local_server(latency_scale=0.0)
    url = f"sqlite+aiosqlite:///{tmp_path / 'showrunner.db'}"
    coordinator, _ = make(server, tmp_path, state_url=url, max_parallel_episodes=5)
    made = await coordinator.submit_many([script(premise=f"Pier {n}.", scenes=1)
                                          for n in range(5)])
    ids = [v.id for v in made]
    views = await coordinator.wait(ids)
    assert [v.status for v in views] == [EpisodeStatus.COMPLETED] * 5
    # The newest finished only, once the store has the others' endings.
    await wait_for_async(lambda: len(coordinator.records) == 2, 10, "the oldest let go")
    let_go = [i for i in ids if i not in coordinator.records]
    assert len(let_go) == 3
    for episode_id in let_go:  # still answered, whole, from the store
        view = await coordinator.view(episode_id)
        assert view is not None and view.status is EpisodeStatus.COMPLETED
        events = await coordinator.events(episode_id)
        assert events[-1].kind is EventKind.COMPLETED
    assert await coordinator.statuses(let_go) == [EpisodeStatus.COMPLETED] * 3
    await coordinator.store.close()


def slow_commits(monkeypatch: pytest.MonkeyPatch, delay_s: float) -> None:
    """Every commit of the state store takes ``delay_s`` longer, as on a busy database."""
    commit = StateStore._commit

    async def slow_commit(self: StateStore, *args: Any) -> None:
        await asyncio.sleep(delay_s)
        await commit(self, *args)

    monkeypatch.setattr(StateStore, "_commit", slow_commit)


async def test_an_episode_let_go_before_its_ending_is_committed_is_still_waited_for(
    local_server: Start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With slow commits, an episode let go of memory as it finished used to be read back from
    the store as still running, and ``wait`` waited for it forever (CI timed out on it)."""
    monkeypatch.setattr("actors.coordinator.KEEP_FINISHED", 0)
    slow_commits(monkeypatch, 0.3)
    server = local_server(latency_scale=0.0)
    url = f"sqlite+aiosqlite:///{tmp_path / 'showrunner.db'}"
    coordinator, _ = make(server, tmp_path, state_url=url, max_parallel_episodes=3)
    made = await coordinator.submit_many([script(premise=f"Dock {n}.", scenes=1)
                                          for n in range(3)])
    views = await asyncio.wait_for(coordinator.wait([v.id for v in made]), 60)
    assert [v.status for v in views] == [EpisodeStatus.COMPLETED] * 3
    await wait_for_async(lambda: not coordinator.records, 10, "all let go once stored")
    await coordinator.store.close()


async def test_events_are_given_out_only_once_stored(
    local_server: Start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event given to a stream before it is stored could be lost in a crash, and the
    restarted coordinator gives its number to another event, which a client resuming after
    that number never sees (CI lost 'taken up again' so). Events emitted while an earlier
    commit was awaited used to be given out with it."""
    slow_commits(monkeypatch, 0.2)
    server = local_server(latency_scale=0.1)
    url = f"sqlite+aiosqlite:///{tmp_path / 'showrunner.db'}"
    coordinator, _ = make(server, tmp_path, state_url=url)
    [made] = await coordinator.submit_many([script(premise="A slow ledger.", scenes=4)])
    seen = 0
    reader = await StateStore.open(url)
    try:
        while True:
            given = await coordinator.events(made.id, after=seen, timeout_s=5)
            stored = await reader.record(made.id)
            assert stored is not None
            kept = {(e.seq, e.kind) for e in stored.events}
            unstored = [(e.seq, e.kind.value) for e in given if (e.seq, e.kind) not in kept]
            assert not unstored, f"given out before stored: {unstored}"
            if given:
                seen = given[-1].seq
                if given[-1].kind.ends_episode:
                    break
    finally:
        await reader.close()
        await coordinator.store.close()


async def test_a_coordinator_whose_store_was_taken_over_stops_its_calls(
    local_server: Start, tmp_path: Path, postgres_url: str
) -> None:
    """A coordinator cut off from PostgreSQL while another took its store over used to go on
    paying for its episodes' calls, which the other, taking the episodes up, paid for again."""
    server = local_server(latency_scale=0.5)
    first, llm = make(server, tmp_path / "a", state_url=postgres_url)
    await first.submit(script(premise="A ferry that never docks.", scenes=8))
    await wait_for_async(lambda: llm.deployments[0].limiter.inflight, 30, "a call to go out")
    # The connection holding its lock is cut, as a network partition would cut it, and
    # another coordinator (restarted elsewhere) takes the store and its episodes over.
    engine = create_async_engine(postgres_url)
    async with engine.begin() as conn:
        await conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_locks "
                                "WHERE locktype = 'advisory' AND granted"))
    await engine.dispose()
    second, _ = make(server, tmp_path / "b", state_url=postgres_url)
    await second.ready()

    def stood_down() -> bool:
        return first.store.superseded is not None and llm.deployments[0].limiter.inflight == 0

    await wait_for_async(stood_down, 30, "the first coordinator to stop its calls")
    with pytest.raises(StateStoreError, match="took it over"):
        await first.submit(script(premise="Another."))
    try:
        [view] = await second.wait()
        assert view.status is EpisodeStatus.COMPLETED  # the second one finished the episode
    finally:
        await first.close()
        await second.close()


class Gauges(NoMetrics):
    """The coordinator's gauges as last reported."""

    def __init__(self) -> None:
        self.last: tuple[int, int, int] | None = None

    def episodes(self, queued: int, running: int, nodes_in_flight: int) -> None:
        self.last = (queued, running, nodes_in_flight)


async def test_the_gauges_fall_back_to_nothing_running_once_every_episode_ended(
    local_server: Start, tmp_path: Path
) -> None:
    """The running gauge used to stay at 1 after the last episode: it was reported while the
    episode still counted as running, and not again after."""
    coordinator, _ = make(local_server(), tmp_path)
    coordinator.metrics = gauges = Gauges()
    ids = [await coordinator.submit(script(premise=f"p{n}", scenes=2)) for n in range(2)]
    await coordinator.wait(ids)
    assert gauges.last == (0, 0, 0)
