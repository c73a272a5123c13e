"""Requests from the command line, and the files an episode becomes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from pipelines.episode_folder import EpisodeFolder
from pipelines.episode_state import EpisodeRecord
from pipelines.files import publish, umask, write_atomic
from pipelines.models import (
    EpisodeRequest,
    EpisodeStatus,
    OutlineDraft,
    SceneContent,
    SceneDialogue,
    SceneState,
)
from pipelines.planner import content_id, dialogue_id, outline_id
from pipelines.premises import (
    MAX_EPISODES,
    BadInput,
    build_request,
    expand,
    parse_premises_file,
)
from pipelines.screenplay import script_files, write_files
from pipelines.storage import Storage


def test_premises_file_mixes_plain_lines_and_json_lines() -> None:
    text = 'A heist.\n\n{"premise": "A wedding.", "scenes": 3}\nA storm.\n'
    requests = parse_premises_file(text, {"scenes": 5, "continuity": "window:2"})
    assert [r.premise for r in requests] == ["A heist.", "A wedding.", "A storm."]
    assert [r.scenes for r in requests] == [5, 3, 5]
    assert requests[1].continuity == "window:2"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no premise"),
        ('{"premise": "x", "scenes": 0}', "line 1): scenes = 0"),
        ("ok\n{not json", "line 2 is not valid JSON"),
        ('{"premise": 5}', "premise = 5: Input should be a valid string"),
        ('{"premise": "x", "sceens": 3}', "unknown field 'sceens'"),
        ('{"premise": "x", "continuity": "sequel"}', "unknown continuity mode 'sequel'"),
    ],
)
def test_bad_premises_files_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(BadInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_premises_file(text, {})


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"premise": ""}, "premise"),
        ({"premise": "x", "scenes": 10_000}, "scenes = 10000"),
        ({"premise": "x" * 4001}, "premise"),
        ({"premise": "x", "lines_per_scene": 41}, "lines_per_scene = 41"),
    ],
)
def test_request_limits(fields: dict, needle: str) -> None:
    with pytest.raises(BadInput, match=needle):
        build_request(fields)


def test_expand_cycles_premises_with_distinct_seeds() -> None:
    base = [build_request({"premise": "a"}), build_request({"premise": "b", "seed": 4})]
    out = expand(base, 5)
    assert [r.premise for r in out] == ["a", "b", "a", "b", "a"]
    assert len({(r.premise, r.seed) for r in out}) == 5
    with pytest.raises(BadInput, match="--episodes"):
        expand(base, 0)


def test_a_premises_file_over_the_limit_names_the_file_and_the_limit() -> None:
    text = "A heist.\n" * (MAX_EPISODES + 1)
    with pytest.raises(BadInput) as caught:
        parse_premises_file(text, {}, "premises file plots.txt")
    message = str(caught.value)
    assert message.startswith("premises file plots.txt holds more than 1000 premises")
    assert "--episodes" not in message  # a flag the user never gave
    assert len(parse_premises_file("A heist.\n\n" * MAX_EPISODES, {})) == MAX_EPISODES


def test_expand_names_the_flag_only_when_it_was_given() -> None:
    many = [build_request({"premise": "a"})] * (MAX_EPISODES + 1)
    with pytest.raises(BadInput) as caught:
        expand(many, None)
    assert "--episodes" not in str(caught.value) and "1000" in str(caught.value)
    with pytest.raises(BadInput, match="--episodes must be from 1 to 1000, not 1001"):
        expand(many[:1], MAX_EPISODES + 1)


def _record() -> EpisodeRecord:
    request = EpisodeRequest(premise="A heist at a bakery.", scenes=2, media=False)
    record = EpisodeRecord(id="ep1", request=request, submitted_at=0.0,
                           status=EpisodeStatus.COMPLETED)
    record.engine.done.update(record.plan().nodes)
    record.results[outline_id(1)] = OutlineDraft.model_validate({
        "title": "Flour Power", "logline": "Bakers rob a bank.",
        "characters": [{"name": "Ada", "description": "baker"}],
        "scenes": [{"number": n, "title": f"T{n}", "setting": "Bakery", "summary": "S",
                    "characters": ["Ada"]} for n in (1, 2)],
    })
    for n in (1, 2):
        record.results[content_id(n)] = SceneContent(setting="Warm", action="Kneading",
                                                     mood="tense")
        record.results[dialogue_id(n)] = SceneDialogue.model_validate(
            {"lines": [{"speaker": "Ada", "text": f"Line {n}", "direction": "whispers"}]})
    return record


def test_episode_files_are_a_script_and_a_readable_screenplay(tmp_path: Path) -> None:
    files = script_files(_record(), EpisodeFolder("ep1"))
    assert list(files) == ["ep1/script.json", "ep1/script.md"]
    write_files(Storage(str(tmp_path)), files)
    folder = tmp_path / "ep1"
    data = json.loads((folder / "script.json").read_text())
    assert data["title"] == "Flour Power" and len(data["scenes"]) == 2
    markdown = (folder / "script.md").read_text()
    assert "# Flour Power" in markdown and "**ADA** *(whispers)*" in markdown
    assert "Line 2" in markdown
    assert not list(folder.glob(".*.tmp"))  # no temporary files left behind


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    write_atomic(target, "old")

    with pytest.raises(TypeError):
        write_atomic(target, 42)  # type: ignore[arg-type]
    assert target.read_text() == "old" and not list(tmp_path.glob(".*.tmp"))


def test_scene_states_are_derived_from_nodes() -> None:
    record = _record()
    record.engine.done -= {dialogue_id(2), content_id(1)}
    record.engine.running.add(dialogue_id(2))
    record.engine.failed.add(content_id(1))
    assert record.scene_states() == [SceneState.FAILED, SceneState.RUNNING]
    assert record.percent == pytest.approx(80.0)  # failed counts as settled; running does not


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_files_get_the_mode_the_umask_gives(tmp_path: Path, mask: int) -> None:
    """They used to be 0600 whatever the umask, while ffmpeg's MP4s were 0644."""
    previous = os.umask(mask)
    try:
        assert umask() == mask
        write_atomic(tmp_path / "script.md", "# Title\n")
        (tmp_path / "by-another-program").write_bytes(b"")
    finally:
        os.umask(previous)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {0o666 & ~mask}


def test_files_are_synced_before_their_rename_and_the_rename_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A power cut cannot be had here: the order of the real syscalls is what is checked."""
    order: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        order.append("sync " + os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        order.append(f"rename to {Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_atomic(tmp_path / "script.md", "# Title\n")
    partial = tmp_path / ".episode.mp4.partial"
    partial.write_bytes(b"\0" * 10)
    publish(partial, tmp_path / "episode.mp4")
    assert order[0].startswith("sync .script.md.") and order[1:] == [
        "rename to script.md", f"sync {tmp_path.name}", "sync .episode.mp4.partial",
        "rename to episode.mp4", f"sync {tmp_path.name}"]
    assert (tmp_path / "episode.mp4").read_bytes() == b"\0" * 10
