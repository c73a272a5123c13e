"""Showrunner under faults and kills, with real processes: is every episode finished, is nothing
paid for twice? Each scenario runs small media episodes against its own bundled server:

- ``faults``: 10% 5xx, 5% hangs past the client's timeout, 5% malformed bodies, and 429 bursts
  (the server's chat and speech limits far below what the clients were told);
- ``coordinator``: the coordinator actor's process killed (``kill -9``) twice mid-run;
- ``provider``: the LLM provider actor's process killed while its calls are in flight;
- ``worker``: the Ray worker running a scene's composition killed (found by its process title);
- ``cli``: ``showrunner run`` started in its own session, its whole process group killed, then
  the same command run again on the same storage (stable ids: it goes on);
- ``service``: ``showrunner serve`` stopped (SIGTERM) mid-run and started again on the same
  storage, the episodes followed over HTTP.

Before them, always, ``clean``: the same episodes with nothing going wrong, the baseline.

Paid calls are counted by the server, body by body (``/stats``' ``paid`` and ``duplicate_paid``,
``local_server.billing``): a call paid for twice is seen even when the process that paid died.
Every scenario asks the same episodes, so sends the same bodies; a scenario's duplicates beyond
the clean run's are the ones its faults and kills cost. After each scenario finishes, the same
episodes are asked again (the same command, the same submission) and what that pays is
``rerun_paid_calls``. Prints a table, then, last, one JSON line: ``{"episodes", "completed",
"scenes_lost", "duplicate_paid_calls", "in_flight_at_kills", "resume_s", ...}`` (the chaos
scenarios' totals). Goals (printed, not asserted): every episode completed, no scene lost,
duplicates no more than the calls in flight at the kills, a killed coordinator calling again
within 5 s, and a re-run paying nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from rich.console import Console
from rich.table import Table

from bench.common import free_port
from local_server.process import LocalServer
from pipelines.episode_view import EpisodeView
from pipelines.models import EpisodeRequest, EpisodeStatus
from pipelines.settings import (
    EncodingSettings,
    ImageSettings,
    LLMSettings,
    ProviderKind,
    Settings,
    TTSSettings,
)
from pipelines.storage import Storage
from showrunner import launcher

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("clean", "faults", "coordinator", "provider", "worker", "cli", "service")
ENDPOINTS = ("chat", "speech", "image", "video")
SAMPLE_S = 0.02  # how often the server's counters are read: the precision of resume_s
SCENARIO_S = 240.0  # a scenario not over by then is reported as it stands
RESUME_GOAL_S = 5.0
# Small, cheap media: the point is what survives, not how fast 720p encodes on two cores.
ENCODING = {"width": 320, "height": 180, "fps": 8, "x264_preset": "ultrafast"}
MEDIA_SERVER = {"video_render_size": "320x180", "video_render_fps": 8}
PREMISES = ("A lighthouse keeper hides a smuggler", "Two rival bakers share one oven",
            "A night ferry loses its captain", "A radio host hears the past",
            "A gardener finds a map under the roses", "Twins swap jobs for a week")
UNLIMITED_RPM = 100_000  # what the clients are told where the server sets no limit


# -- the server's counters, watched ----------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    at: float
    arrived: dict[str, int]
    inflight: int
    paid: int
    duplicate_paid: int


def sample_of(stats: dict[str, Any], at: float) -> Sample:
    return Sample(at, {e: stats[e]["arrived"] for e in ENDPOINTS},
                  sum(stats[e]["inflight"] for e in ENDPOINTS),
                  sum(stats[e]["paid"] for e in ENDPOINTS),
                  sum(stats[e]["duplicate_paid"] for e in ENDPOINTS))


class Watch:
    """Reads the server's ``/stats`` every ``SAMPLE_S`` on a thread: when calls arrived (the
    first call after a kill), what was in flight and what was paid."""

    def __init__(self, server: LocalServer) -> None:
        self.server = server
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-watch", daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def now(self) -> Sample:
        return sample_of(self.server.stats(), time.monotonic())

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            with contextlib.suppress(OSError):
                self.samples.append(self.now())

    def first_arrival(self, after: float, baseline: int, endpoints: tuple[str, ...]
                      ) -> float | None:
        """When the first call after ``after`` arrived: the first sample whose arrivals at
        ``endpoints`` exceed ``baseline``."""
        for s in list(self.samples):
            if s.at >= after and sum(s.arrived[e] for e in endpoints) > baseline:
                return s.at
        return None


@dataclass
class Kill:
    """One kill: what, when, the calls in flight at the server just before it, and how long
    until the next call of the process that took over arrived.

    The next call is looked for from the moment a successor exists (``look_from``): the
    restarted actor's process appearing, or the relaunched command starting. Calls that arrive
    between the death and then are the dead process's own, sent just before it died and still
    on their way (``orphans``), not a sign that anything resumed.
    """

    what: str
    at: float
    in_flight: int
    arrived: int  # calls arrived at ``endpoints`` just after the kill
    endpoints: tuple[str, ...]
    coordinator_restart: bool = False  # Ray restarts the coordinator: a resume_s figure
    since: float | None = None
    baseline: int = 0
    relaunched: bool = False  # the successor was started by hand: counted from its start
    back_s: float | None = None

    @property
    def orphans(self) -> int:
        return self.baseline - self.arrived if self.since is not None else 0

    def look_from(self, watch: Watch, since: float | None = None, relaunched: bool = False
                  ) -> None:
        """A successor exists from ``since`` (now, if not given): its calls count from here."""
        self.since = time.monotonic() if since is None else since
        self.relaunched = relaunched
        self.baseline = sum(watch.now().arrived[e] for e in self.endpoints)

    def settle(self, watch: Watch) -> None:
        if self.endpoints and self.since is not None:
            first = watch.first_arrival(self.since, self.baseline, self.endpoints)
            start = self.since if self.relaunched else self.at
            self.back_s = None if first is None else first - start


def kill(watch: Watch, what: str, do: Callable[[], None], endpoints: tuple[str, ...] = ENDPOINTS,
         *, coordinator_restart: bool = False) -> Kill:
    """Read what is in flight, ``do`` the kill, read what had arrived."""
    before = watch.now()
    do()
    at = time.monotonic()
    after = watch.now()
    return Kill(what, at, before.inflight, sum(after.arrived[e] for e in endpoints), endpoints,
                coordinator_restart)


# -- what a scenario measured ----------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    requests: list[EpisodeRequest]
    statuses: list[str] = field(default_factory=list)
    paid: int = 0
    duplicate_paid: int = 0
    rerun_paid: int | None = None
    new_ids_paid: int | None = None  # the service: the same episodes under new ids
    kills: list[Kill] = field(default_factory=list)
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def completed(self) -> int:
        return self.statuses.count(EpisodeStatus.COMPLETED.value)

    @property
    def scenes_lost(self) -> int:
        done = self.statuses + ["missing"] * (len(self.requests) - len(self.statuses))
        return sum(r.scenes for r, s in zip(self.requests, done, strict=True)
                   if s != EpisodeStatus.COMPLETED.value)

    @property
    def in_flight(self) -> int:
        return sum(k.in_flight for k in self.kills)


def requests_of(args: argparse.Namespace) -> list[EpisodeRequest]:
    """The same episodes in every scenario, so every scenario sends the same bodies (the
    ``clean`` run's duplicates are then every scenario's baseline); distinct premises, since
    episodes asking the very same thing would send the same bodies."""
    return [EpisodeRequest(premise=f"{PREMISES[n % len(PREMISES)]}, part {n + 1}.",
                           scenes=args.scenes, lines_per_scene=args.lines)
            for n in range(args.episodes)]


def expected_calls(requests: list[EpisodeRequest]) -> int:
    """Paid calls of a clean run: an outline, then per scene a content, a dialogue, a picture
    and one speech per line (clips are made locally). What "mid-run" is measured against."""
    return sum(1 + r.scenes * (3 + r.lines_per_scene) for r in requests)


def wait_until(check: Callable[[], bool], timeout_s: float, interval: float = SAMPLE_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


# -- scenarios inside this process's Ray -----------------------------------------------------------


@dataclass
class Stage:
    """What an in-process scenario's chaos acts on, on its own thread while the run goes."""

    run: launcher.Run
    watch: Watch
    expected: int
    raylet: int | None
    outcome: Outcome
    finished: threading.Event = field(default_factory=threading.Event)

    def paid_share(self, share: float) -> bool:
        """Until ``share`` of the run's calls are paid; False if the run ended first."""
        return wait_until(lambda: self.finished.is_set()
                          or self.watch.now().paid >= share * self.expected, SCENARIO_S) \
            and not self.finished.is_set()


def actor_pid(actor: Any) -> int:
    """The actor's process (asked again while Ray restarts it)."""
    return ray.get(actor.__ray_call__.remote(lambda _: os.getpid()), timeout=60)


def titled(title: bytes, raylet: int | None) -> set[int]:
    """Processes of this benchmark's Ray node whose process title starts with ``title``: Ray
    names a worker after the actor or task it runs (``ray::CoordinatorActor``,
    ``ray::compose_scene``). Only those whose raylet is ours (Ray puts its pid in their
    environment): other Rays on this machine are not ours to kill. None without a raylet."""
    found: set[int] = set()
    if raylet is None:
        return found
    mark = f"RAY_RAYLET_PID={raylet}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "cmdline").read_bytes().startswith(title) and (
                    mark in (entry / "environ").read_bytes().split(b"\0")):
                found.add(int(entry.name))
    return found


def successor(stage: Stage, title: bytes, dead: set[int]) -> float | None:
    """When a process titled ``title`` that is not one of ``dead`` appeared: Ray has started
    the killed actor again."""
    seen: list[float] = []

    def appeared() -> bool:
        if titled(title, stage.raylet) - dead:
            seen.append(time.monotonic())
        return bool(seen) or stage.finished.is_set()

    wait_until(appeared, 60, interval=0.005)
    return seen[0] if seen else None


COORDINATOR_TITLE = b"ray::CoordinatorActor"
PROVIDER_TITLE = b"ray::ProviderActor"
COMPOSITION_TITLE = b"ray::compose_scene"


def kill_coordinator_twice(stage: Stage) -> None:
    for share in (0.25, 0.6):
        if not stage.paid_share(share):
            stage.outcome.notes.append(f"ended before {share:.0%} was paid: no kill")
            return
        pid = actor_pid(stage.run.coordinator)
        done = kill(stage.watch, "coordinator", lambda p=pid: os.kill(p, signal.SIGKILL),
                    coordinator_restart=True)
        stage.outcome.kills.append(done)
        done.look_from(stage.watch, successor(stage, COORDINATOR_TITLE, {pid}))
        # The next kill only once the restarted coordinator has called again.
        wait_until(lambda d=done: stage.finished.is_set() or stage.watch.first_arrival(
            d.since or d.at, d.baseline, d.endpoints) is not None, 60)


def kill_llm_actor(stage: Stage) -> None:
    pid = actor_pid(stage.run.providers[ProviderKind.LLM])
    if not stage.paid_share(0.2):
        stage.outcome.notes.append("ended before a fifth was paid: no kill")
        return
    wait_until(lambda: stage.finished.is_set()
               or stage.watch.server.stats()["chat"]["inflight"] > 0, 60)
    others = titled(PROVIDER_TITLE, stage.raylet)
    done = kill(stage.watch, "LLM actor", lambda: os.kill(pid, signal.SIGKILL), ("chat",))
    stage.outcome.kills.append(done)
    done.look_from(stage.watch, successor(stage, PROVIDER_TITLE, others))


def kill_a_composition(stage: Stage) -> None:
    busy: list[int] = []

    def composing() -> bool:
        busy[:] = titled(COMPOSITION_TITLE, stage.raylet)
        return bool(busy) or stage.finished.is_set()

    wait_until(composing, SCENARIO_S, interval=0.005)
    if not busy:
        stage.outcome.notes.append("no composition seen: no kill")
        return
    stage.outcome.kills.append(kill(stage.watch, "composing worker",
                                    lambda: os.kill(busy[0], signal.SIGKILL), ()))


def settings_for(args: argparse.Namespace, timeout_s: float = 60.0, attempts: int = 5,
                 llm_rpm: float | None = None, tts_rpm: float | None = None) -> Settings:
    def limits(rpm: float | None) -> dict[str, Any]:
        return {"rpm": rpm, "timeout_s": timeout_s, "max_attempts": attempts}

    # The default models, as the CLI's and the service's: the same bodies everywhere.
    return Settings(llm=LLMSettings(tpm=None, **limits(llm_rpm)),
                    tts=TTSSettings(**limits(tts_rpm)), image=ImageSettings(**limits(None)),
                    encoding=EncodingSettings(**ENCODING),
                    max_parallel_episodes=args.episodes, max_parallel_scenes=8)


def follow(run: launcher.Run, ids: list[str], deadline: float) -> list[EpisodeView]:
    """The episodes' views once all have finished (or as they are at ``deadline``), asked
    again while the coordinator restarts."""
    views: list[EpisodeView] = []
    while True:
        with contextlib.suppress(RayActorError, GetTimeoutError):
            views = ray.get(run.coordinator.views.remote(ids), timeout=30)
            if all(v.finished for v in views):
                return views
        if time.monotonic() > deadline:
            return views
        time.sleep(0.1)


def in_process(name: str, args: argparse.Namespace, settings: Settings,
               server: dict[str, Any], chaos: Callable[[Stage], None] | None) -> Outcome:
    """A run through this process's Ray: the launcher's actors, the episodes queued under
    their stable ids as the CLI queues them, ``chaos`` on its own thread."""
    requests = requests_of(args)
    outcome = Outcome(name, requests)
    with LocalServer(**MEDIA_SERVER, **server) as local, Watch(local) as watch, \
            tempfile.TemporaryDirectory(prefix="chaos-") as out:
        run = launcher.start_run(settings, Storage(str(out)), local.base_url,
                                 prefix=f"chaos-{name}")
        run.wait_ready()
        stage = Stage(run, watch, expected_calls(requests), launcher.raylet_child(os.getpid()),
                      outcome)
        started = time.monotonic()
        ids = launcher.submit(run, requests)
        thread = threading.Thread(target=chaos, args=(stage,), daemon=True) if chaos else None
        if thread:
            thread.start()
        views = follow(run, ids, started + SCENARIO_S)
        outcome.wall_s = time.monotonic() - started
        stage.finished.set()
        if thread:
            thread.join(timeout=60)
        outcome.statuses = [v.status.value for v in views]
        outcome.notes += [f"{v.id}: {v.error}" for v in views if v.error][:2]
        settled = watch.now()
        outcome.paid, outcome.duplicate_paid = settled.paid, settled.duplicate_paid
        add_duplicate_notes(outcome, local.stats())
        # The same episodes asked again, as the same CLI command asks them.
        follow(run, launcher.submit(run, requests), time.monotonic() + SCENARIO_S)
        outcome.rerun_paid = watch.now().paid - settled.paid
        add_fault_notes(outcome, local.stats())
        run.stop()
        for done in outcome.kills:
            done.settle(watch)
    return outcome


def add_duplicate_notes(outcome: Outcome, stats: dict[str, Any]) -> None:
    twice = {e: stats[e]["duplicate_paid"] for e in ENDPOINTS if stats[e]["duplicate_paid"]}
    if twice:
        outcome.notes.append("paid twice: " + ", ".join(f"{n} {e}" for e, n in twice.items()))


def add_fault_notes(outcome: Outcome, stats: dict[str, Any]) -> None:
    faults = {k: sum(stats[e]["faults"][k] for e in ENDPOINTS)
              for k in ("server_error", "hang", "malformed")}
    refused = sum(stats[e]["rate_limited"] for e in ENDPOINTS)
    if any(faults.values()) or refused:
        outcome.notes.append(f"server sent {faults['server_error']} 5xx, {faults['hang']} hangs, "
                             f"{faults['malformed']} malformed, {refused} 429s")


def faults(args: argparse.Namespace) -> Outcome:
    """A fifth of all attempts fail, and the clients are told 10x the server's chat and speech
    limits (429 bursts). A 3 s timeout ends each hang (the server would hold it 30 s). Eight
    attempts a call, as the product's own fault test gives: with the default five, a call
    fails for good now and then (a 429 counts as an attempt), and with it its episode."""
    settings = settings_for(args, timeout_s=3.0, attempts=8, llm_rpm=1200, tts_rpm=1200)
    server = {"latency_scale": 0.1, "fault_rate": 0.1, "hang_rate": 0.05, "hang_s": 30,
              "malformed_rate": 0.05, "llm_rpm": 120, "tts_rpm": 120}
    return in_process("faults", args, settings, server, None)


def clean(args: argparse.Namespace) -> Outcome:
    """No fault, no kill: what the same episodes pay when nothing goes wrong. The bundled
    server's script writer repeats a line now and then, and two lines with the same words and
    voice are the same speech call: billed twice, by no fault of a kill."""
    return in_process("clean", args, settings_for(args), {"latency_scale": 0.1}, None)


def coordinator(args: argparse.Namespace) -> Outcome:
    return in_process("coordinator", args, settings_for(args), {"latency_scale": 0.3},
                      kill_coordinator_twice)


def provider(args: argparse.Namespace) -> Outcome:
    return in_process("provider", args, settings_for(args), {"latency_scale": 0.3},
                      kill_llm_actor)


def worker(args: argparse.Namespace) -> Outcome:
    return in_process("worker", args, settings_for(args), {"latency_scale": 0.1},
                      kill_a_composition)


# -- scenarios as separate processes: the CLI and the service --------------------------------------


def child_env(server: LocalServer, ray_tmp: Path, **more: str) -> dict[str, str]:
    """A clean environment: this shell's Showrunner and Ray settings left out, the providers
    on the shared server (which outlives the killed process: the paid calls are counted across
    runs), a Ray of its own in ``ray_tmp``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOWRUNNER_", "RAY_"))}
    env.update(PYTHONPATH=str(ROOT), RAY_TMPDIR=str(ray_tmp))
    for kind in ("LLM", "TTS", "IMAGE"):
        env[f"SHOWRUNNER_{kind}__BASE_URL"] = server.base_url
        env[f"SHOWRUNNER_{kind}__API_KEY"] = "sk-chaos"
        env[f"SHOWRUNNER_{kind}__RPM"] = str(UNLIMITED_RPM)
    env["SHOWRUNNER_LLM__TPM"] = str(UNLIMITED_RPM * 1000)
    for name, value in ENCODING.items():
        env[f"SHOWRUNNER_ENCODING__{name.upper()}"] = str(value)
    env.update(more)
    return env


@contextlib.contextmanager
def ray_tmpdir() -> Iterator[Path]:
    """A child's own Ray folder (short: Ray's socket paths live under it). Whatever that Ray
    left running is ended on the way out."""
    folder = Path(tempfile.mkdtemp(prefix="sr-chaos-", dir="/tmp"))
    try:
        yield folder
    finally:
        end_leftovers(folder)
        shutil.rmtree(folder, ignore_errors=True)


def started_under(folder: Path) -> list[int]:
    """Live processes whose environment names ``folder`` as their Ray folder: a child we
    started, and everything it and its Ray started."""
    mark = f"RAY_TMPDIR={folder}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z" and mark in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


def end_leftovers(folder: Path, grace_s: float = 10.0) -> tuple[float, int]:
    """Wait for the processes of a stopped child's Ray to end; SIGKILL what is left after
    ``grace_s`` (each by its pid: all were started by our child). Returns how long they
    lasted and how many had to be killed."""
    started = time.monotonic()
    if wait_until(lambda: not started_under(folder), grace_s, interval=0.05):
        return time.monotonic() - started, 0
    left = started_under(folder)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not started_under(folder), grace_s, interval=0.05)
    return time.monotonic() - started, len(left)


def lingered(seconds: float, killed: int) -> str:
    """What a killed command's processes did after the kill (those of its Ray included)."""
    note = f"its processes (its Ray's included) lasted {seconds:.2f} s after the kill"
    return note + (f"; {killed} still left then, killed by the bench" if killed else "")


def start_child(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "showrunner", *args], cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-1500:] if log.exists() else ""


def run_cli(command: list[str], server: LocalServer, log: Path) -> int:
    """The command to its end, in its own Ray."""
    with ray_tmpdir() as folder:
        child = start_child(command, child_env(server, folder), log)
        try:
            return child.wait(timeout=SCENARIO_S)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            return child.wait()


def cli(args: argparse.Namespace) -> Outcome:
    """``showrunner run`` killed with its whole process group, then the same command again
    (it goes on from the stored nodes), then once more after it finished (it pays nothing)."""
    requests = requests_of(args)
    outcome = Outcome("cli", requests)
    with LocalServer(latency_scale=0.3, **MEDIA_SERVER) as server, Watch(server) as watch, \
            tempfile.TemporaryDirectory(prefix="chaos-cli-") as work:
        premises = Path(work) / "premises.txt"
        premises.write_text("".join(r.premise + "\n" for r in requests))
        output, log = Path(work) / "out", Path(work) / "cli.log"
        command = ["run", "--premises-file", str(premises), "--scenes", str(args.scenes),
                   "--lines", str(args.lines), "--output", str(output)]
        expected = expected_calls(requests)
        started = time.monotonic()
        with ray_tmpdir() as folder:
            first = start_child(command, child_env(server, folder), log)
            mid = wait_until(lambda: first.poll() is not None
                             or watch.now().paid >= 0.4 * expected, SCENARIO_S)
            if first.poll() is None and mid:
                outcome.kills.append(kill(watch, "CLI process group",
                                          lambda: os.killpg(first.pid, signal.SIGKILL)))
                first.wait()
                outcome.notes.append(lingered(*end_leftovers(folder)))
            else:
                outcome.notes.append(f"the run ended before the kill: {tail(log)[-300:]}")
            first.wait()
        if outcome.kills:
            outcome.kills[-1].look_from(watch, relaunched=True)
        code = run_cli(command, server, log)
        outcome.wall_s = time.monotonic() - started
        if code != 0:
            outcome.notes.append(f"the second run exited {code}")
        settled = watch.now()
        outcome.paid, outcome.duplicate_paid = settled.paid, settled.duplicate_paid
        add_duplicate_notes(outcome, server.stats())
        code = run_cli(command, server, log)
        outcome.rerun_paid = watch.now().paid - settled.paid
        if code != 0:
            outcome.notes.append(f"the re-run exited {code}")
        report = output / "report.json"
        if report.exists():
            outcome.statuses = [e["status"] for e in json.loads(report.read_text())["episodes"]]
        else:
            outcome.notes.append(f"no report: {tail(log)[-300:]}")
        for done in outcome.kills:
            done.settle(watch)
    return outcome



def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
         ) -> tuple[int, Any]:
    """A JSON request with the standard library: the status and the parsed answer. Refused
    connections and timeouts are ``OSError``s, for the caller to wait out."""
    request = urllib.request.Request(
        url, method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as err:
        with err:
            text = err.read()
        try:
            return err.code, json.loads(text or b"null")
        except ValueError:
            return err.code, None


class Service:
    """``showrunner serve`` as a child in its own session and Ray, on the shared server."""

    def __init__(self, server: LocalServer, storage: Path, port: int, log: Path) -> None:
        self.server, self.storage, self.port, self.log = server, storage, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.stopped: set[int] = set()

    @contextlib.contextmanager
    def running(self) -> Iterator[subprocess.Popen[bytes]]:
        with ray_tmpdir() as folder:
            env = child_env(self.server, folder, SHOWRUNNER_STORAGE=str(self.storage),
                            SHOWRUNNER_SERVICE__PORT=str(self.port))
            child = start_child(["serve"], env, self.log)
            try:
                yield child
            finally:
                if child.poll() is None:
                    self.stop(child)
                    try:
                        child.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        os.killpg(child.pid, signal.SIGKILL)
                        child.wait()

    def stop(self, child: subprocess.Popen[bytes]) -> None:
        """SIGTERM, once: how an orchestrator stops the service (Serve drains, the actors
        and Ray stop; a second signal would be ignored anyway)."""
        if child.pid not in self.stopped:
            self.stopped.add(child.pid)
            child.send_signal(signal.SIGTERM)

    def ready(self, child: subprocess.Popen[bytes]) -> bool:
        def answers() -> bool:
            if child.poll() is not None:
                return True
            with contextlib.suppress(OSError, ValueError):
                return http("GET", f"{self.url}/readyz")[0] == 200
            return False

        return wait_until(answers, 180, interval=0.2) and child.poll() is None

    def submit(self, requests: list[EpisodeRequest], key: str | None = "chaos-service"
               ) -> list[str]:
        """Queue the episodes, under an idempotency key (None: none, so new episodes)."""
        body = {"episodes": [r.model_dump(mode="json", exclude_none=True) for r in requests]}
        status, answer = http("POST", f"{self.url}/v1/episodes", body,
                              {"Idempotency-Key": key} if key else {})
        if status != 202:
            raise RuntimeError(f"the service refused the episodes: {status} {answer}")
        return [e["id"] for e in answer["episodes"]]

    def statuses(self, ids: list[str]) -> list[str] | None:
        """Each episode's status (``lost`` for one the service no longer knows); None while
        the service cannot say."""
        with contextlib.suppress(OSError, KeyError, ValueError, TypeError):
            answers = [http("GET", f"{self.url}/v1/episodes/{i}") for i in ids]
            if all(status in (200, 404) for status, _ in answers):
                return [answer["status"] if status == 200 else "lost"
                        for status, answer in answers]
        return None

    def finish(self, ids: list[str]) -> list[str]:
        seen: list[list[str]] = []

        def finished() -> bool:
            now = self.statuses(ids)
            if now is not None:
                seen.append(now)
            return now is not None and all(s == "lost" or EpisodeStatus(s).finished
                                           for s in now)

        wait_until(finished, SCENARIO_S, interval=0.25)
        return seen[-1] if seen else []


def asked_anew(api: Service, requests: list[EpisodeRequest], watch: Watch) -> int | None:
    """The same episodes asked once more without the key: new episodes, new ids, nothing of
    theirs stored; what they pay is what the call cache (an owner's identical call is paid
    once) does not answer."""
    before = watch.now().paid
    try:
        api.finish(api.submit(requests, key=None))
    except (OSError, RuntimeError, KeyError, TypeError):
        return None
    return watch.now().paid - before


def service(args: argparse.Namespace) -> Outcome:
    """The service stopped mid-run (SIGTERM, as an orchestrator stops it) and started again;
    then the same submission again, with the same idempotency key."""
    requests = requests_of(args)
    outcome = Outcome("service", requests)
    # Real latencies: a stopping service lets its episodes run while Serve drains (seconds),
    # and at a third of that the episodes would be over before it had stopped.
    with LocalServer(latency_scale=1.0, **MEDIA_SERVER) as server, Watch(server) as watch, \
            tempfile.TemporaryDirectory(prefix="chaos-service-") as work:
        api = Service(server, Path(work) / "out", free_port(), Path(work) / "serve.log")
        with api.running() as child:
            if not api.ready(child):
                outcome.notes.append(f"the service did not start: {tail(api.log)[-300:]}")
                return outcome
            started = time.monotonic()
            try:
                ids = api.submit(requests)
            except (OSError, RuntimeError, KeyError, TypeError) as err:
                outcome.notes.append(f"the service took no episodes: {err}")
                return outcome
            expected = expected_calls(requests)
            if wait_until(lambda: watch.now().paid >= 0.25 * expected, SCENARIO_S):
                outcome.kills.append(kill(watch, "service (SIGTERM)",
                                          lambda: api.stop(child)))
        if outcome.kills:
            took = time.monotonic() - outcome.kills[-1].at
            outcome.notes.append(f"it stopped, its Ray too, {took:.2f} s after the SIGTERM")
            outcome.kills[-1].look_from(watch, relaunched=True)
        with api.running() as child:
            if not api.ready(child):
                outcome.notes.append(f"the service did not start again: {tail(api.log)[-300:]}")
                return outcome
            outcome.statuses = api.finish(ids)
            outcome.wall_s = time.monotonic() - started
            settled = watch.now()
            outcome.paid, outcome.duplicate_paid = settled.paid, settled.duplicate_paid
            add_duplicate_notes(outcome, server.stats())
            try:
                again = api.submit(requests)
            except (OSError, RuntimeError, KeyError, TypeError) as err:
                outcome.notes.append(f"the same submission again was refused: {err}")
                again = []
            if again != ids:
                outcome.notes.append("the same key named other episodes")
            api.finish(again)
            outcome.rerun_paid = watch.now().paid - settled.paid
            outcome.new_ids_paid = asked_anew(api, requests, watch)
            outcome.notes.append(f"the same episodes asked again without the key (new ids) paid "
                                 f"{outcome.new_ids_paid} calls")
        for done in outcome.kills:
            done.settle(watch)
    return outcome


# -- the whole bench -------------------------------------------------------------------------------

RUNS: dict[str, Callable[[argparse.Namespace], Outcome]] = {
    "clean": clean, "faults": faults, "coordinator": coordinator, "provider": provider,
    "worker": worker, "cli": cli, "service": service,
}
IN_PROCESS = ("clean", "faults", "coordinator", "provider", "worker")


def start_ray() -> Path:
    """A Ray of this benchmark's own (never a cluster some other process on this machine
    started), in its own folder."""
    folder = Path(tempfile.mkdtemp(prefix="sr-chaos-", dir="/tmp"))
    ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False,
             logging_level="WARNING", log_to_driver=False, _temp_dir=str(folder))
    return folder


def summary(outcomes: list[Outcome]) -> dict[str, Any]:
    """The JSON line: the chaos scenarios' totals (the clean run is their baseline, not one of
    them). A scenario's duplicates are those beyond the clean run's, which the same bodies make
    with nothing going wrong."""
    baseline = next((o for o in outcomes if o.name == "clean"), None)
    same_body = baseline.duplicate_paid if baseline else 0
    chaos = [o for o in outcomes if o is not baseline]
    kills = [k for o in chaos for k in o.kills]
    resumes = [k.back_s for k in kills if k.coordinator_restart and k.back_s is not None]
    reruns = [o.rerun_paid for o in chaos if o.rerun_paid is not None]
    relaunches = {o.name: k.back_s for o in chaos for k in o.kills if k.relaunched}
    return {
        "episodes": sum(len(o.requests) for o in chaos),
        "completed": sum(o.completed for o in chaos),
        "scenes_lost": sum(o.scenes_lost for o in chaos),
        "duplicate_paid_calls": sum(max(0, o.duplicate_paid - same_body) for o in chaos),
        "in_flight_at_kills": sum(o.in_flight for o in chaos),
        "resume_s": round(max(resumes), 3) if resumes else None,
        "rerun_paid_calls": sum(reruns) if reruns else None,
        "new_ids_rerun_paid_calls": next((o.new_ids_paid for o in chaos
                                          if o.new_ids_paid is not None), None),
        "duplicate_paid_raw": sum(o.duplicate_paid for o in chaos),
        "same_body_calls_clean_run": same_body,
        "paid_calls": sum(o.paid for o in chaos),
        "kills": len(kills),
        "coordinator_restarts_resumed": len(resumes),
        "calls_arriving_after_coordinator_death": sum(k.orphans for k in kills
                                                      if k.coordinator_restart),
        **{f"{name}_relaunch_to_first_call_s": None if back is None else round(back, 3)
           for name, back in relaunches.items()},
        "wall_s": round(sum(o.wall_s for o in outcomes), 1),
    }


def kill_note(k: Kill) -> str:
    note = f"{k.what} killed with {k.in_flight} calls in flight at the server"
    if k.since is not None and not k.relaunched:
        note += f"; Ray started it again {k.since - k.at:.2f} s later"
    if k.orphans:
        note += (f"; {k.orphans} calls arrived after the kill, before a successor existed (the "
                 "dying run's own)")
    if k.back_s is not None:
        since = "its relaunch" if k.relaunched else "the kill"
        note += f"; the next call came {k.back_s:.2f} s after {since}"
    elif k.endpoints:
        note += "; no call came after it"
    return note


def show(outcomes: list[Outcome], line: dict[str, Any], console: Console) -> None:
    table = Table(title="Showrunner under faults and kills")
    for column in ("scenario", "episodes", "completed", "scenes lost", "paid", "paid twice",
                   "in flight at kills", "kills", "next call after s", "re-run paid",
                   "wall s"):
        table.add_column(column, justify="left" if column == "scenario" else "right")
    for o in outcomes:
        backs = ", ".join("—" if k.back_s is None else f"{k.back_s:.2f}" for k in o.kills)
        table.add_row(o.name, str(len(o.requests)), str(o.completed), str(o.scenes_lost),
                      str(o.paid), str(o.duplicate_paid), str(o.in_flight), str(len(o.kills)),
                      backs or "—", "—" if o.rerun_paid is None else str(o.rerun_paid),
                      f"{o.wall_s:.1f}")
    console.print(table)
    for o in outcomes:
        for note in [*(kill_note(k) for k in o.kills), *o.notes]:
            console.print(f"  {o.name}: {note}", highlight=False)
    goals = Table(title="Goals (not asserted)")
    for column in ("goal", "measured", "met"):
        goals.add_column(column)
    resume = line["resume_s"]
    for goal, measured, met in (
        ("completed = episodes", f"{line['completed']} of {line['episodes']}",
         line["completed"] == line["episodes"]),
        ("scenes_lost = 0", str(line["scenes_lost"]), line["scenes_lost"] == 0),
        ("duplicate_paid_calls <= in_flight_at_kills",
         f"{line['duplicate_paid_calls']} <= {line['in_flight_at_kills']} (beyond the clean "
         f"run's {line['same_body_calls_clean_run']} a scenario)",
         line["duplicate_paid_calls"] <= line["in_flight_at_kills"]),
        (f"resume_s <= {RESUME_GOAL_S:g}", str(resume),
         resume is not None and resume <= RESUME_GOAL_S),
        ("rerun_paid_calls = 0", str(line["rerun_paid_calls"]), line["rerun_paid_calls"] == 0),
    ):
        goals.add_row(goal, measured, "yes" if met else "NO")
    console.print(goals)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=3, help="episodes per scenario")
    parser.add_argument("--scenes", type=int, default=3, help="scenes per episode")
    parser.add_argument("--lines", type=int, default=2, help="dialogue lines per scene")
    parser.add_argument("--only", choices=SCENARIOS, action="append",
                        help="run this scenario only (may be given more than once; the clean "
                             "run, their baseline, always runs)")
    parser.add_argument("--quick", action="store_true",
                        help="2 episodes of 2 scenes per scenario: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.episodes, args.scenes = 2, 2
    # The clean run always: it is every other scenario's baseline.
    chosen = ["clean", *(n for n in SCENARIOS if n != "clean" and n in (args.only or SCENARIOS))]
    # Wide enough for the table when the output is a file or a pipe (rich's default is 80).
    console = Console(width=None if sys.stdout.isatty() else 150)
    outcomes: list[Outcome] = []
    inside = [n for n in chosen if n in IN_PROCESS]
    if inside:
        folder = start_ray()
        try:
            for name in inside:
                console.print(f"[bold]{name}[/bold] …")
                outcomes.append(RUNS[name](args))
        finally:
            ray.shutdown()
            shutil.rmtree(folder, ignore_errors=True)
    for name in (n for n in chosen if n not in IN_PROCESS):
        console.print(f"[bold]{name}[/bold] …")
        outcomes.append(RUNS[name](args))
    line = summary(outcomes)
    show(outcomes, line, console)
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
