"""Cancelling an episode in each of its stages, on the product's real path (the coordinator actor,
the provider actors, the media Ray tasks and their ffmpeg): within a second nothing of the
episode runs, and nothing of it comes back.

One run (a local server, the provider actors, the coordinator) serves every stage; each stage
gets its own episode, cancelled as soon as a node of that stage has started. The local server's
latencies keep provider calls in flight for a second or more; compositions and stitches take
under a second, so the episode aimed at one of those gets a slow encoder: the bundled ffmpeg,
reading its input at a twentieth of real time (``SLOW_FFMPEG``), picked by the episode's id.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import pytest
import ray

import actors.remote
from local_server.process import LocalServer
from pipelines.episode_state import Event, EventKind
from pipelines.models import EpisodeRequest, EpisodeStatus
from pipelines.planner import NodeId, NodeKind
from pipelines.settings import (
    EncodingSettings,
    ImageSettings,
    LLMSettings,
    ProviderKind,
    Settings,
    TTSSettings,
    VideoSettings,
)
from pipelines.storage import SCRATCH_FOLDER, Storage
from showrunner import launcher
from tests.support import cmdline_of, processes, stays, wait_for

pytestmark = pytest.mark.usefixtures("ray_session")

PREFIX = "test-cancel-stages"
# A user is promised that a second after the cancel nothing runs; on a quiet machine it is a few
# tens of milliseconds. The test allows for a shared, loaded one (where just reading every
# actor's stats can take a second) rather than time the machine.
CANCELLED_WITHIN_S = 5.0
STAYS_S = 1.0  # ... and nothing comes back in the second after that
# Every latency below is ten times what is meant: the server's video job lengths vary by +/- 15 s
# before scaling, and only the scale brings that down (to +/- 1.5 s).
SCALE = 0.1
SERVER = {
    "latency_scale": SCALE, "seed": 5,
    "llm_latency": 10, "llm_jitter": 0,  # 1 s a call: outline, content, dialogue
    "tts_latency": 15, "tts_jitter": 0,  # 1.5 s a line
    "image_latency": 15, "image_jitter": 0,  # 1.5 s a picture
    "video_latency": 1, "video_jitter": 0, "video_job_s": 0,  # a job's create; its length
    "video_render_size": "320x180", "video_render_fps": 12,
}
# A shell script in the place of ffmpeg (``IMAGEIO_FFMPEG_EXE``): a composition or a stitch of an
# episode whose id says ``slow-compose`` or ``slow-stitch`` reads its first input at 1/20 of real
# time, so a one-second scene takes twenty; everything else is the bundled ffmpeg as it is.
# ``exec``: the process is ffmpeg itself, killed and reaped as the product's own.
SLOW_FFMPEG = """\
#!/bin/sh
case "$*" in *.compose-*) stage=compose ;; *.stitch-*) stage=stitch ;; *) stage=none ;; esac
case "$*" in *"slow-$stage"*) exec '{ffmpeg}' -readrate 0.05 "$@" ;; esac
exec '{ffmpeg}' "$@"
"""
# (content and dialogue are language-model calls as the outline is: the same path)
STAGES = [NodeKind.OUTLINE, NodeKind.SPEECH,
          NodeKind.IMAGE, NodeKind.CLIP, NodeKind.COMPOSE, NodeKind.STITCH]


@dataclass
class Stages:
    run: launcher.Run
    server: LocalServer
    out: Path

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return ray.get(getattr(self.run.coordinator, method).remote(*args, **kwargs), timeout=30)

    def provider_stats(self) -> dict[ProviderKind, dict[str, Any]]:
        return {kind: ray.get(actor.stats.remote(), timeout=30)
                for kind, actor in self.run.providers.items()}


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stages]:
    root = tmp_path_factory.mktemp("cancel-stages")
    encoder = root / "slow-ffmpeg"
    encoder.write_text(SLOW_FFMPEG.format(ffmpeg=imageio_ffmpeg.get_ffmpeg_exe()))
    encoder.chmod(encoder.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    with LocalServer(**SERVER) as server:
        settings = Settings(
            llm=LLMSettings(model="m", rpm=None, tpm=None),
            tts=TTSSettings(rpm=None), image=ImageSettings(rpm=None),
            video=VideoSettings(base_url=server.base_url, rpm=None, poll_initial_s=1.5),
            encoding=EncodingSettings(width=320, height=180, fps=12, x264_preset="ultrafast"),
        )
        options = actors.remote._options

        def with_encoder(name: str, detached: bool, *rest: Any) -> dict[str, Any]:
            # The coordinator's media tasks inherit its runtime environment, so they (and only
            # they, of this run) find the slow encoder; the product's factory is used as it is.
            made = options(name, detached, *rest)
            if name == f"{PREFIX}:coordinator":
                made["runtime_env"] = {"env_vars": {"IMAGEIO_FFMPEG_EXE": str(encoder)}}
            return made

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(actors.remote, "_options", with_encoder)
            run = launcher.start_run(settings, Storage(str(root / "out")), server.base_url,
                                     prefix=PREFIX)
        run.wait_ready()
        try:
            yield Stages(run, server, root / "out")
        finally:
            run.stop()
            _end_encoders(root / "out")


@pytest.fixture
def episode(request: pytest.FixtureRequest, stages: Stages) -> Iterator[str]:
    """The id of the stage's episode (the slow encoder's cue, for a composition and a stitch).
    An ffmpeg of it that outlived the test is ended after it: it would hold one of the session's
    two CPUs for up to a minute and a half, and slow every test after it."""
    stage = request.node.callspec.params["stage"]
    yield f"slow-{stage}"
    _end_encoders(stages.out / f"slow-{stage}")


def _end_encoders(folder: Path) -> None:
    for pid in _encoders(folder):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not _encoders(folder), 10, f"the ffmpeg processes of {folder} to end")


def _encoders(folder: Path) -> list[int]:
    """Pids of the ffmpeg processes working on files of one episode (its inputs are in its
    folder, its output in a scratch folder named after it)."""
    mark = folder.name.encode()
    return processes(lambda cmdline: b"ffmpeg" in cmdline and mark in cmdline)


def _partial_files(folder: Path) -> list[str]:
    """What a finished write never leaves: the episode's scratch folders
    (``.scratch/.compose-<its id>…``, ``.stitch-…``), temporary files (``.name.*.tmp``),
    files of no bytes."""
    scratch = [str(p) for p in (folder.parent / SCRATCH_FOLDER).glob(f".*-{folder.name}_*")]
    if not folder.exists():
        return scratch
    return scratch + sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                            if p.name.startswith(".") or (p.is_file() and p.stat().st_size == 0))


def _still_running(stages: Stages, episode: str) -> list[str]:
    """Everything of the episode that is not over, said in words; [] when nothing is."""
    left = []
    [view] = stages.call("views", [episode])
    if view.status is not EpisodeStatus.CANCELLED:
        left.append(f"the coordinator says {view.status}")
    record = stages.call("episode", episode)
    if record.engine.running:
        left.append(f"nodes running: {sorted(map(str, record.engine.running))}")
    for kind, snapshot in stages.provider_stats().items():
        busy = sum(d["inflight"] + d["waiting"] for d in snapshot["deployments"])
        if busy:
            left.append(f"{busy} call(s) in the {kind} provider actor")
    for endpoint, counters in stages.server.stats().items():
        if counters["inflight"]:
            left.append(f"{counters['inflight']} request(s) at the server's {endpoint}")
    folder = stages.out / episode
    for pid in _encoders(folder):
        command = cmdline_of(pid).replace(b"\0", b" ").decode(errors="replace")
        left.append(f"ffmpeg {pid} ({command[:200]})")
    if partial := _partial_files(folder):
        left.append(f"partial files: {partial}")
    return left


def _calls_made(stages: Stages) -> dict[str, int]:
    """Calls each provider actor started (polls of a clip job included) and requests each of the
    server's endpoints received: a call still going on after the cancel moves them."""
    made = {str(kind): s["calls"] for kind, s in stages.provider_stats().items()}
    made.update({endpoint: s["arrived"] for endpoint, s in stages.server.stats().items()})
    return made


@pytest.mark.parametrize("stage", STAGES, ids=str)
def test_a_cancel_in_any_stage_leaves_nothing_of_the_episode_running(
    stage: NodeKind, stages: Stages, episode: str
) -> None:
    request = EpisodeRequest(premise=f"A night ferry, stopped in its {stage}.", scenes=1,
                             lines_per_scene=1, continuity="none")
    stages.call("submit_many", [request], ids=[episode])
    seen: list[Event] = []

    def started() -> NodeId | None:
        after = seen[-1].seq if seen else 0
        seen.extend(stages.call("events", episode, after=after, timeout_s=1.0))
        assert not any(e.kind in (EventKind.COMPLETED, EventKind.FAILED) for e in seen), (
            [(e.kind, e.node, e.message) for e in seen])
        return next((e.node for e in seen if e.kind is EventKind.NODE_STARTED
                     and e.node is not None and e.node.kind is stage), None)

    node = wait_for(started, 60, f"a {stage} node of {episode} to start", interval=0)
    folder = stages.out / episode
    if stage in (NodeKind.COMPOSE, NodeKind.STITCH):  # the cancel is to meet its ffmpeg
        wait_for(lambda: _encoders(folder), 30, f"the {stage}'s ffmpeg to start")

    assert stages.call("cancel", episode) is EpisodeStatus.CANCELLED
    record = stages.call("episode", episode)
    assert node not in record.engine.done and record.nodes[node].finished_s is None, (
        f"{node} had finished before the cancel: the stage was not what was cancelled")

    wait_for(lambda: not _still_running(stages, episode), CANCELLED_WITHIN_S,
             lambda: f"nothing of {episode} to run: {_still_running(stages, episode)}",
             interval=0.02)
    before = _calls_made(stages)
    stays(lambda: not _still_running(stages, episode) and _calls_made(stages) == before,
          STAYS_S, lambda: f"nothing of {episode} runs ({_still_running(stages, episode)}) "
                           f"and no call is made ({before} then {_calls_made(stages)})")
    events = stages.call("events", episode)
    assert events[-1].kind is EventKind.CANCELLED
    assert [e.kind for e in events].count(EventKind.CANCELLED) == 1
