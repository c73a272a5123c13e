"""``showrunner serve``: bad input stops at start; a real start serves, the studio page and Ray's
dashboard on loopback too; Ctrl-C and SIGTERM stop it and every Ray process it started. What
only the CLI's own Ray can show is here too: uvicorn's own answers (in Serve's proxy) in the
API's JSON shape, and bodies that stall answered 408.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.commands.cli_runs import ROOT, showrunner
from tests.support import free_port, wait_for

pytestmark = pytest.mark.integration

KEY = "serve-cli-0123456789abcdef"


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["serve", "--host", "0.0.0.0"], {}, "refusing to listen on 0.0.0.0"),
        (["serve"], {"SHOWRUNNER_API_KEYS": "short"}, "shorter than 16"),
        (["serve"], {"SHOWRUNNER_API_KEYS_FILE": "/nonexistent/keys"}, "cannot read"),
        (["serve", "--port", "70000"], {}, "port"),
        (["serve", "--latency-scale", "-2"], {}, "local_latency_scale"),
    ],
)
def test_bad_serve_input_is_one_line_and_exit_2(args: list[str], env: dict[str, str],
                                                needle: str) -> None:
    result = showrunner(*args, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.stderr


@contextlib.contextmanager
def serving(tmp_path: Path, **env: str) -> Iterator[tuple[str, list[str], subprocess.Popen]]:
    """``showrunner serve`` on a free port until it says where; killed if a test fails."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SHOWRUNNER_", "RAY_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "showrunner", "serve", "--port", str(port), "--latency-scale", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env={**clean, "PYTHONPATH": str(ROOT),
             "SHOWRUNNER_STORAGE": str(tmp_path / "episodes"), **env},
        start_new_session=True,
    )
    seen: list[str] = []
    threading.Thread(target=lambda: seen.extend(iter(proc.stdout.readline, "")),
                     daemon=True).start()
    def listening() -> bool:
        assert proc.poll() is None, "".join(seen)[-3000:]
        return any("Showrunner API on" in line for line in seen)

    try:
        wait_for(listening, 120, lambda: "the API to listen: " + "".join(seen)[-3000:], 0.2)
        yield f"http://127.0.0.1:{port}", seen, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid, _ in session_processes(proc.pid):  # what it left behind, if a test failed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def session_processes(session: int) -> list[tuple[int, str]]:
    """Live processes of a session (``serving`` starts one per server): Ray's GCS, raylet,
    agents and workers all stay in it. Zombies are not counted: nothing runs in them."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        state, _ppid, _group, sid = stat.rpartition(")")[2].split()[:4]
        if int(sid) == session and state != "Z":
            found.append((int(entry.name), cmdline.replace(b"\0", b" ").decode(errors="replace")))
    return found


def test_serve_answers_over_http_and_sigterm_stops_every_ray_process(tmp_path: Path) -> None:
    """SIGTERM is how Kubernetes and ``ray job stop`` end it: as Ctrl-C does (the last test
    below), and nothing left running."""
    with serving(tmp_path, SHOWRUNNER_API_KEYS=KEY) as (base, seen, proc):
        auth = {"Authorization": f"Bearer {KEY}"}
        made = requests.post(f"{base}/v1/episodes", headers=auth, timeout=30, json={
            "premise": "A robot learns to knit.", "scenes": 2, "lines_per_scene": 1,
            "media": False})
        assert made.status_code == 202, made.text
        url = base + made.json()["links"]["self"]

        def ended() -> str | None:
            status = requests.get(url, headers=auth, timeout=10).json()["status"]
            return None if status in ("queued", "running") else status

        assert wait_for(ended, 60, "the episode to end", interval=0.2) == "completed"
        assert requests.get(url, timeout=10).status_code == 401
        assert len(session_processes(proc.pid)) > 3  # GCS, raylet, agents, workers
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, "".join(seen)[-3000:]
        output = "".join(seen)
        assert "stopping" in output and "SIGTERM received" not in output, output[-3000:]
        wait_for(lambda: not session_processes(proc.pid), 20,
                 lambda: f"Ray's processes to end: {session_processes(proc.pid)}")


# -- one keyless server for what needs the CLI's own Ray ----------------------------------------

BODY_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def keyless_server(tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[tuple[str, list[str], subprocess.Popen[str]]]:
    """``showrunner serve`` without keys (loopback clients are one tenant), bodies timing out
    after ``BODY_TIMEOUT_S``; the module's last test stops it with Ctrl-C."""
    with serving(tmp_path_factory.mktemp("keyless"),
                 SHOWRUNNER_SERVICE__BODY_TIMEOUT_S=str(BODY_TIMEOUT_S)) as started:
        assert any("no API keys configured" in line for line in started[1])
        yield started


@pytest.fixture
def keyless(keyless_server: tuple[str, list[str], subprocess.Popen[str]]) -> str:
    base, _, proc = keyless_server
    assert proc.poll() is None, "the keyless server was stopped by an earlier test"
    return base


def test_without_keys_it_serves_this_machine_as_one_tenant(keyless: str) -> None:
    listed = requests.get(f"{keyless}/v1/episodes", timeout=10)
    assert listed.status_code == 200 and listed.json()["episodes"] == []


def test_it_starts_rays_dashboard_on_loopback_and_the_page_links_to_it(
        keyless_server: tuple[str, list[str], subprocess.Popen[str]]) -> None:
    base, seen, _ = keyless_server
    lines = [line for line in seen if line.startswith("Ray dashboard: ")]
    assert lines, "".join(seen)[-3000:]
    address = lines[0].split()[2]
    assert address.startswith("http://127.0.0.1:"), lines[0]  # it runs code: loopback only
    assert "ray get-auth-token" in lines[0]  # how to sign in to it
    dashboard = requests.get(address, timeout=10)
    assert dashboard.status_code == 200 and "<html" in dashboard.text.lower()
    me = requests.get(f"{base}/v1/whoami", timeout=10).json()
    assert me["keyless"] is True and me["dashboard_url"] == address
    page = requests.get(f"{base}/", timeout=10)
    assert page.status_code == 200 and 'type="module"' in page.text


def exchange(base: str, data: bytes, timeout_s: float = 10) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read until the server closes the connection: status, headers, body."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.sendall(data)
        return read_answer(sock)


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    received = b""
    while chunk := sock.recv(65536):  # a timeout here: the server kept the connection open
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}, body


MALFORMED: list[tuple[str, bytes, str]] = [
    # (case, request, what the message must say); uvicorn answers these before any app runs
    ("bad request line", b"GARBAGE\r\n\r\n", "Invalid method"),
    ("space in a header name", b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
     "header"),
    ("control byte in a header value",
     b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n", "header value"),
    ("5001-digit Content-Length", b"POST /v1/episodes HTTP/1.1\r\nHost: x\r\nContent-Length: "
     + b"7" * 5001 + b"\r\n\r\n", "Content-Length"),
    ("two Content-Lengths", b"POST /v1/episodes HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
     b"Content-Length: 2\r\n\r\n{}", "Content-Length"),
]


@pytest.mark.parametrize(("case", "request_bytes", "named"), MALFORMED,
                         ids=[c[0] for c in MALFORMED])
def test_uvicorns_own_answers_are_json(keyless: str, case: str, request_bytes: bytes,
                                       named: str) -> None:
    status, headers, body = exchange(keyless, request_bytes)
    assert status == 400 and headers["content-type"] == "application/json", body
    error = json.loads(body)["error"]
    assert error["status"] == 400 and error["code"] == "bad_request", error
    assert "Invalid HTTP request" in error["message"] and named in error["message"], error
    assert int(headers["content-length"]) == len(body)


def test_bodies_that_stall_are_408_and_their_connections_closed(keyless: str) -> None:
    """30 clients each send headers and part of a body, then nothing: each is answered 408
    once ``body_timeout_s`` has passed, and its connection is closed (read to EOF)."""
    host, port = keyless.removeprefix("http://").split(":")
    sized = (b"POST /v1/episodes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Content-Length: 200\r\n\r\n{\"premise\": \"slow")
    chunked = (b"POST /v1/episodes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"pre\r\n")
    socks = []
    try:
        for i in range(30):
            sock = socket.create_connection((host, int(port)), timeout=5 * BODY_TIMEOUT_S + 10)
            socks.append(sock)
            sock.sendall(chunked if i % 3 == 0 else sized)
        for sock in socks:
            status, headers, body = read_answer(sock)
            assert status == 408 and headers["content-type"] == "application/json", body
            error = json.loads(body)["error"]
            assert error["code"] == "body_timeout" and f"{BODY_TIMEOUT_S} s" in error["message"]
    finally:
        for sock in socks:
            sock.close()
    fine = requests.post(f"{keyless}/v1/episodes", timeout=30, json={
        "premise": "A kite that will not come down.", "scenes": 1, "lines_per_scene": 1,
        "media": False})
    assert fine.status_code == 202, fine.text


def test_ctrl_c_stops_the_service_and_every_ray_process(
        keyless_server: tuple[str, list[str], subprocess.Popen[str]]) -> None:
    """Last in the module: it stops the server the tests above shared."""
    _, seen, proc = keyless_server
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0, "".join(seen)[-3000:]
    wait_for(lambda: not session_processes(proc.pid), 20,
             lambda: f"Ray's processes to end: {session_processes(proc.pid)}")
