"""Run the bundled server as a child process: for the CLI, the tests and the benchmarks.

A separate process, so it is a real HTTP peer with its own CPU and event loop, as a provider is:
a client measured against it does not share its loop with the referee.

The child dies with its parent, however the parent ends: ``stop`` ends it cleanly, and on Linux
the kernel kills it when the parent dies without a word (SIGKILL, a crash), through the parent-
death signal (``prctl(PR_SET_PDEATHSIG)``, as Ray does for its own processes). That signal fires
when the *thread* that started the child ends, not the process, so children are started from a
thread that lives as long as the process: the main thread, or one kept for the purpose.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import queue
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future
from typing import IO, Any, TypeVar

START_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
T = TypeVar("T")


class LocalServerError(RuntimeError):
    """The server could not be started (the message holds the end of its stderr)."""


def _known_flags() -> set[str]:
    from local_server.cli import add_arguments

    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    return {s for action in parser._actions for s in action.option_strings}


def flags_of(options: dict[str, Any]) -> list[str]:
    """Keyword options as command-line flags: ``llm_rpm=600`` → ``--llm-rpm 600``; ``True`` is
    a bare switch; a list or tuple is comma-separated (``models=["a", "b"]`` → ``--models a,b``);
    ``None`` and ``False`` are left out."""
    args: list[str] = []
    for name, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif isinstance(value, list | tuple):
            args += [flag, ",".join(map(str, value))]
        else:
            args += [flag, str(value)]
    return args


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` after which the kernel SIGKILLs the child when its parent dies; ``None``
    where there is no ``prctl`` (not Linux), which leaves ``stop`` as the only way out.

    ``prctl`` is looked up here, in the parent: between fork and exec the child only calls it.
    A parent that dies before the call sends no signal, so the child checks it still has the
    parent it was forked from, and kills itself if not.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                      ctypes.c_ulong]
    parent = os.getpid()

    def set_death_signal() -> None:
        if prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return set_death_signal


class LastingThread:
    """Runs calls on a thread that ends only with the process: the thread to fork children from
    when their parent-death signal must mean the process's death, not a passing thread's (a
    thread pool's worker, an actor's executor, a thread made to start a server)."""

    def __init__(self) -> None:
        self.forget()

    def forget(self) -> None:
        """Start afresh: after a fork the child has only the forking thread, so the kept thread
        (and whoever held the lock) stayed behind in the parent."""
        self._lock = threading.Lock()
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = (
            queue.SimpleQueue())
        self._thread: threading.Thread | None = None

    def run(self, call: Callable[[], T]) -> T:
        """``call()``, run on the main thread (which ends with the process) or the kept one."""
        if threading.current_thread() is threading.main_thread():
            return call()
        future: Future[T] = Future()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="child-starter",
                                                daemon=True)
                self._thread.start()
            self._calls.put((call, future))
        return future.result()

    def _serve(self) -> None:
        while True:
            call, future = self._calls.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(call())
                except BaseException as err:  # the caller's to handle, on its own thread
                    future.set_exception(err)


_starter = LastingThread()
os.register_at_fork(after_in_child=_starter.forget)


def start_child(args: list[str], **popen: Any) -> subprocess.Popen[str]:
    """``subprocess.Popen(args, **popen)`` for a child that dies with this process."""
    return _starter.run(lambda: subprocess.Popen(args, preexec_fn=die_with_parent(), **popen))


class LocalServer:
    """``with LocalServer(latency_scale=0, llm_rpm=600) as server: server.base_url``.

    Keyword arguments are the server's flags (``llm_rpm`` is ``--llm-rpm``; see
    ``python -m local_server --help``); an unknown one is a ``TypeError`` here rather than a
    child that fails to start. The port is always picked free. On exit the child is terminated,
    then killed if it lingers; if this process dies first, the kernel kills the child (Linux):
    no orphan survives.
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
        self._proc = start_child(
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
