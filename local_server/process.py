"""Run the bundled server as a child process: for the CLI, the tests and the benchmarks.

A separate process, so it is a real HTTP peer with its own CPU, as a provider would be.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

START_TIMEOUT_S = 30.0


class LocalServerError(RuntimeError):
    """The server could not be started."""


def _flags(options: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for name, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    return args


class LocalServer:
    """``with LocalServer(latency_scale=0, llm_rpm=600) as s: s.base_url``.

    Keyword arguments are the server's flags (``llm_rpm`` is ``--llm-rpm``). On exit the child is
    terminated, then killed if it lingers: no orphan survives.
    """

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.url = ""
        self._proc: subprocess.Popen[str] | None = None
        self._stderr = tempfile.TemporaryFile(mode="w+")

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "local_server", "--port", "0", *_flags(self.options)],
            stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env,
        )
        assert self._proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self._proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + START_TIMEOUT_S
        line = ""
        while time.monotonic() < deadline and not line:
            if selector.select(timeout=0.1):
                line = self._proc.stdout.readline()
                if not line:  # EOF: the child died
                    break
        selector.close()
        if not line.startswith("listening on "):
            self.stop()
            self._stderr.seek(0)
            raise LocalServerError(
                f"the local server did not start: {self._stderr.read()[-2000:] or line}"
            )
        self.url = line.split("listening on ", 1)[1].strip()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/stats", timeout=10) as response:
            return json.loads(response.read())

    def reset_stats(self) -> dict[str, Any]:
        request = urllib.request.Request(f"{self.url}/stats", method="DELETE")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
