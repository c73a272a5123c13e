"""``showrunner`` on a PostgreSQL state store, as a cluster runs it: ``SHOWRUNNER_STATE_URL`` names
a real server's database, and the run, the listing and a run again all go through it. Paid calls
are counted where they are paid: at the bundled server, started here so its counters can be read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import make_url

from local_server.process import LocalServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
ENDPOINTS = ("chat", "speech", "image")


def showrunner(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own, with only the settings given (none of the caller's).

    ``RAY_ADDRESS=local``: a Ray of its own. Unset, ``ray.init`` joins the cluster a ``ray
    start`` on this machine last recorded (another test's, say) whenever one is running."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SHOWRUNNER_", "RAY_"))}
    return subprocess.run([sys.executable, "-m", "showrunner", *args], capture_output=True,
                          text=True, env={**clean, **env, "PYTHONPATH": str(ROOT),
                                          "RAY_ADDRESS": "local"}, cwd=ROOT, timeout=120)


def paid(server: LocalServer) -> dict[str, int]:
    stats = server.stats()
    return {name: int(stats[name]["accepted"]) for name in ENDPOINTS}


def test_a_run_on_postgresql_is_listed_there_and_not_paid_for_again(
        postgres_url: str, local_server: Callable[..., LocalServer], tmp_path: Path) -> None:
    server = local_server()
    env = {"SHOWRUNNER_STATE_URL": postgres_url,
           **{f"SHOWRUNNER_{kind}__BASE_URL": server.base_url for kind in ("LLM", "TTS", "IMAGE")}}
    out = tmp_path / "out"
    run = ("run", "--premise", "A bakery heist.", "--scenes", "2", "--lines", "1",
           "--script-only", "--latency-scale", "0", "--output", str(out))

    first = showrunner(*run, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    [episode] = [e["id"] for e in json.loads((out / "report.json").read_text())["episodes"]]
    before = paid(server)
    assert before["chat"] > 0
    assert not (out / "showrunner.db").exists()  # the rows went to the server, not a file

    listed = showrunner("list", "--json", "--output", str(out), env=env)
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert (row["id"], row["status"], row["scenes"]) == (episode, "completed", 2)
    status = showrunner("status", episode, "--output", str(out), env=env)
    assert status.returncode == 0, status.stderr
    assert f"episode   {episode}: completed, 100.0%" in status.stdout

    # The same command again: the store says the episode is done, so nothing is paid twice.
    again = showrunner(*run, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"1 episode(s) already completed on this storage, shown as they are: {episode}" in (
        again.stderr)
    assert paid(server) == before
    report = json.loads((out / "report.json").read_text())
    assert [e["status"] for e in report["episodes"]] == ["completed"]
    assert report["totals"]["providers"]["llm"]["calls"] == 0
    password = make_url(postgres_url).password
    assert password and password not in first.stderr + again.stderr + status.stdout
