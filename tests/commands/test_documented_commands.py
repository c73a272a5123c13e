"""The documents' shell blocks, run as a reader runs them: pasted into a fresh shell.

Which blocks: those ``RUN_IN_TESTS`` in ``tests/markdown_blocks.py`` names (the one-machine
cluster of docs/cluster.md, with ``ray start``, token authentication and ``ray job submit``; the
README's settings for a real provider). Every other shell block says above its fence why it is
not run, and the unit test of the same name fails for one that does not.

How: each block is read from the document as it stands, written to a script and run by
``bash -e`` (it stops at the first failing command, which a reader would notice), from the root
of a copy of this checkout whose ``.venv`` is this virtualenv, with a fresh ``HOME`` (no
``~/.ray/auth_token``: a fresh machine's, and the user's own token is neither read nor made),
``TMPDIR`` of its own, no ``RAY_*``, ``SHOWRUNNER_*`` or virtualenv variables, and this
virtualenv off ``PATH``, as in a new terminal. The only edits: the cluster's fixed ports and temp
dir become free ones, so that it runs beside the suite's session Ray (``ray_session``, in this
very process) and any other Ray on the machine, and never reads or writes theirs.

Every process a block starts inherits a marker in its environment; whatever still carries it when
the test ends is killed, so a failing block leaves no Ray behind. ``ray stop`` is never used: it
stops every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.markdown_blocks import AWAITING_MARKERS, RUN_IN_TESTS, classify, documented_blocks
from tests.support import marked_processes, unavailable, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
VENV = Path(sys.prefix)
MARKER = "DOCS_TEST_RUN"  # neither RAY_ (stripped) nor SHOWRUNNER_ (read as a setting)
TESTED = {"one-machine-cluster", "real-provider-settings"}  # the names the tests below run
# Left out of the copy: what .gitignore names, caches and git's own folder. The block's own
# `.venv` is a link to this virtualenv instead of one it would take minutes to install.
NOT_COPIED = shutil.ignore_patterns(".venv", ".git", "out", "__pycache__", "*.egg-info",
                                    ".pytest_cache", ".ruff_cache", ".hypothesis", ".mypy_cache",
                                    ".import_linter_cache", "build", "*.pyc")
CLUSTER_TIMEOUT_S = 300.0  # 35-40 s; the rest is for a machine busy with other tests
SETTINGS_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 30.0
PORTS_FROM = 20000
PORT_TRIES = 50


@dataclass(frozen=True)
class Ran:
    """What a block did: its exit code and what it printed."""

    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return f"{self.stdout}\n{self.stderr}"

    def tail(self) -> str:
        """The end of each stream, for a failure's message (Ray logs to stderr)."""
        return f"stdout:\n{self.stdout[-2000:]}\nstderr:\n{self.stderr[-3000:]}"


@dataclass(frozen=True)
class Shell:
    """A fresh shell in a copy of the checkout; ``run`` runs a block there."""

    repo: Path
    home: Path
    scratch: Path  # short: Ray's unix sockets live under a temp dir given here (~107 bytes)
    marker: str

    def env(self) -> dict[str, str]:
        venv_bin = (VENV / "bin").resolve()
        env = {name: value for name, value in os.environ.items()
               if not name.startswith(("RAY_", "SHOWRUNNER_"))
               and name not in {"VIRTUAL_ENV", "VIRTUAL_ENV_PROMPT", "PYTHONPATH", "PYTHONHOME"}}
        # A new terminal has no virtualenv on PATH: a block that needs one must activate it.
        env["PATH"] = os.pathsep.join(
            part for part in env.get("PATH", "").split(os.pathsep)
            if part and Path(part).resolve() != venv_bin)
        env.update(HOME=str(self.home), TMPDIR=str(self.scratch), **{MARKER: self.marker})
        return env

    def run(self, script: str, timeout: float) -> Ran:
        path = self.scratch / "block.sh"
        path.write_text(script)
        stdout, stderr = self.scratch / "stdout", self.scratch / "stderr"
        # Files, not pipes: a background process of the block (`ray start --block &`) holds its
        # output open, and a pipe would keep us waiting for it after bash has ended.
        with stdout.open("wb") as out, stderr.open("wb") as err:
            proc = subprocess.Popen(["bash", "-e", str(path)], cwd=self.repo, env=self.env(),
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True)
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                code = -1
        ran = Ran(code, stdout.read_text(errors="replace"), stderr.read_text(errors="replace"))
        assert code != -1, f"the block did not end within {timeout:g} s:\n{ran.tail()}"
        return ran

    def pids(self) -> list[int]:
        return marked_processes(f"{MARKER}={self.marker}")


def free_ports(count: int) -> list[int]:
    """Ports free now, from below the kernel's ephemeral range and above Ray's worker ports
    (10002-19999). A port the kernel handed out (``bind(0)``) could be given again to any
    outgoing connection in the seconds before ``ray start`` binds it; these are never."""
    first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    candidates = random.sample(range(PORTS_FROM, first_ephemeral), k=PORT_TRIES)
    with contextlib.ExitStack() as held:  # held together, so none is picked twice
        ports: list[int] = []
        for port in candidates:
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                sock.bind(("", port))
            except OSError:
                continue  # taken
            ports.append(port)
            if len(ports) == count:
                return ports
    raise AssertionError(f"no {count} free ports among {PORT_TRIES} tried")


def documented(name: str) -> str:
    """The named block's commands, as the document has them now."""
    found, problems = classify(documented_blocks(ROOT), RUN_IN_TESTS, AWAITING_MARKERS)
    assert name in found, "\n".join(problems)
    return found[name].script


def swap(script: str, literal: str, replacement: str) -> str:
    """``literal`` (a port, a path) replaced everywhere in the block, and only where it stands
    alone (not 6390 inside 16390); one left anywhere, say in a URL, fails here rather than as a
    wait for the wrong port."""
    word = re.compile(rf"(?<![\w.]){re.escape(literal)}(?!\w)")
    assert word.search(script), f"the block no longer has {literal!r}: update this test's swaps"
    swapped = word.sub(replacement, script)
    assert literal not in swapped, f"{literal!r} is left in the block:\n{swapped}"
    return swapped


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    if sys.prefix == sys.base_prefix or not (VENV / "bin" / "activate").is_file():
        unavailable("a virtualenv with bin/activate", "run the suite with .venv/bin/python")
    repo = tmp_path / "repo"
    shutil.copytree(ROOT, repo, ignore=NOT_COPIED, symlinks=True)
    (repo / ".venv").symlink_to(VENV, target_is_directory=True)
    home = tmp_path / "home"
    home.mkdir()
    scratch = Path(tempfile.mkdtemp(prefix="srd-", dir="/tmp"))
    fresh = Shell(repo, home, scratch, uuid.uuid4().hex)
    try:
        yield fresh
    finally:
        for pid in fresh.pids():  # only after a failure: a passing block stops what it starts
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(scratch, ignore_errors=True)


def test_every_block_named_to_run_is_run_here() -> None:
    assert set(RUN_IN_TESTS) == TESTED


def test_the_one_machine_cluster_runs_a_job_with_token_authentication(
        ray_session: None, shell: Shell) -> None:
    """With the suite's session Ray up, as it is in a whole run (its node agent holds Ray's
    default agent port, 52365: the recipe must not need it)."""
    if shutil.which("curl") is None:
        unavailable("curl, which the recipe polls the head with", "apt-get install curl")
    script = documented("one-machine-cluster")
    port, dashboard = free_ports(2)
    script = swap(script, "6390", str(port))
    script = swap(script, "8266", str(dashboard))
    # Not $TMPDIR/ray, Ray's default temp dir there: the head's is a folder of its own.
    head = shell.scratch / "head"
    script = swap(script, "/tmp/sr-ray", str(head))
    # What a checkout has that `--working-dir .` must not upload: a virtualenv (the copy's
    # .venv is a link to this one, hundreds of MB) and what .gitignore names.
    ignored = ["pipelines/__pycache__/planner.cpython-311.pyc", ".pytest_cache/README.md",
               "out/earlier/report.json"]
    for name in ignored:
        (shell.repo / name).parent.mkdir(parents=True, exist_ok=True)
        (shell.repo / name).write_text("not for the cluster")

    ran = shell.run(script, CLUSTER_TIMEOUT_S)

    assert ran.code == 0, ran.tail()
    assert re.search(r"Job '\S+' succeeded", ran.output), ran.tail()
    report_file = shell.repo / "out" / "report.json"
    [episode] = json.loads(report_file.read_text())["episodes"]
    assert (episode["status"], episode["scenes_completed"]) == ("completed", 2)
    assert (Path(episode["output_dir"]) / "script.md").is_file()
    assert f"Report:{report_file}" in "".join(ran.output.split())  # a long path may wrap
    # The fresh HOME had no token: the block made one, readable by its owner only, and the
    # head, the client and the job's driver all used it (else the job could not have run).
    token = shell.home / ".ray" / "auth_token"
    assert token.stat().st_mode & 0o777 == 0o600
    # The job ran in this cluster (its driver joined it through RAY_ADDRESS, rather than
    # starting a Ray of its own): the head's session has the run's actors' logs.
    logs = "".join(p.read_text(errors="replace")
                   for p in head.glob("session_latest/logs/worker-*.out"))
    assert ":actor_name:CoordinatorActor" in logs and ":actor_name:ProviderActor" in logs
    [unpacked] = head.glob("session_latest/runtime_resources/working_dir_files/*/")
    assert (unpacked / "showrunner" / "cli.py").is_file() and not (unpacked / ".venv").exists()
    assert [name for name in ignored if (unpacked / name).exists()] == []
    # `kill %1 && wait` stopped this head and everything it started.
    wait_for(lambda: not shell.pids(), EXIT_TIMEOUT_S,
             lambda: f"the cluster's processes to exit; left: {shell.pids()}")


def test_the_settings_for_a_real_provider_are_shown_with_the_key_masked(shell: Shell) -> None:
    ran = shell.run(documented("real-provider-settings"), SETTINGS_TIMEOUT_S)

    assert ran.code == 0, ran.tail()
    llm = json.loads(ran.stdout)["llm"]
    assert llm["base_url"] == "https://api.openai.com/v1"
    assert (llm["model"], llm["rpm"], llm["tpm"], llm["max_inflight"]) == (
        "gpt-6-luna", 500, 200000, 64)
    assert llm["api_key"] == "(set)"
    assert "sk-..." not in ran.output
