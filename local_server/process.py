"""Run the bundled server as a child process: for the CLI, the tests and the benchmarks.

A separate process, so it is a real HTTP peer with its own CPU and event loop, as a provider is:
a client measured against it does not share its loop with the referee.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import IO, Any

START_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0


class LocalServerError(RuntimeError):
    """The server could not be started (the message holds the end of its stderr)."""


def _known_flags() -> set[str]:
    from local_server.cli import add_arguments

    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    return {s for action in parser._actions for s in action.option_strings}


def flags_of(options: dict[str, Any]) -> list[str]:
    """Keyword options as command-line flags: ``llm_rpm=600`` → ``--llm-rpm 600``; ``True`` is
    a bare switch; ``None`` and ``False`` are left out."""
    args: list[str] = []
    for name, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    return args


class LocalServer:
    """``with LocalServer(latency_scale=0, llm_rpm=600) as server: server.base_url``.

    Keyword arguments are the server's flags (``llm_rpm`` is ``--llm-rpm``; see
    ``python -m local_server --help``); an unknown one is a ``TypeError`` here rather than a
    child that fails to start. The port is always picked free. On exit the child is terminated,
    then killed if it lingers: no orphan survives.
    """

    def __init__(self, *, start_timeout_s: float = START_TIMEOUT_S, **options: Any) -> None:
        if "port" in options:
            raise TypeError("LocalServer always picks a free port; read it from .url or .port")
        known = _known_flags()
        unknown = sorted(n for n in options if "--" + n.replace("_", "-") not in known)
        if unknown:
            raise TypeError(f"LocalServer got unknown options {unknown}; see "
                            "python -m local_server --help")
        self.options = options
        self.start_timeout_s = start_timeout_s
        self.url = ""  # http://127.0.0.1:PORT once started
        self.returncode: int | None = None  # the child's, once stopped (0: a clean SIGTERM)
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as ``base_url``."""
        return f"{self.url}/v1"

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1]) if self.url else 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the child and wait for its ``listening on`` line."""
        if self._proc is not None:
            raise RuntimeError("this LocalServer is already running")
        self.returncode = None
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "local_server", "--port", "0", *flags_of(self.options)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        line = self._first_line(self._proc)
        if not line.startswith("listening on "):
            self._stderr.seek(0)
            reason = self._stderr.read()[-2000:].strip() or line.strip() or "no output"
            code = self._proc.poll()
            self.stop()
            state = f"exited with {code}" if code is not None else (
                f"said nothing in {self.start_timeout_s:g} s")
            raise LocalServerError(f"the local server did not start ({state}): {reason}")
        self.url = line.split("listening on ", 1)[1].strip()

    def _first_line(self, proc: subprocess.Popen[str]) -> str:
        assert proc.stdout is not None
        deadline = time.monotonic() + self.start_timeout_s
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            while (left := deadline - time.monotonic()) > 0:
                if selector.select(timeout=min(left, 0.1)):
                    return proc.stdout.readline()  # "" at EOF: the child died
                if proc.poll() is not None:
                    return ""
        return ""

    def stop(self) -> None:
        """Terminate the child (SIGTERM, then SIGKILL after a grace period) and reap it."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self.returncode = proc.returncode
            if proc.stdout is not None:
                proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    # -- the server's counters ------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """``GET /stats``: counters per endpoint (``accepted``, ``rate_limited``, ...)."""
        return self._stats("GET")

    def reset_stats(self) -> dict[str, Any]:
        """``DELETE /stats``: zero the counters (between benchmark phases); returns them."""
        return self._stats("DELETE")

    def _stats(self, method: str) -> dict[str, Any]:
        if not self.url:
            raise RuntimeError("the local server is not running")
        request = urllib.request.Request(f"{self.url}/stats", method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
