"""``showrunner open`` on a real run's folder, in a real browser: a CLI run made once for the
module (media included, small and fast), then the studio page over it, read-only.

The browser is Debian's Chromium driven by Playwright (fixtures in ``tests.chromium``). The page
runs under a Content-Security-Policy without ``unsafe-eval``, so conditions are polled from here
with ``page.evaluate`` of a function, never with ``wait_for_function``'s strings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from pipelines.episode_folder import Artifact
from pipelines.timeline import episode_part
from tests.commands.cli_runs import ROOT, FinishedRun, _env, showrunner
from tests.support import wait_for

SCREENSHOT = ROOT / "docs" / "studio-open.png"


@pytest.fixture(scope="module")
def run_dir(finished_run: FinishedRun) -> Path:
    return finished_run.out


class Opened:
    """``showrunner open DIR --port 0`` in a process of its own, until the module ends."""

    def __init__(self, folder: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "showrunner", "open", str(folder), "--port", "0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, cwd=ROOT, env=_env())
        self.said: list[str] = []
        assert self.proc.stdout is not None
        threading.Thread(target=lambda: self.said.extend(iter(self.proc.stdout.readline, "")),
                         daemon=True).start()
        wait_for(lambda: self.said or self.proc.poll() is not None, 30,
                 lambda: f"showrunner open to start: {''.join(self.said)}")
        first = self.said[0] if self.said else ""
        assert first.startswith("Showrunner studio (read-only) on "), self.said
        self.base = first.split(" on ", 1)[1].strip()
        assert self.base.startswith("http://127.0.0.1:")

    def stop(self) -> int:
        self.proc.send_signal(2)  # Ctrl-C
        return self.proc.wait(timeout=20)


@pytest.fixture(scope="module")
def opened(run_dir: Path) -> Iterator[Opened]:
    opened = Opened(run_dir)
    try:
        yield opened
    finally:
        if opened.proc.poll() is None:
            assert opened.stop() == 0, "".join(opened.said)


@pytest.fixture(scope="module")
def episode(run_dir: Path) -> dict[str, Any]:
    report = json.loads((run_dir / "report.json").read_text())
    entry = report["episodes"][0]  # of two
    assert entry["status"] == "completed"
    return {"id": entry["id"], "report": report,
            "script": json.loads((run_dir / entry["id"] / "script.json").read_text())}


def player(page: Any, what: str) -> Any:
    return page.evaluate(f"() => document.getElementById('player').{what}")


def open_episode(page: Any, opened: Opened, episode_id: str) -> None:
    page.goto(opened.base + "/")
    row = page.locator(f'#episodes [data-episode-id="{episode_id}"]')
    row.wait_for()
    row.locator("button").focus()
    page.keyboard.press("Enter")  # by keyboard, as anyone may
    page.locator('#episode-view[data-status="completed"]').wait_for()
    page.locator('#episode-view[data-shown="all"]').wait_for()  # files, script, timeline


def test_the_list_shows_the_run_read_only(page: Any, opened: Opened,
                                          episode: dict[str, Any]) -> None:
    page.goto(opened.base + "/")
    row = page.locator(f'#episodes [data-episode-id="{episode["id"]}"]')
    row.wait_for()
    assert row.get_attribute("data-status") == "completed"
    assert episode["script"]["title"] in row.inner_text()
    assert "100%" in row.inner_text()
    assert f"${episode['report']['episodes'][0]['cost_usd']:.4f}" in row.inner_text()
    assert "Read-only" in page.locator("#who").inner_text()
    # Nothing to submit, no key to ask for, no dashboard without Ray.
    assert not page.locator("#submit-form").is_visible()
    assert not page.locator("#signin").is_visible()
    assert not page.locator("#dashboard-link").is_visible()


def test_an_episode_plays_seeks_and_shows_its_script_and_files(
        page: Any, opened: Opened, episode: dict[str, Any], run_dir: Path) -> None:
    answers: list[tuple[int, str | None]] = []
    page.on("response", lambda r: answers.append((r.status, r.request.headers.get("range")))
            if r.url.endswith("/episode.mp4") else None)
    open_episode(page, opened, episode["id"])
    assert not page.locator("#cancel").is_visible()

    # The screenplay, from script.json, as text.
    text = page.locator("#screenplay").inner_text()
    first = episode["script"]["scenes"][0]
    assert episode["script"]["title"] in text
    assert first["dialogue"][0]["text"] in text
    assert first["outline"]["setting"].upper() in text

    # The files: a link for each of the folder's artifacts.
    links = page.locator("#downloads a")
    present = [a.value for a in Artifact if (run_dir / episode["id"] / a.value).is_file()]
    assert sorted(links.evaluate_all("ls => ls.map(l => l.dataset.artifact)")) == sorted(present)
    for name in present:
        href = page.locator(f'#downloads a[data-artifact="{name}"]').get_attribute("href")
        assert requests.get(href, timeout=10).content == (
            run_dir / episode["id"] / name).read_bytes()

    # The video plays, with its poster, and advances.
    assert player(page, "poster").endswith("/artifacts/poster.png")
    page.evaluate("() => document.getElementById('player').play()")
    wait_for(lambda: player(page, "currentTime") > 0.3, 30, "the video to play")
    at = player(page, "currentTime")
    wait_for(lambda: player(page, "currentTime") > at, 10, "the video to advance")

    # Seeking near the end: the browser asks for a range and gets one.
    duration = player(page, "duration")
    assert duration > 2
    page.evaluate(f"() => {{ document.getElementById('player').currentTime = {duration - 1}; }}")
    wait_for(lambda: player(page, "currentTime") >= duration - 1, 10, "the seek")
    wait_for(lambda: player(page, "ended") or player(page, "currentTime") > duration - 0.9, 10,
             "the video to go on after the seek")
    assert any(status == 206 and rng for status, rng in answers), answers
    url = f"{opened.base}/v1/episodes/{episode['id']}/artifacts/episode.mp4"
    size = (run_dir / episode["id"] / "episode.mp4").stat().st_size
    ranged = requests.get(url, headers={"Range": f"bytes={size - 100}-"}, timeout=10)
    assert ranged.status_code == 206 and len(ranged.content) == 100
    assert ranged.headers["content-range"] == f"bytes {size - 100}-{size - 1}/{size}"

    if os.environ.get("SAVE_SCREENSHOTS") == "1":
        page.evaluate("() => { document.getElementById('player').pause(); "
                      "document.activeElement.blur(); }")
        page.screenshot(path=str(SCREENSHOT), full_page=True)


def test_the_timeline_has_a_bar_per_node(page: Any, opened: Opened,
                                         episode: dict[str, Any]) -> None:
    timeline = episode["report"].get("timeline")
    if timeline is None:
        pytest.fail("the run's report.json has no timeline")
    bars = episode_part(timeline, episode["id"])["bars"]
    assert bars
    open_episode(page, opened, episode["id"])
    assert page.locator("#timeline .bar").count() == len(bars)
    # The stages table reads the same nodes: every scene's dialogue is done.
    for scene in (1, 2):
        cell = page.locator(f'#stages tr[data-scene="{scene}"] td[data-stage="dialogue"]')
        assert cell.get_attribute("data-state") == "done"


def test_the_runs_report_page_opens_offline_with_a_bar_per_node(page: Any,
                                                                 run_dir: Path) -> None:
    """The CLI's ``report.html`` of this real run, from disk, every request to a server refused:
    what a person opening it from a mail or a bucket sees."""
    tried: list[str] = []
    page.route("http*://**", lambda route: (tried.append(route.request.url), route.abort()))
    page.goto((run_dir / "report.html").as_uri())
    timeline = json.loads((run_dir / "report.json").read_text())["timeline"]
    page.locator("svg.timeline").wait_for(timeout=10_000)
    assert page.locator(".bar").count() == len(timeline["bars"]) > 0
    assert page.locator(".bar.critical").count() == len(timeline["critical_path"]["nodes"])
    assert tried == []


def test_nothing_changes_state(opened: Opened, episode: dict[str, Any]) -> None:
    base = f"{opened.base}/v1/episodes"
    for response in (requests.post(base, json={"premise": "x"}, timeout=10),
                     requests.delete(f"{base}/{episode['id']}", timeout=10),
                     requests.post(f"{base}/{episode['id']}/token", timeout=10)):
        assert response.status_code == 405
        assert response.json()["error"]["code"] == "method_not_allowed"
    assert requests.get(f"{base}/{episode['id']}", timeout=10).json()["status"] == "completed"


def test_ctrl_c_stops_it_cleanly(run_dir: Path) -> None:
    opened = Opened(run_dir)
    assert requests.get(opened.base + "/v1/whoami", timeout=10).json()["read_only"] is True
    assert opened.stop() == 0


@pytest.mark.parametrize(("where", "needle"), [
    ("{tmp}/nowhere", "no such folder"),
    ("{tmp}", "report.json does not exist"),
    ("https://example.com/run", "is a URL"),
])
def test_a_bad_dir_is_refused_in_one_line(tmp_path: Path, where: str, needle: str) -> None:
    result = showrunner("open", where.format(tmp=tmp_path), "--port", "0")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and needle in result.stderr, result.stderr
    assert result.stdout == ""
