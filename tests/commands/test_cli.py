"""The ``showrunner`` command as a user runs it: bad input refused cleanly, runs write files."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import ray

from local_server.process import LocalServer
from pipelines.settings import Settings
from pipelines.storage import Storage
from showrunner import launcher
from tests.commands.cli_runs import ROOT, FinishedRun, _env, showrunner
from tests.support import cmdline_of, descendants, wait_for


class Running:
    """A ``showrunner`` command going on in its own process group, its stderr collected."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "showrunner", *args], stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env(), start_new_session=True)
        self.seen: list[str] = []
        assert self.proc.stderr is not None
        self.reader = threading.Thread(
            target=lambda: self.seen.extend(iter(self.proc.stderr.readline, "")), daemon=True)
        self.reader.start()

    def said(self) -> str:
        return "".join(self.seen)

    def alive(self) -> bool:
        assert self.proc.poll() is None, self.said()[-3000:]
        return True

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return code

    def kill_group(self) -> None:
        """SIGKILL its whole process group, as a crash or a closed terminal would: its keeper
        dies too, so what its Ray left running is ended here, and nothing of the dead run writes
        to the store while the next command runs."""
        raylets = [pid for pid in descendants(self.proc.pid) if _exe(pid) == "raylet"]
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        left = {pid for raylet in raylets for pid in _started_by(raylet)}
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not any(_alive(pid) for pid in left), 10, "the killed run's workers")


def _exe(pid: int) -> str:
    try:
        return Path(os.readlink(f"/proc/{pid}/exe")).name
    except OSError:
        return ""


def _started_by(raylet: int) -> list[int]:
    """The workers and agents of a raylet, wherever they were reparented (Ray marks them)."""
    mark = f"RAY_RAYLET_PID={raylet}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and mark in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:  # the state follows the name, which is in brackets and may hold spaces
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def listing(out: Path) -> list[dict]:
    """``showrunner status --json``: every episode of the storage with how far it got."""
    result = showrunner("status", "--json", "--output", str(out))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def details(out: Path, episode: str) -> dict:
    result = showrunner("status", episode, "--json", "--output", str(out))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


TAKEN_UP = re.compile(r"taken up again after a restart: (\d+) of (\d+) nodes kept")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--premise", "x", "--scenes", "0"], "scenes = 0"),
        (["run", "--premise", "x", "--scenes", "10000"], "scenes = 10000"),
        (["run", "--premise", ""], "premise = ''"),
        (["run", "--premise", "x", "--continuity", "sequel"], "unknown continuity mode"),
        (["run", "--premises-file", "/nonexistent/premises.txt"], "cannot read premises file"),
        (["run", "--premise", "x", "--episodes", "0"], "--episodes must be from 1"),
        (["run", "--premise", "x", "--latency-scale", "-1"], "--latency-scale"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], needle: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = showrunner(*args, "--output", str(out))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.stderr
    assert not out.exists()  # nothing half-written


def test_bad_settings_stop_at_start(tmp_path: Path) -> None:
    result = showrunner("config", env={"SHOWRUNNER_LLM__RPM": "-5",
                                       "SHOWRUNNER_LLM__API_KEY": "sk-do-not-print"})
    assert result.returncode == 2
    assert "llm.rpm = '-5'" in result.stderr and "sk-do-not-print" not in result.stderr


@pytest.mark.parametrize(
    ("name", "closest"),
    [
        ("SHOWRUNNER_LLM_BASE_URL", "SHOWRUNNER_LLM__BASE_URL"),
        ("SHOWRUNNER_MAX_PARALEL_EPISODES", "SHOWRUNNER_MAX_PARALLEL_EPISODES"),
    ],
)
def test_an_unknown_setting_name_stops_at_start(name: str, closest: str, tmp_path: Path) -> None:
    # Ignored, the misspelt name would let the run "succeed" on the bundled placeholder server.
    out = tmp_path / "out"
    result = showrunner("run", "--premise", "x", "--scenes", "1", "--lines", "1",
                        "--script-only", "--latency-scale", "0", "--output", str(out),
                        env={name: "http://127.0.0.1:9/v1"})
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [
        f"showrunner: error: unknown setting {name} (did you mean {closest}?)"]
    assert not out.exists()


def test_the_reference_is_printed_even_while_a_setting_is_wrong() -> None:
    # The error for an unknown name points here, so it must not fail for the same reason.
    result = showrunner("config", "--reference", env={"SHOWRUNNER_ZZZZZZ": "1"})
    assert result.returncode == 0, result.stderr
    assert "`SHOWRUNNER_LLM__BASE_URL`" in result.stdout


def test_a_premises_file_over_the_limit_names_the_file_and_the_limit(tmp_path: Path) -> None:
    premises = tmp_path / "plots.txt"
    premises.write_text("A heist.\n" * 1001)
    out = tmp_path / "out"
    result = showrunner("run", "--premises-file", str(premises), "--output", str(out))
    assert result.returncode == 2, result.stderr[-3000:]
    [line] = result.stderr.strip().splitlines()
    assert f"premises file {premises} holds more than 1000 premises" in line
    assert "--episodes" not in line and not out.exists()


def test_config_masks_secrets() -> None:
    result = showrunner("config", env={
        "SHOWRUNNER_LLM__API_KEY": "sk-do-not-print",
        "SHOWRUNNER_STATE_URL": "postgresql+asyncpg://app:pw-do-not-print@db/showrunner"})
    assert result.returncode == 0
    view = json.loads(result.stdout)
    assert view["llm"]["api_key"] == "(set)" and "sk-do-not-print" not in result.stdout
    assert view["state_url"] == "(set)" and "pw-do-not-print" not in result.stdout


def test_bad_storage_stops_before_anything_runs(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    run = ("run", "--premise", "x", "--script-only")
    result = showrunner(*run, env={"SHOWRUNNER_STORAGE": "s3://bucket/episodes"})
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "invalid settings: with object storage, set SHOWRUNNER_STATE_URL too" in line
    # Without --output, the run writes under the storage setting, so its errors name it.
    result = showrunner(*run, env={"SHOWRUNNER_STORAGE": str(a_file)})
    assert result.returncode == 2
    message = f"showrunner: error: cannot create output directory {a_file}: File exists"
    assert result.stderr.strip() == message


@pytest.mark.usefixtures("ray_session")
def test_a_run_on_a_cluster_where_one_goes_on_is_refused(tmp_path: Path) -> None:
    """Joined to a cluster (as under ``ray job submit``) where another run's coordinator
    answers, a run stops with one line before anything is asked of any provider."""
    with LocalServer(latency_scale=0) as server:
        going_on = launcher.start_run(Settings(), Storage(str(tmp_path / "first")),
                                      server.base_url)
        going_on.wait_ready()
        try:
            out = tmp_path / "second"
            result = showrunner("run", "--premise", "x", "--scenes", "1", "--script-only",
                                "--latency-scale", "0", "--output", str(out),
                                env={"RAY_ADDRESS": ray.get_runtime_context().gcs_address,
                                     "RAY_AUTH_MODE": "token"})
            assert ray.get(going_on.coordinator.views.remote([])) == []  # untouched
        finally:
            going_on.stop()
    assert result.returncode == 2, result.stderr[-3000:]
    [line] = result.stderr.strip().splitlines()
    assert "'showrunner:coordinator'" in line and "showrunner serve" in line, line
    assert not list(out.glob("*/script.json"))


def test_run_writes_screenplays_and_a_report(finished_run: FinishedRun) -> None:
    result, tmp_path, report_copy = finished_run.result, finished_run.base, finished_run.report_copy
    assert not (tmp_path / "storage").exists()  # --output wins over the setting
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report == json.loads(report_copy.read_text())
    assert set(report["totals"]) >= {
        "wall_s", "sequential_s", "speedup", "parallel_efficiency", "lower_bound_s",
        "bottleneck", "cost_usd", "providers",
    }
    assert set(report["totals"]["providers"]["llm"]) == {
        "calls", "ok", "rate_limited", "retries", "errors", "tokens_in", "tokens_out",
        "cost_usd", "cache_hits", "saved_usd", "limiter_wait_s", "tiers", "flex_busy",
        "flex_fell_back",
    }
    assert set(report["totals"]["providers"]["llm"]["tiers"]) == {"standard"}
    episodes = report["episodes"]
    assert [e["scenes"] for e in episodes] == [3, 2]
    for e in episodes:
        assert e["status"] == "completed" and e["scenes_completed"] == e["scenes"]
        assert set(e) >= {"id", "status", "scenes", "scenes_completed", "wall_s", "cost_usd",
                          "output_dir"}
        folder = Path(e["output_dir"])
        assert (folder / "script.json").is_file() and (folder / "script.md").is_file()
        for name in ("episode.mp4", "episode.srt", "poster.png"):
            assert (folder / name).is_file()
        assert e["files"] == {"video": str(folder / "episode.mp4"),
                              "subtitles": str(folder / "episode.srt"),
                              "poster": str(folder / "poster.png")}
    assert set(report["totals"]["providers"]) == {"llm", "tts", "image"}
    assert "speedup" in result.stderr
    assert (tmp_path / "out" / "report.html").is_file() and report_copy.with_suffix(
        ".html").is_file()


def test_ctrl_c_cancels_and_still_writes_the_report(tmp_path: Path) -> None:
    cli = Running("run", "--premise", "A slow heist", "--scenes", "8",
                  "--output", str(tmp_path / "out"), "--latency-scale", "3")
    # The progress lines show it started.
    wait_for(lambda: cli.alive() and "running" in cli.said(), 60,
             lambda: "the run to start: " + cli.said()[-2000:], interval=0.1)
    cli.proc.send_signal(signal.SIGINT)
    assert cli.wait(timeout=60) == 130
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    [episode] = report["episodes"]
    assert episode["status"] == "cancelled" and episode["scenes_completed"] < 8


def test_a_killed_coordinator_comes_back_and_the_run_completes(tmp_path: Path) -> None:
    """It used to end in an ActorDiedError traceback, exit 1 and no report; then in a report of
    lost episodes. Ray restarts the coordinator, which takes them up from the state store."""
    cli = Running("run", "--premise", "A slow heist", "--scenes", "4", "--episodes", "2",
                  "--script-only", "--output", str(tmp_path / "out"), "--latency-scale", "1")

    def coordinator() -> list[int]:
        cli.alive()
        return [pid for pid in descendants(cli.proc.pid)
                if cmdline_of(pid).startswith(b"ray::CoordinatorActor")]

    wait_for(lambda: "running" in cli.said() and coordinator(), 60,
             lambda: "the run to start: " + cli.said()[-2000:], interval=0.1)
    os.kill(coordinator()[0], signal.SIGKILL)
    assert cli.wait(timeout=180) == 0, cli.said()[-3000:]
    assert "Traceback" not in cli.said(), cli.said()[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [e["status"] for e in report["episodes"]] == ["completed", "completed"]
    for entry in report["episodes"]:
        assert Path(entry["output_dir"], "script.md").is_file()


# -- crash and resume: the state store outlives the run ---------------------------------------

SLOW_RUN = ("run", "--premise", "A slow heist", "--episodes", "2", "--scenes", "5", "--lines",
            "1", "--script-only", "--latency-scale", "2")
NODES = 1 + 2 * 5  # an outline, and a content and a dialogue per scene: one LLM call each


def test_a_killed_run_goes_on_from_its_stored_nodes(tmp_path: Path) -> None:
    """(``showrunner resume``; the same command again takes the same path: see
    test_cli_storage and bench.chaos.)"""
    out = tmp_path / "out"
    command = (*SLOW_RUN, "--output", str(out))
    cli = Running(*command)

    def some_stored() -> list[dict]:  # some nodes of each are stored, and neither is over
        cli.alive()
        episodes = listing(out) if (out / "showrunner.db").exists() else []
        return episodes if len(episodes) == 2 and all(
            20 <= e["percent"] < 100 for e in episodes) else []

    before = wait_for(some_stored, 90, lambda: "nodes stored: " + cli.said()[-2000:],
                      interval=0.2)
    cli.kill_group()
    stored = {e["id"]: round(e["percent"] * NODES / 100) for e in listing(out)}
    assert {e["status"] for e in listing(out)} <= {"queued", "running"}  # left unfinished

    result = showrunner("resume", "--output", str(out), "--latency-scale", "0.2", timeout=180)
    assert "2 episode(s) unfinished on this storage, taken up" in result.stderr
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert [e["id"] for e in report["episodes"]] == [e["id"] for e in before]  # the same ids
    assert [e["status"] for e in report["episodes"]] == ["completed", "completed"]
    kept = {}
    for episode in stored:
        shown = details(out, episode)
        assert shown["status"] == "completed" and Path(shown["files"]["script.md"]).is_file()
        [(made, total)] = [TAKEN_UP.fullmatch(e["message"]).groups() for e in shown["events"]
                           if TAKEN_UP.fullmatch(e["message"])]
        assert int(total) == NODES and int(made) >= stored[episode]
        kept[episode] = int(made)
    # What was stored was not asked for again: one call for each node that was not (paid, or
    # answered by the cache: a node answered just before the kill, but not yet stored).
    llm = report["totals"]["providers"]["llm"]
    assert llm["calls"] + llm["cache_hits"] == sum(NODES - k for k in kept.values())


def test_cancel_from_another_process_ends_the_episode_in_the_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cli = Running("run", "--premise", "A slow heist", "--scenes", "8", "--lines", "1",
                  "--script-only", "--latency-scale", "2", "--output", str(out))

    def running() -> str | None:
        cli.alive()
        episodes = listing(out) if (out / "showrunner.db").exists() else []
        return episodes[0]["id"] if episodes and episodes[0]["status"] == "running" else None

    episode = wait_for(running, 90, lambda: "the run to start: " + cli.said()[-2000:],
                       interval=0.2)
    cancel = showrunner("cancel", episode, "--output", str(out))
    assert (cancel.returncode, cancel.stdout.strip()) == (0, f"{episode}: cancelled"), (
        cancel.stderr)
    assert cli.wait(timeout=30) == 1, cli.said()[-3000:]  # an episode did not complete
    [entry] = json.loads((out / "report.json").read_text())["episodes"]
    assert entry["id"] == episode and entry["status"] == "cancelled"
    assert entry["scenes_completed"] < 8
    assert details(out, episode)["status"] == "cancelled"
