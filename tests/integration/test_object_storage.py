"""Object storage, for real: every artifact through S3 (moto's S3 server on loopback, which
stands in for S3 in the tests only), over HTTP with fsspec's s3fs, as on a cluster.

Media work fetches its inputs into its own node's scratch and uploads what it makes; here each
step runs with another scratch folder, as on another node, so nothing can lean on a shared path.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import imageio_ffmpeg
import pytest
import requests
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from actors.coordinator import EpisodeCoordinator
from actors.gateway import ProviderGateway
from local_server.images import scene_card
from local_server.process import LocalServer
from local_server.speech import speaker as get_speaker
from pipelines.composition import Line, compose_scene, pan_clip, stitch
from pipelines.episode_folder import Artifact, EpisodeFolder
from pipelines.errors import StorageError, storage_error
from pipelines.models import EpisodeRequest, EpisodeStatus
from pipelines.settings import EncodingSettings, LLMSettings, ProviderKind, Settings
from pipelines.storage import PASSING, SCRATCH_VARIABLE, Storage
from showrunner import launcher
from showrunner.stored_files import stored_file
from tests import s3
from tests.s3 import Cuttable, S3Server
from tests.support import wait_for_async

PREVIEW = EncodingSettings(width=320, height=180, fps=8, x264_preset="ultrafast")


def test_files_round_trip_through_s3(s3_storage: Storage, tmp_path: Path) -> None:
    storage = s3_storage
    storage.write("ep/script.md", "# Title\n")
    assert storage.read("ep/script.md") == b"# Title\n"
    assert storage.exists("ep/script.md") and not storage.exists("ep/none.md")
    assert storage.size("ep/script.md") == 8
    with storage.open("ep/script.md") as handle:  # ranges are read from where they start
        handle.seek(2)
        assert handle.read(5) == b"Title"
    storage.copy("ep/script.md", "cache/ab/copy")
    assert storage.read("cache/ab/copy") == b"# Title\n"
    made = tmp_path / "made.bin"
    made.write_bytes(b"x" * 100_000)
    storage.upload(made, "ep/media/clip.mp4")
    fetched = storage.fetch("ep/media/clip.mp4", tmp_path)
    assert fetched != made and fetched.read_bytes() == made.read_bytes()
    signed = storage.sign("ep/script.md", 60)
    assert signed is not None and requests.get(signed, timeout=10).content == b"# Title\n"
    storage.remove("ep")
    assert not storage.exists("ep/script.md") and storage.exists("cache/ab/copy")
    with pytest.raises(FileNotFoundError):
        storage.read("ep/script.md")


def test_a_bucket_out_of_reach_is_an_error_naming_the_object_never_the_keys(
        s3_server: S3Server) -> None:
    secret = "s3cr3t-never-shown"
    storage = Storage("s3://no-such-bucket-here/x", {**s3_server.options(), "secret": secret})
    with pytest.raises(FileNotFoundError) as caught:
        storage.write("ep/script.md", "x")
    assert caught.value.errno not in PASSING  # an answer that will not change: not waited out
    message = str(caught.value)
    assert "no-such-bucket-here" in message and secret not in message
    assert secret not in repr(storage)


# Each of a storage's operations on objects, and what it leaves to check: (do, check).
OPERATIONS: dict[str, tuple[Callable[[Storage, Path], object], Callable[[Storage], None]]] = {
    "write": (lambda s, _: s.write("ep/b.txt", "while cut"),
              lambda s: _equal(s.read("ep/b.txt"), b"while cut")),
    "read": (lambda s, _: _equal(s.read("ep/a.txt"), b"before"), lambda s: None),
    "upload": (lambda s, tmp: s.upload(_made(tmp), "ep/up.bin"),
               lambda s: _equal(s.read("ep/up.bin"), b"u" * 70_000)),
    "fetch": (lambda s, tmp: _equal(s.fetch("ep/a.txt", tmp).read_bytes(), b"before"),
              lambda s: None),
    "copy": (lambda s, _: s.copy("ep/a.txt", "ep/copied.txt"),
             lambda s: _equal(s.read("ep/copied.txt"), b"before")),
    "exists": (lambda s, _: _equal(s.exists("ep/a.txt"), True), lambda s: None),
}


def _equal(seen: object, expected: object) -> None:
    assert seen == expected


def _made(folder: Path) -> Path:
    made = folder / "made.bin"
    made.write_bytes(b"u" * 70_000)
    return made


def test_the_line_carries_again_after_a_cut_that_caught_a_connection_being_made(
        s3_storage: Storage, cuttable: Cuttable, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test line itself: a cut while a connection was being carried used to end the line's
    accepting for good, so once mended, requests hung until their read timeout (the
    mid-episode test failed so: 'Read timeout … still failing after 60 s of trying')."""
    connect = socket.create_connection

    def cut_meanwhile(*args: object, **kwargs: object) -> socket.socket:
        made = connect(*args, **kwargs)  # type: ignore[arg-type]
        cuttable.cut(turning_away=True)
        return made

    monkeypatch.setattr(s3.socket, "create_connection", cut_meanwhile)
    with pytest.raises(requests.ConnectionError):
        requests.get(cuttable.endpoint_url, timeout=10)
    monkeypatch.undo()
    cuttable.mend()
    Storage(s3_storage.url, cuttable.options(), patience_s=0).write("ep/carried.txt", "again")
    assert s3_storage.read("ep/carried.txt") == b"again"


@pytest.mark.parametrize("operation", OPERATIONS)
def test_a_bucket_cut_off_for_a_moment_costs_a_wait_not_the_file(
        operation: str, s3_storage: Storage, cuttable: Cuttable, tmp_path: Path) -> None:
    """The line to the bucket fails (the store's client is not let retry: its own retries
    would hide ours), and is back a second later: every operation waits it out."""
    do, check = OPERATIONS[operation]
    storage = cuttable.bucket(s3_storage)
    storage.write("ep/a.txt", "before")
    cuttable.cut()
    mend = threading.Timer(1.0, cuttable.mend)
    mend.start()
    try:
        do(storage, tmp_path)
    finally:
        mend.join()
    check(s3_storage)


def test_a_bucket_cut_off_past_the_patience_fails_naming_the_object_and_the_wait(
        s3_storage: Storage, cuttable: Cuttable) -> None:
    storage = Storage(s3_storage.url, cuttable.options(), patience_s=1.5)
    cuttable.cut()
    with pytest.raises(OSError) as caught:
        storage.write("ep/c.txt", "x")
    message = str(caught.value)
    assert f"{s3_storage.url}/ep/c.txt" in message, message
    assert "still failing after 1.5 s of trying" in message, message
    failure = storage_error(caught.value)  # the node's failure, as the executor makes it
    assert isinstance(failure, StorageError) and not failure.rerun
    assert "ep/c.txt" in str(failure)


@pytest.fixture
def node_scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Path]:
    """Switch this process to another node's scratch folder."""
    def on(node: str) -> Path:
        folder = tmp_path / f"scratch-{node}"
        monkeypatch.setenv(SCRATCH_VARIABLE, str(folder))
        return folder

    return on


def test_media_made_on_different_nodes_meets_only_in_the_bucket(
        s3_storage: Storage, node_scratch: Callable[[str], Path]) -> None:
    storage, folder = s3_storage, EpisodeFolder("ep")
    speaker = get_speaker()
    lines = []
    for n, (who, text, voice) in enumerate([("Ada", "The lamp is out.", "nova"),
                                            ("Ben", "Then light it.", "onyx")], start=1):
        storage.write(folder.speech(1, n), speaker.wav(text, voice))
        lines.append(Line(who, text, folder.speech(1, n)))
    storage.write(folder.image(1), scene_card("A gallery in the wind.", "1024x1024"))
    scratches = [node_scratch("a")]
    pan_clip(storage, folder.image(1), folder.clip(1), 2, PREVIEW)
    scratches.append(node_scratch("b"))
    scene = compose_scene(storage, lines, folder.clip(1), folder.scene_video(1), PREVIEW)
    scratches.append(node_scratch("c"))
    made = stitch(storage, folder, [(1, scene)], poster_scene=1)
    assert set(made.artifacts) == {Artifact.VIDEO, Artifact.SUBTITLES, Artifact.POSTER}
    video = storage.read(folder.artifact(Artifact.VIDEO))
    assert video[4:8] == b"ftyp"
    assert storage.read(folder.artifact(Artifact.POSTER))[:4] == b"\x89PNG"
    info = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i",
                           storage.sign(folder.artifact(Artifact.VIDEO), 60)],
                          capture_output=True, text=True).stderr
    assert "Video: h264" in info and "Audio: aac" in info and "320x180" in info
    # Every node's scratch was used and given back.
    assert all(s.is_dir() and not any(s.iterdir()) for s in scratches)


@pytest.fixture
def ranged(s3_storage: Storage) -> Iterator[tuple[TestClient, bytes]]:
    """An app serving one file of the bucket the way the service does."""
    body = bytes(range(256)) * 40_000  # 10 MB: several chunks
    s3_storage.write("ep/episode.mp4", body)
    app = FastAPI()

    @app.api_route("/file", methods=["GET", "HEAD"])
    async def file(request: Request):  # type: ignore[no-untyped-def]
        return await stored_file(s3_storage, "ep/episode.mp4", "video/mp4",
                                 request.headers.get("range"), head=request.method == "HEAD")

    with TestClient(app) as client:
        yield client, body


def test_a_file_in_the_bucket_is_served_whole_or_by_range(
        ranged: tuple[TestClient, bytes]) -> None:
    client, body = ranged
    whole = client.get("/file")
    assert whole.status_code == 200 and whole.content == body
    assert whole.headers["accept-ranges"] == "bytes"
    part = client.get("/file", headers={"Range": "bytes=5000000-5000099"})
    assert part.status_code == 206 and part.content == body[5_000_000:5_000_100]
    assert part.headers["content-range"] == f"bytes 5000000-5000099/{len(body)}"
    tail = client.get("/file", headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == body[-10:]
    past = client.get("/file", headers={"Range": f"bytes={len(body)}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(body)}"
    head = client.head("/file")
    assert head.status_code == 200 and head.headers["content-length"] == str(len(body))


def paid(server: LocalServer) -> int:
    """Calls the bundled server answered (and so billed), every endpoint."""
    return sum(int(v["accepted"]) for v in server.stats().values()
               if isinstance(v, dict) and "accepted" in v)


def media_run(local_server: Callable[..., LocalServer], storage: Storage, tmp_path: Path,
              prefix: str) -> tuple[LocalServer, launcher.Run]:
    """A bundled server making small media, and a run whose files go to ``storage``."""
    server = local_server(latency_scale=0.02, video_render_size="320x180", video_render_fps=8)
    settings = Settings(llm=LLMSettings(model="m", rpm=None, tpm=None), encoding=PREVIEW,
                        state_url=f"sqlite+aiosqlite:///{tmp_path / 'state.db'}",
                        storage=storage.url)
    return server, launcher.start_run(settings, storage, server.base_url, prefix=prefix)


@pytest.mark.usefixtures("ray_session")
async def test_an_episode_with_media_is_made_in_the_bucket_and_asked_again_paid_once(
        local_server: Callable[..., LocalServer], s3_storage: Storage, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The real path: provider actors write speech and pictures to the bucket, composition
    tasks fetch and upload, the coordinator writes the scripts; the call cache keeps its files
    there too, so the same episode asked again is copied within the bucket, paid for once."""
    monkeypatch.chdir(tmp_path)  # a relative folder written anywhere would show up here
    request = EpisodeRequest(premise="A ferry in fog.", scenes=2, lines_per_scene=2, seed=5)
    server, run = media_run(local_server, s3_storage, tmp_path, "test-s3")
    try:
        views = []
        for episode_id in ("first", "again"):  # the same calls: the request's seed is set
            await run.coordinator.submit_many.remote([request], ids=[episode_id])
            views += await run.coordinator.wait.remote([episode_id])
            if episode_id == "first":
                paid_once = paid(server)
    finally:
        run.stop()
    assert [v.status for v in views] == [EpisodeStatus.COMPLETED] * 2
    assert paid(server) == paid_once  # asked again: answered from the cache, paid for nothing
    for view in views:
        folder = EpisodeFolder(view.id)
        for artifact in Artifact:
            assert s3_storage.exists(folder.artifact(artifact)), (view.id, artifact)
        assert s3_storage.read(folder.artifact(Artifact.VIDEO))[4:8] == b"ftyp"
        assert s3_storage.exists(folder.speech(2, 2)) and s3_storage.exists(folder.image(1))
    assert s3_storage.fs.find(f"{s3_storage.url.removeprefix('s3://')}/cache")  # cached media
    # Nothing went to a local folder but the state store's files.
    assert all(p.name.startswith("state.db") for p in tmp_path.iterdir())


@pytest.mark.usefixtures("ray_session")
async def test_a_bucket_cut_off_mid_episode_costs_a_wait_not_the_episode_nor_a_payment(
        local_server: Callable[..., LocalServer], s3_storage: Storage, cuttable: Cuttable,
        tmp_path: Path) -> None:
    """Once the first line is spoken, the line to the bucket fails for 4 s (longer than s3fs's
    own retries of a reset connection, about 2 s) while speech, pictures and compositions are
    being written and read: every one waits, the episode completes, and no call is paid twice
    (a provider actor keeps a paid answer's bytes until they are written)."""
    request = EpisodeRequest(premise="A ferry in a storm.", scenes=3, lines_per_scene=2, seed=6)
    server, run = media_run(local_server, cuttable.bucket(s3_storage), tmp_path, "test-s3-cut")
    try:
        await run.coordinator.submit_many.remote([request], ids=["cut"])
        first_line = EpisodeFolder("cut").speech(1, 1)
        await wait_for_async(lambda: asyncio.to_thread(s3_storage.exists, first_line), 60,
                             "the episode's first line spoken")
        cuttable.cut(turning_away=True)
        await asyncio.sleep(4.0)
        cuttable.mend()
        try:
            [view] = await asyncio.wait_for(run.coordinator.wait.remote(["cut"]), 120)
        except TimeoutError:
            record = await run.coordinator.episode.remote("cut")
            raise AssertionError(f"not finished 120 s after the line was mended: running "
                                 f"{sorted(map(str, record.engine.running))}, events "
                                 f"{[(e.kind, e.node, e.message) for e in record.events[-8:]]}"
                                 ) from None
    finally:
        cuttable.mend()
        run.stop()
    assert view.status == EpisodeStatus.COMPLETED, view.error
    assert cuttable.turned_away > 0  # the cut met work in flight
    assert s3_storage.read(EpisodeFolder("cut").artifact(Artifact.VIDEO))[4:8] == b"ftyp"
    billed = {kind: stats["duplicate_paid"] for kind, stats in server.stats().items()
              if isinstance(stats, dict) and "duplicate_paid" in stats}
    assert billed and not any(billed.values()), billed


async def test_a_script_waiting_for_the_bucket_holds_up_no_other_episode(
        local_server: Callable[..., LocalServer], s3_storage: Storage,
        cuttable: Cuttable) -> None:
    """The coordinator writes each episode's script as it ends. While the bucket is out of reach
    that write waits (up to the patience), in a thread: the coordinator's loop, which runs every
    episode, goes on. (Here in one process, without Ray: the loop is the coordinator's.)"""
    server = local_server(latency_scale=0.0)
    llm = LLMSettings(model="m", rpm=None, tpm=None)
    storage = Storage(s3_storage.url, cuttable.options(), patience_s=60)
    gateway = ProviderGateway(ProviderKind.LLM, llm, local_base_url=server.base_url,
                              storage=storage)
    coordinator = EpisodeCoordinator(Settings(llm=llm), {ProviderKind.LLM: gateway},
                                     storage=storage)
    try:
        cuttable.cut(turning_away=True)
        first = await coordinator.submit(EpisodeRequest(
            premise="A ferry at dawn.", scenes=1, lines_per_scene=1, media=False))
        await wait_for_async(lambda: cuttable.turned_away > 0, 30, "the first script's write")
        second = await coordinator.submit(EpisodeRequest(
            premise="A ferry at dusk.", scenes=2, lines_per_scene=1, media=False))

        async def second_written() -> bool:
            view = await coordinator.view(second)
            return view is not None and view.percent >= 50
        await wait_for_async(second_written, 20, "the second episode's scenes, while the "
                             "first one's script waits for the bucket")
        assert (await coordinator.view(first)).status is EpisodeStatus.RUNNING  # still waiting
        cuttable.mend()
        views = await coordinator.wait([first, second])
    finally:
        cuttable.mend()
        await coordinator.close()
        await gateway.close()
    assert [v.status for v in views] == [EpisodeStatus.COMPLETED] * 2, [v.error for v in views]
    for view in views:
        assert json.loads(s3_storage.read(EpisodeFolder(view.id).artifact(Artifact.SCRIPT_JSON)))


def test_the_cli_stops_at_a_bucket_it_cannot_write_naming_it(s3_server: S3Server,
                                                             tmp_path: Path) -> None:
    env = {**os.environ, **s3_server.environment(),
           "SHOWRUNNER_STATE_URL": f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"}
    result = subprocess.run(
        [sys.executable, "-m", "showrunner", "run", "--premise", "A ferry.", "--script-only",
         "--output", "s3://no-such-bucket/episodes"],
        env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("showrunner: error: cannot write to the storage "
                           "s3://no-such-bucket/episodes")
    assert "bucket does not exist" in line and "testing" not in line  # no key shown
    assert not (tmp_path / "state.db").exists()  # nothing made for a run that cannot go
