"""The studio's list of episodes in a real browser, over ``showrunner open``'s app on a hand-made
run of more episodes than the list shows: the newest come first, and the page says it shows only
the newest."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from showrunner import open_run
from tests.open_runs import Served

SHOWN = 500  # the page reads 5 pages of 100
EPISODES = SHOWN + 7


def episode_id(n: int) -> str:
    return f"{n:012x}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("many") / "run"
    root.mkdir()
    entries = [{"id": episode_id(n), "status": "completed", "scenes": 1, "scenes_completed": 1,
                "cost_usd": 0.001} for n in range(1, EPISODES + 1)]  # in the run's order
    (root / "report.json").write_text(json.dumps({"episodes": entries, "totals": {}}))
    with Served(open_run.RunFolder.open(str(root))) as served:
        yield served


def test_the_newest_episodes_come_first_and_the_page_says_it_shows_only_them(
        page: Any, served: Served) -> None:
    """The list used to read the oldest 500 and turn them round: past 500 episodes, the newest,
    the one just submitted among them, were never shown."""
    page.goto(served.base + "/")
    page.locator("#list-more").wait_for()
    ids = page.evaluate("() => [...document.querySelectorAll('#episodes [data-episode-id]')]"
                        ".map((row) => row.dataset.episodeId)")
    assert ids == [episode_id(n) for n in range(EPISODES, EPISODES - SHOWN, -1)]
    assert page.locator("#list-more").inner_text() == f"Showing your newest {SHOWN} episodes."
