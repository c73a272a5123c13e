"""The ``showrunner`` command as a user runs it: bad input refused cleanly, runs write files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support import cmdline_of, descendants, wait_for

ROOT = Path(__file__).parents[2]


def showrunner(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SHOWRUNNER_", "RAY_"))}
    return subprocess.run(
        [sys.executable, "-m", "showrunner", *args], capture_output=True, text=True,
        env={**clean, **(env or {}), "PYTHONPATH": str(ROOT)}, cwd=cwd or ROOT, timeout=timeout,
    )


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
    assert "storage = 's3://bucket/episodes': object storage is not supported yet" in line
    # Without --output, the run writes under the storage setting, so its errors name it.
    result = showrunner(*run, env={"SHOWRUNNER_STORAGE": str(a_file)})
    assert result.returncode == 2
    message = f"showrunner: error: cannot create output directory {a_file}: File exists"
    assert result.stderr.strip() == message


def test_runs_write_under_the_storage_setting_without_output(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    result = showrunner("run", "--premise", "A bakery heist.", "--scenes", "1", "--lines", "1",
                        "--script-only", "--latency-scale", "0",
                        env={"SHOWRUNNER_STORAGE": str(storage)}, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    [episode] = json.loads((storage / "report.json").read_text())["episodes"]
    assert Path(episode["output_dir"]).parent == storage


def test_run_writes_screenplays_and_a_report(tmp_path: Path) -> None:
    premises = tmp_path / "premises.txt"
    premises.write_text('A lighthouse in a storm.\n{"premise": "A bakery heist.", "scenes": 2}\n')
    report_copy = tmp_path / "copy.json"
    result = showrunner(
        "run", "--premises-file", str(premises), "--scenes", "3", "--lines", "2",
        "--output", str(tmp_path / "out"), "--report", str(report_copy),
        "--latency-scale", "0.02", timeout=180,
        env={"SHOWRUNNER_STORAGE": str(tmp_path / "storage")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "storage").exists()  # --output wins over the setting
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report == json.loads(report_copy.read_text())
    assert set(report["totals"]) >= {
        "wall_s", "sequential_s", "speedup", "parallel_efficiency", "lower_bound_s",
        "bottleneck", "cost_usd", "providers",
    }
    assert set(report["totals"]["providers"]["llm"]) == {
        "calls", "ok", "rate_limited", "retries", "errors", "tokens_in", "tokens_out",
        "cost_usd", "limiter_wait_s",
    }
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


def test_ctrl_c_cancels_and_still_writes_the_report(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SHOWRUNNER_", "RAY_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "showrunner", "run", "--premise", "A slow heist", "--scenes", "8",
         "--output", str(tmp_path / "out"), "--latency-scale", "3"],
        stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**clean, "PYTHONPATH": str(ROOT)},
    )
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(proc.stderr.readline, "")),
                              daemon=True)
    reader.start()

    def started() -> bool:  # the progress bar shows it started
        assert proc.poll() is None, "".join(seen)[-2000:]
        return any("running" in line for line in seen)

    wait_for(started, 60, lambda: "the run to start: " + "".join(seen)[-2000:], interval=0.1)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    [episode] = report["episodes"]
    assert episode["status"] == "cancelled" and episode["scenes_completed"] < 8


def test_a_killed_coordinator_comes_back_and_the_run_completes(tmp_path: Path) -> None:
    """It used to end in an ActorDiedError traceback, exit 1 and no report; then in a report of
    lost episodes. Ray restarts the coordinator, which takes them up from the state store."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SHOWRUNNER_", "RAY_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "showrunner", "run", "--premise", "A slow heist", "--scenes", "8",
         "--episodes", "2", "--script-only", "--output", str(tmp_path / "out"),
         "--latency-scale", "2"],
        stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**clean, "PYTHONPATH": str(ROOT)},
    )
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(proc.stderr.readline, "")),
                              daemon=True)
    reader.start()

    def coordinator() -> list[int]:
        assert proc.poll() is None, "".join(seen)[-2000:]
        return [pid for pid in descendants(proc.pid)
                if cmdline_of(pid).startswith(b"ray::EpisodeCoordinator")]

    wait_for(lambda: any("running" in line for line in seen) and coordinator(), 60,
             lambda: "the run to start: " + "".join(seen)[-2000:], interval=0.1)
    os.kill(coordinator()[0], signal.SIGKILL)
    assert proc.wait(timeout=180) == 0, "".join(seen)[-3000:]
    reader.join(timeout=10)
    assert "Traceback" not in "".join(seen), "".join(seen)[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [e["status"] for e in report["episodes"]] == ["completed", "completed"]
    for entry in report["episodes"]:
        assert Path(entry["output_dir"], "script.md").is_file()
