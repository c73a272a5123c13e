"""``showrunner list``, ``status`` and ``cancel`` read the store a run left, with no Ray; the
same run command again shows what is done instead of paying for it. No timing is asserted here:
``make test`` runs this module beside the Ray lane."""

from __future__ import annotations

import json
from pathlib import Path

from tests.commands.cli_runs import showrunner


def test_status_list_and_cancel_read_the_store(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # Without --output, a run writes under the storage setting.
    command = ("run", "--premise", "A bakery heist.", "--scenes", "2", "--lines", "1",
               "--script-only", "--latency-scale", "0")
    storage = {"SHOWRUNNER_STORAGE": str(out)}
    made = showrunner(*command, env=storage, timeout=180)
    assert made.returncode == 0, made.stderr[-3000:]
    first = json.loads((out / "report.json").read_text())
    [episode] = [e["id"] for e in first["episodes"]]
    assert Path(first["episodes"][0]["output_dir"]).parent == out
    # The same command again: the same episode, shown as it is, nothing paid again.
    again = showrunner(*command, env=storage, timeout=180)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"1 episode(s) already completed on this storage, shown as they are: {episode}" in (
        again.stderr)
    report = json.loads((out / "report.json").read_text())
    assert [e["id"] for e in report["episodes"]] == [episode]
    assert report["totals"]["providers"]["llm"]["calls"] == 0

    plain = showrunner("list", "--output", str(out))
    [line] = plain.stdout.splitlines()
    assert line.split()[:4] == [episode, "completed", "2", "scenes"] and "A bakery heist." in line
    [row] = json.loads(showrunner("list", "--json", "--output", str(out)).stdout)
    assert row["id"] == episode and row["status"] == "completed" and row["scenes"] == 2
    status = showrunner("status", episode, "--output", str(out))
    assert f"episode   {episode}: completed, 100.0%" in status.stdout
    assert "scenes    done 1-2" in status.stdout

    cancel = showrunner("cancel", episode, "--output", str(out))
    assert (cancel.returncode, cancel.stdout.strip()) == (0, f"{episode}: already completed")
    unknown = showrunner("cancel", "0123456789ab", "--output", str(out))
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == f"showrunner: error: no episode 0123456789ab in {out}"
    nothing = tmp_path / "nothing"
    for args in (["list"], ["status"], ["cancel", episode]):
        result = showrunner(*args, "--output", str(nothing))
        assert result.stderr.strip().endswith(f"no episodes in {nothing}: nothing has run there")
        assert "Traceback" not in result.stderr
    assert not nothing.exists()
