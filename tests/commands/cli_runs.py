"""Running the ``showrunner`` command as a user does: a clean environment (no ``SHOWRUNNER_``
or ``RAY_`` variable of this machine's), this checkout on the path."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parents[2]


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SHOWRUNNER_", "RAY_"))}
    return {**clean, **(extra or {}), "PYTHONPATH": str(ROOT)}


def showrunner(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "showrunner", *args], capture_output=True, text=True,
        env=_env(env), cwd=cwd or ROOT, timeout=timeout,
    )


# Small and fast media: the video is real (H.264, with sound), only tiny.
FAST_MEDIA = {"SHOWRUNNER_ENCODING__WIDTH": "320", "SHOWRUNNER_ENCODING__HEIGHT": "180",
              "SHOWRUNNER_ENCODING__FPS": "12", "SHOWRUNNER_ENCODING__X264_PRESET": "ultrafast"}


@dataclass(frozen=True)
class FinishedRun:
    base: Path  # the run's own temporary folder
    out: Path  # its --output: episodes, report.json, report.html
    report_copy: Path  # its --report FILE
    result: subprocess.CompletedProcess[str]


def finish_a_run(base: Path) -> FinishedRun:
    """Two episodes with media (3 and 2 scenes), a premise a line and a JSON line; the storage
    setting points elsewhere, which ``--output`` overrides."""
    premises = base / "premises.txt"
    premises.write_text('A lighthouse in a storm.\n{"premise": "A bakery heist.", "scenes": 2}\n')
    out, report_copy = base / "out", base / "copy.json"
    result = showrunner(
        "run", "--premises-file", str(premises), "--scenes", "3", "--lines", "2",
        "--output", str(out), "--report", str(report_copy), "--latency-scale", "0.02",
        timeout=240, env={**FAST_MEDIA, "SHOWRUNNER_STORAGE": str(base / "storage")})
    assert result.returncode == 0, result.stderr[-3000:]
    return FinishedRun(base, out, report_copy, result)
