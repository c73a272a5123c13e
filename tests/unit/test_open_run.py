"""``showrunner open``'s app over a hand-made run folder, served for real on loopback (uvicorn in
a thread) and asked with ``requests``: the listing, the files with ``Range``, the timeline, the
page, and nothing that reads outside the folder or changes anything."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from showrunner import cli, open_run, studio
from tests.open_runs import LIMITS, Served

DONE, SHORT = "aaaa11112222", "bbbb33334444"
VIDEO = bytes(range(256)) * 40  # 10240 bytes, each offset's byte known


def _timeline() -> dict:
    lanes = [{"episode": DONE, "scene": None, "label": "aaaa1111 · episode"},
             {"episode": DONE, "scene": 1, "label": "aaaa1111 · scene 1"},
             {"episode": SHORT, "scene": 1, "label": "bbbb3333 · scene 1"}]
    bars = [{"lane": lane, "node": node, "stage": node.split(":")[0], "start_s": 0.0,
             "end_s": 1.0, "status": "done", "calls": 1, "cost_usd": 0.001, "critical": True}
            for lane, node in ((0, "outline:1"), (1, "content:1"), (1, "dialogue:1"),
                               (2, "content:1"))]
    return {"version": 1, "started_at": 0.0, "wall_s": 1.0, "stages": ["outline", "content"],
            "lanes": lanes, "bars": bars, "providers": [],
            "critical_path": {"episode": DONE, "nodes": ["outline:1"], "length_s": 1.0}}


def _entry(episode_id: str, status: str, scenes: int, completed: int, cost: float,
           missing: list[dict] | None = None) -> dict:
    return {"id": episode_id, "status": status, "scenes": scenes, "scenes_completed": completed,
            "wall_s": 2.0, "sequential_s": 3.0, "critical_path_s": 1.0, "cost_usd": cost,
            "saved_usd": 0.0, "cpu_s": 0.5, "output_dir": f"/somewhere/{episode_id}",
            "files": {}, "error": None if status == "completed" else "scene 2 failed",
            "missing": missing or []}


def make_run(root: Path, timeline: bool = True) -> Path:
    report = {"episodes": [_entry(DONE, "completed", 2, 2, 0.25),
                           _entry(SHORT, "failed", 2, 1, 0.125,
                                  [{"what": "scene 2", "why": "content:2: boom"}])],
              "totals": {}}
    if timeline:
        report["timeline"] = _timeline()
    root.mkdir(parents=True, exist_ok=True)
    (root / "report.json").write_text(json.dumps(report))
    done = root / DONE
    done.mkdir()
    (done / "episode.mp4").write_bytes(VIDEO)
    (done / "poster.png").write_bytes(b"\x89PNG fake")
    (done / "script.json").write_text(json.dumps({"id": DONE, "title": "The <b>Keeper</b>"}))
    (root / SHORT).mkdir()
    (root / SHORT / "script.md").write_text("# Short\n")
    (root / "secret.txt").write_text("not an episode's")
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("open") / "run")


@pytest.fixture(scope="module")
def served(run_dir: Path) -> Iterator[Served]:
    with Served(open_run.RunFolder.open(str(run_dir))) as served:
        yield served


def _error(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["status"] == status
    return error


def test_whoami_says_keyless_and_read_only(served: Served) -> None:
    assert served.get("/v1/whoami").json() == {
        "tenant": "local", "keyless": True, "read_only": True, "dashboard_url": None,
        "limits": LIMITS}


def test_the_listing_shows_the_report_s_episodes_with_their_files(served: Served) -> None:
    answer = served.get("/v1/episodes").json()
    assert answer["next_cursor"] is None
    done, short = answer["episodes"]
    assert done["id"] == DONE and done["status"] == "completed" and done["percent"] == 100
    assert done["title"] == "The <b>Keeper</b>"  # from script.json, as it is
    assert done["report"]["cost_usd"] == 0.25 and done["cost_usd"] == 0.25
    assert done["scenes"] == ["done", "done"]
    assert done["artifacts"] == {
        name: f"/v1/episodes/{DONE}/artifacts/{name}"
        for name in ("script.json", "poster.png", "episode.mp4")}
    assert "output_dir" not in done["report"] and "files" not in done["report"]
    assert short["status"] == "failed" and short["percent"] == 50
    assert short["title"] is None
    assert short["scenes"] == ["done", "failed"]
    assert short["missing"] == [{"what": "scene 2", "why": "content:2: boom"}]
    assert list(short["artifacts"]) == ["script.md"]
    assert served.get(f"/v1/episodes/{SHORT}").json() == short


def test_the_listing_pages_and_filters(served: Served) -> None:
    first = served.get("/v1/episodes?limit=1").json()
    assert [e["id"] for e in first["episodes"]] == [DONE]
    second = served.get(f"/v1/episodes?limit=1&cursor={first['next_cursor']}").json()
    assert [e["id"] for e in second["episodes"]] == [SHORT]
    assert second["next_cursor"] is None
    newest = served.get("/v1/episodes?limit=1&order=newest").json()
    assert [e["id"] for e in newest["episodes"]] == [SHORT]
    older = served.get(f"/v1/episodes?limit=1&order=newest&cursor={newest['next_cursor']}")
    assert [e["id"] for e in older.json()["episodes"]] == [DONE]
    assert older.json()["next_cursor"] is None
    failed = served.get("/v1/episodes?status=failed").json()["episodes"]
    assert [e["id"] for e in failed] == [SHORT]
    for bad in ("status=finished", "limit=0", "limit=101", "cursor=-1", "limit=x",
                "order=latest"):
        _error(served.get(f"/v1/episodes?{bad}"), 422)


def test_an_unknown_episode_or_file_is_404(served: Served) -> None:
    assert "no episode 'cccc'" in _error(served.get("/v1/episodes/cccc"), 404)["message"]
    _error(served.get("/v1/episodes/cccc/artifacts/episode.mp4"), 404)
    _error(served.get("/v1/episodes/cccc/timeline"), 404)
    missing = _error(served.get(f"/v1/episodes/{SHORT}/artifacts/episode.mp4"), 404)
    assert "it has ['script.md']" in missing["message"]
    _error(served.get(f"/v1/episodes/{DONE}/artifacts/media"), 404)
    _error(served.get("/v2/anything"), 404)


@pytest.mark.parametrize("path", [
    "/v1/episodes/..%2Fsecret.txt",
    "/v1/episodes/..%2F..%2Fetc/artifacts/passwd",
    "/v1/episodes/%2E%2E/artifacts/report.json",
    f"/v1/episodes/{DONE}/artifacts/..%2F..%2Fsecret.txt",
    f"/v1/episodes/{DONE}/artifacts/%2E%2E%2Freport.json",
    "/studio/..%2Fopen_run.py",
    "/studio/%2E%2E%2F__init__.py",
])
def test_a_path_outside_the_folder_is_never_read(served: Served, path: str) -> None:
    response = served.get(path)
    assert response.status_code == 404, response.text
    assert "not an episode" not in response.text and "import" not in response.text


def test_files_are_served_in_ranges(served: Served) -> None:
    url = f"/v1/episodes/{DONE}/artifacts/episode.mp4"
    whole = served.get(url)
    assert whole.status_code == 200 and whole.content == VIDEO
    assert whole.headers["content-type"] == "video/mp4"
    assert whole.headers["accept-ranges"] == "bytes"
    part = served.get(url, headers={"Range": "bytes=1000-1009"})
    assert part.status_code == 206
    assert part.content == VIDEO[1000:1010]
    assert part.headers["content-range"] == f"bytes 1000-1009/{len(VIDEO)}"
    tail = served.get(url, headers={"Range": "bytes=-16"})
    assert tail.status_code == 206 and tail.content == VIDEO[-16:]
    head = requests.head(served.base + url, timeout=10)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(VIDEO))
    _error(served.get(url, headers={"Range": f"bytes={len(VIDEO) + 10}-"}), 416)


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/episodes"),
    ("DELETE", f"/v1/episodes/{DONE}"),
    ("PUT", f"/v1/episodes/{DONE}"),
    ("POST", f"/v1/episodes/{DONE}/token"),
    ("PATCH", "/v1/whoami"),
    ("DELETE", f"/v1/episodes/{DONE}/artifacts/episode.mp4"),
])
def test_nothing_can_be_changed(served: Served, run_dir: Path, method: str, path: str) -> None:
    response = requests.request(method, served.base + path, json={"premise": "x"}, timeout=10)
    error = _error(response, 405)
    assert error["code"] == "method_not_allowed" and "read-only" in error["message"]
    assert response.headers["allow"] == "GET, HEAD"
    assert (run_dir / DONE / "episode.mp4").read_bytes() == VIDEO


def test_the_timeline_whole_and_per_episode(served: Served) -> None:
    whole = served.get("/v1/timeline").json()
    assert whole == _timeline()
    one = served.get(f"/v1/episodes/{SHORT}/timeline").json()
    assert [lane["episode"] for lane in one["lanes"]] == [SHORT]
    assert [(bar["lane"], bar["node"]) for bar in one["bars"]] == [(0, "content:1")]
    assert one["critical_path"] is None  # another episode's
    done = served.get(f"/v1/episodes/{DONE}/timeline").json()
    assert len(done["bars"]) == 3 and done["critical_path"]["episode"] == DONE


def test_a_report_without_a_timeline_says_so(tmp_path: Path) -> None:
    folder = open_run.RunFolder.open(str(make_run(tmp_path / "old", timeline=False)))
    with Served(folder) as served:
        assert "no timeline" in _error(served.get("/v1/timeline"), 404)["message"]
        _error(served.get(f"/v1/episodes/{DONE}/timeline"), 404)
        assert served.get(f"/v1/episodes/{DONE}").status_code == 200


def test_the_page_and_its_files(served: Served) -> None:
    page = served.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    assert 'id="request-fields">{"premise"' in page.text
    for name in ("studio.js", "studio.css"):
        asset = served.get(f"/studio/{name}")
        assert asset.status_code == 200
        assert asset.content == (studio.STATIC / name).read_bytes()
    _error(served.get("/studio/nothing.js"), 404)


def test_only_loopback_names_are_answered(served: Served) -> None:
    """A page of another site whose name was made to point here (DNS rebinding) gets nothing."""
    _error(served.get("/v1/episodes", headers={"Host": "attacker.example"}), 400)
    assert served.get("/v1/whoami", headers={"Host": "localhost"}).status_code == 200


def test_the_page_data_cannot_end_its_block() -> None:
    fields = studio.request_fields()
    assert fields["scenes"] == {"type": "integer", "default": 6, "minimum": 1, "maximum": 200,
                                "description": "How many scenes."}
    assert fields["tier"]["enum"] == ["standard", "flex"] and fields["tier"]["default"] is None
    assert fields["budget_usd"]["exclusiveMinimum"] == 0
    html = studio.page_html()
    block = html.split('id="request-fields">', 1)[1].split("</script>", 1)[0]
    assert json.loads(block) == fields and "<" not in block


def test_only_the_page_s_files_are_assets() -> None:
    assert studio.asset("studio.js") == (studio.STATIC / "studio.js",
                                         "text/javascript; charset=utf-8")
    for name in ("../__init__.py", "static/studio.js", "", "STUDIO.JS", "index.html/"):
        assert studio.asset(name) is None


@pytest.mark.parametrize(("setup", "needle"), [
    (lambda root: None, "no such folder"),
    (lambda root: root.mkdir(), "report.json does not exist"),
    (lambda root: (root.mkdir(), (root / "report.json").write_text("{")), "cannot be read"),
    (lambda root: (root.mkdir(), (root / "report.json").write_text("[]")), "lists no episodes"),
    (lambda root: (root.mkdir(), (root / "report.json").write_text(
        json.dumps({"episodes": [{"id": "../x"}]}))), "no valid id"),
])
def test_a_folder_that_is_no_run_is_refused(tmp_path: Path, setup, needle: str) -> None:
    root = tmp_path / "run"
    setup(root)
    with pytest.raises(open_run.NotARun, match=needle.replace(".", r"\.")):
        open_run.RunFolder.open(str(root))


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(("where", "needle"), [
    ("s3://bucket/run", "s3://bucket/run is a URL: showrunner open serves a folder"),
    ("{tmp}", "report.json does not exist"),
])
def test_the_command_refuses_what_it_cannot_open(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str, needle: str) -> None:
    assert cli.main(["open", where.format(tmp=tmp_path)]) == cli.EXIT_USAGE
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and needle in said, said


def test_the_report_file_is_the_one_runs_write() -> None:
    from showrunner import launcher

    assert open_run.REPORT_FILE == launcher.REPORT_FILE


@pytest.mark.usefixtures("clean_env")
def test_a_port_in_use_is_refused(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    taken = open_run.listen(0)
    try:
        port = str(taken.getsockname()[1])
        assert cli.main(["open", str(run_dir), "--port", port]) == cli.EXIT_USAGE
    finally:
        taken.close()
    said = capsys.readouterr()
    assert said.out == "" and f"cannot listen on 127.0.0.1:{port}" in said.err
