"""Starts a run: the bundled local server if a provider needs it, Ray, the provider actors and
the coordinator; then follows the episodes to the end and writes the report.

Used by the CLI, the HTTP service and the benchmarks.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError

from actors.remote import coordinator_actor, provider_actor
from actors.state_store import StateStoreError
from local_server.process import LocalServer
from pipelines.episode_view import EpisodeView
from pipelines.errors import storage_error
from pipelines.files import write_atomic
from pipelines.models import EpisodeRequest, EpisodeStatus
from pipelines.report import build_report
from pipelines.settings import ProviderKind, Settings
from pipelines.storage import Storage
from pipelines.timeline import build_timeline
from showrunner.ids import episode_ids
from showrunner.report_page import report_html

# Served by the bundled server when their base_url is unset; a video provider is used only when
# one is configured (otherwise clips are made locally).
BUNDLED = (ProviderKind.LLM, ProviderKind.TTS, ProviderKind.IMAGE)
REPORT_FILE = "report.json"  # in the storage's root: the last run's report
REPORT_PAGE = "report.html"  # beside it: the same, as a page that opens offline
POLL_S = 0.25
STATS_TIMEOUT_S = 30.0


@dataclass
class Run:
    """Handles of a started run."""

    coordinator: Any
    providers: dict[ProviderKind, Any]
    settings: Settings
    storage: Storage

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until every actor answers: a new actor's process starts after its handle exists,
        and the first call would otherwise wait for it (half a second here)."""
        ray.get([self.coordinator.ping.remote(),
                 *(actor.stats.remote() for actor in self.providers.values())],
                timeout=timeout_s)

    def stop(self) -> None:
        for actor in (self.coordinator, *self.providers.values()):
            ray.kill(actor)


def needs_local_server(settings: Settings) -> bool:
    return any(settings.provider(k).base_url is None for k in BUNDLED)


def local_server_options(settings: Settings, latency_scale: float, seed: int = 0
                         ) -> dict[str, Any]:
    """The bundled server's flags: the same limits the settings give the clients."""
    return {"latency_scale": latency_scale, "seed": seed, "llm_rpm": settings.llm.rpm,
            "llm_tpm": settings.llm.tpm, "tts_rpm": settings.tts.rpm,
            "image_rpm": settings.image.rpm}


@contextlib.contextmanager
def local_server_if_needed(settings: Settings, latency_scale: float, seed: int = 0
                           ) -> Iterator[str | None]:
    """The bundled server, with the limits the settings give, if some provider has no URL."""
    if not needs_local_server(settings):
        yield None
        return
    with LocalServer(**local_server_options(settings, latency_scale, seed)) as server:
        yield server.base_url


# Kills what a dead driver's raylet left running. It waits for EOF on its stdin, a pipe only the
# driver writes to, so EOF means the driver has ended, however it ended (SIGKILL included). Then
# it SIGKILLs the raylet's agents, named by pid and start time when the node started (a later
# process reusing a pid has another start time), and every process whose environment names the
# raylet in RAY_RAYLET_PID: its workers, and what they start. The agents need naming: setting
# their process titles blanks the start of their /proc environ, and the mark with it at times.
# Standard library only: it starts in milliseconds and weighs little for as long as the run
# lasts. Ctrl-C and a closed terminal are the driver's to handle, not the keeper's cue to leave.
KEEPER = """\
import os, signal, sys
for ignored in (signal.SIGINT, signal.SIGHUP):
    signal.signal(ignored, signal.SIG_IGN)
sys.stdin.buffer.read()
mark = b"RAY_RAYLET_PID=" + sys.argv[1].encode()
named = dict(arg.split(":") for arg in sys.argv[2:])
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            started = stat.read().rsplit(b")", 1)[1].split()[19].decode()
        if named.get(pid) != started:
            with open(f"/proc/{pid}/environ", "rb") as environ:
                if mark not in environ.read().split(b"\\0"):
                    continue
        os.kill(int(pid), signal.SIGKILL)
    except (OSError, IndexError):
        pass
"""
# Keepers of the nodes this process started: their pipes stay open exactly as long as it lives.
_keepers: list[subprocess.Popen[bytes]] = []


def ensure_ray(dashboard: bool = False) -> str | None:
    """Join the cluster named by ``RAY_ADDRESS`` (as under ``ray job submit``), else start one;
    returns the address of Ray's dashboard, if it has one (a cluster's own, or, with
    ``dashboard``, the one started here, on loopback only: it runs code on request).

    A node started here ends with this process, however it ends. Ray has the kernel SIGKILL its
    GCS, raylet and monitors when the thread that called ``ray.init`` ends (Linux's parent-death
    signal; so call this from the main thread). The raylet's workers notice its death only when
    they next look (every second, and not before it is reaped), and its agents linger a minute
    trying to report it to the dead GCS: a keeper ends them at once (``start_keeper``). On a
    joined cluster nothing is started; the run's actors are owned by this driver (not detached),
    so the cluster kills them when it sees the driver go.
    """
    if ray.is_initialized():
        return dashboard_url()
    context = ray.init(
        # "local", not None: None would join whatever cluster a `ray start` on this machine
        # last recorded (even a dead one), not the one this run was asked to use.
        address=os.environ.get("RAY_ADDRESS") or "local",
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        logging_level="WARNING",
        log_to_driver=False,
        configure_logging=True,
    )
    raylet = raylet_child(os.getpid())
    if raylet is not None:
        _keepers.append(start_keeper(raylet, children(raylet)))
    return f"http://{context.dashboard_url}" if context.dashboard_url else None


def dashboard_url() -> str | None:
    """The connected cluster's dashboard address, if it runs one. (Ray has no public call for
    it outside ``ray.init``'s answer: this reads what its worker was told.)"""
    with contextlib.suppress(Exception):
        address = ray._private.worker.get_dashboard_url()
        if address:
            return address if "://" in address else f"http://{address}"
    return None


def dashboard_line(address: str) -> str:
    """How a person opens the dashboard: with Ray's token authentication on (Ray 2.60 turns it
    on for a local cluster), the page asks for the token, which ``ray get-auth-token`` prints."""
    token_auth = os.environ.get("RAY_AUTH_MODE", "token") != "disabled"
    return f"Ray dashboard: {address}" + (
        "  (it asks for Ray's token: `ray get-auth-token` prints it)" if token_auth else "")


def children(parent: int) -> dict[int, str]:
    """The processes whose parent is ``parent``, with their start times (which tell a process
    from a later one given its pid); none where there is no ``/proc``."""
    found = {}
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return found
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if len(fields) > 19 and int(fields[1]) == parent:
            found[int(pid)] = fields[19].decode()
    return found


def raylet_child(parent: int) -> int | None:
    """The pid of the raylet ``parent`` started, if it started one (not when joining a
    cluster)."""
    for pid in children(parent):
        try:
            if os.path.basename(os.readlink(f"/proc/{pid}/exe")) == "raylet":
                return pid
        except OSError:
            continue
    return None


def start_keeper(raylet: int, agents: dict[int, str]) -> subprocess.Popen[bytes]:
    """The keeper of the node whose raylet is ``raylet`` and whose agents (what the raylet
    started with the node) are ``agents``, pid → start time. Closing its stdin, which this
    process does by ending, has it kill them and whatever else the raylet started."""
    named = [f"{pid}:{started}" for pid, started in agents.items()]
    # In a session of its own: ``kill -9 -- -PGID`` of the CLI's group (a shell's job control,
    # a CI runner's timeout) must not take the keeper with it, or the workers, each in a group
    # of their own, go on spending for a second or two before they notice.
    return subprocess.Popen([sys.executable, "-c", KEEPER, str(raylet), *named],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def start_run(settings: Settings, storage: Storage, local_base_url: str | None,
              prefix: str = "showrunner", detached: bool = False) -> Run:
    """The provider actors and the coordinator (names are per prefix).

    ``detached`` actors outlive their creator: the service's, which Serve replicas share, got
    if they exist. The CLI's are not: owned by its driver, they end when it ends, however it
    ends (the cluster kills the actors of a job whose driver is gone); and one run at a time
    has a prefix's names on a cluster (``RunInProgress``), since a second one joining the
    first's coordinator would run on the first's storage and settings, and end with it."""
    kinds = [*BUNDLED, *([ProviderKind.VIDEO] if settings.video.base_url is not None else [])]
    state_url = settings.state_database_url(storage)
    names = {kind: f"{prefix}:{kind}" for kind in kinds}

    def coordinator() -> Any:
        return coordinator_actor(settings, names, storage=storage, state_url=state_url,
                                 name=f"{prefix}:coordinator", detached=detached,
                                 claim=not detached)

    # First: providers are looked up by name when first called, after this returns.
    made = coordinator() if detached else _claimed(f"{prefix}:coordinator", coordinator)
    if detached and not ray.get(made.is_detached.remote(), timeout=COORDINATOR_BACK_S):
        raise RunInProgress(
            f"a Showrunner run (a CLI job) goes on on this Ray cluster, and its coordinator "
            f"{prefix + ':coordinator'!r} ends with it: start the service once it has ended")
    providers = {
        kind: provider_actor(kind, settings.provider(kind), local_base_url=local_base_url,
                             name=names[kind], detached=detached, state_url=state_url,
                             storage=storage, resources=settings.placement.providers)
        for kind in kinds
    }
    return Run(made, providers, settings, storage)


class RunInProgress(Exception):
    """Another run (or the service) on this cluster has the coordinator's name; or the
    service would take up a run's coordinator, which ends with the run."""


# The actors of a run whose driver just ended are gone within a moment: a name still taken after
# this long belongs to a run that goes on.
NAME_FREED_S = 3.0


def _claimed(name: str, create: Callable[[], Any]) -> Any:
    """``create()``, which makes the actor ``name`` or raises ``ValueError`` if the name is
    taken (Ray registers a name at once, for the whole cluster: of two runs starting together,
    one gets it)."""
    deadline = time.monotonic() + NAME_FREED_S
    while True:
        try:
            return create()
        except ValueError as err:
            if "already taken" not in str(err):
                raise
            if time.monotonic() >= deadline:
                raise RunInProgress(
                    f"another Showrunner run, or the service, goes on on this Ray cluster (its "
                    f"coordinator is {name!r}); wait for it to end, or send the episodes to "
                    "the service (`showrunner serve`, POST /v1/episodes)") from None
        time.sleep(0.25)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


class CoordinatorLost(Exception):
    """The coordinator did not come back after its process died, or came back without the
    run's episodes (its state store gone)."""


# A coordinator Ray restarts takes its episodes up from the state store and answers again within
# seconds; one that has not after this long is not coming back.
COORDINATOR_BACK_S = 60.0


LOST = ("lost: the coordinator's process died during the run; what the episode had written "
        "stays in its folder")


def follow(run: Run, ids: list[str], on_progress: Callable[[list[EpisodeView]], None]) -> None:
    """Poll the episodes until all have finished; Ctrl-C, or SIGTERM (``ray job stop``), cancels
    them cleanly. A coordinator that died is waited for while Ray restarts it; one that does not
    come back, or comes back without them, is ``CoordinatorLost``."""
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while True:
            views: list[EpisodeView] = _ask_coordinator(lambda: run.coordinator.views.remote(ids))
            on_progress(views)
            if all(v.finished for v in views):
                return
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        # A second signal must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with contextlib.suppress(CoordinatorLost):  # nothing left to cancel
            _ask_coordinator(lambda: [run.coordinator.cancel.remote(i) for i in ids])
        raise
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def _ask_coordinator(call: Callable[[], Any]) -> Any:
    """``ray.get(call())``, asked again while the coordinator restarts."""
    deadline = time.monotonic() + COORDINATOR_BACK_S
    while True:
        try:
            return ray.get(call())
        except RayActorError as err:
            if time.monotonic() > deadline:
                raise CoordinatorLost(f"{LOST} ({type(err).__name__})") from err
            time.sleep(POLL_S)
        except KeyError as err:  # restarted without its store: it knows no such episode
            raise CoordinatorLost(f"{LOST} ({type(err).__name__})") from err
        except StateStoreError as err:  # (another run holds the store): say the line
            raise StateStoreError(str(getattr(err, "cause", err))) from None


def collect_report(run: Run, ids: list[str],
                   last_seen: Mapping[str, EpisodeView] | None = None) -> dict[str, Any]:
    """The run's report. Episodes the coordinator no longer has are reported failed, from how
    they were last seen; a provider actor that cannot answer is left out of the totals."""
    try:
        statuses = _ask_coordinator(lambda: run.coordinator.statuses.remote(ids))
    except CoordinatorLost:
        statuses = [None] * len(ids)
    kept = [i for i, status in zip(ids, statuses, strict=True) if status is not None]
    records = _ask_coordinator(lambda: run.coordinator.records_of.remote(kept)) if kept else []
    lost = [last_seen[i].model_copy(update={"status": EpisodeStatus.FAILED, "error": LOST})
            for i in ids if i not in kept and last_seen and i in last_seen]
    stats = {}
    for kind, actor in run.providers.items():
        with contextlib.suppress(RayActorError, ray.exceptions.GetTimeoutError):
            stats[kind] = ray.get(actor.stats.remote(), timeout=STATS_TIMEOUT_S)
    cpus = ray.cluster_resources().get("CPU")  # media tasks run anywhere in the cluster
    report = build_report(records, stats, run.settings, cpus=cpus, storage=run.storage,
                          lost=lost)
    report["timeline"] = build_timeline(records, run.settings, report["totals"]["bounds_s"])
    return report


def write_report(report: dict[str, Any], storage: Storage, extra: Path | None) -> str | None:
    """Write the report (``report.json`` and its page ``report.html`` in the storage; with
    ``extra``, that file and its page, ``extra`` with the suffix ``.html``, on this machine);
    returns why it could not be, if it could not (a full or read-only disk, a bucket out of
    reach: the run's figures are still shown)."""
    text = json.dumps(report, indent=2) + "\n"
    page = report_html(report)
    if extra is not None:  # never onto the JSON itself, should it be named ``*.html``
        page_file = extra.with_suffix(".html")
        page_file = page_file if page_file != extra else extra.with_name(extra.name + ".html")
    try:
        storage.write(REPORT_FILE, text)
        storage.write(REPORT_PAGE, page)
        if extra is not None:
            write_atomic(extra, text)
            write_atomic(page_file, page)
    except OSError as err:
        return f"the report was not written: {storage_error(err)}"
    return None


def submit(run: Run, requests: list[EpisodeRequest]) -> list[str]:
    """Queue the episodes; returns their ids."""
    return [view.id for view in queue(run, requests)]


def queue(run: Run, requests: list[EpisodeRequest]) -> list[EpisodeView]:
    """Queue the episodes under their stable ids (``showrunner.ids``); returns how they are at
    first. One the storage already has goes on from its stored nodes, or is shown as done: the
    same command run again continues it instead of paying for it twice."""
    try:
        return ray.get(run.coordinator.submit_many.remote(requests, ids=episode_ids(requests),
                                                          resume=True))
    except StateStoreError as err:  # Ray's copy carries the remote traceback: say the line
        raise StateStoreError(str(getattr(err, "cause", err))) from None
