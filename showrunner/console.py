"""What a person sees during a run: a progress bar per episode, then a closing table."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from actors.state_store import EpisodeSummary
from pipelines.episode_view import EpisodeView
from pipelines.models import EpisodeRequest, EpisodeStatus
from pipelines.settings import Settings
from pipelines.storage import Storage
from showrunner import launcher

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
log = logging.getLogger("showrunner")


def run_and_show(
    settings: Settings,
    requests: list[EpisodeRequest],
    storage: Storage,
    report_file: Path | None,
    latency_scale: float,
    earlier: Sequence[EpisodeSummary] = (),
    dashboard: bool = False,
) -> int:
    """Run the episodes asked for and follow them, with ``earlier``: the storage's unfinished
    episodes, which the coordinator takes up by itself as it starts (``showrunner resume`` is
    this with nothing new asked). Followed to the end, they are in the report too, rather than
    cut off mid-call when this process ends."""
    console = Console(stderr=True)
    with launcher.local_server_if_needed(settings, latency_scale) as local_url:
        dashboard_at = launcher.ensure_ray(dashboard)
        if dashboard and dashboard_at:
            console.print(launcher.dashboard_line(dashboard_at))
        run = launcher.start_run(settings, storage, local_url)
        seen = {view.id: view for view in launcher.queue(run, requests)} if requests else {}
        taken_up = [e.id for e in earlier if e.id not in seen]
        _say_what_goes_on(console, list(seen.values()), earlier, taken_up)
        ids = [*taken_up, *seen]
        interrupted = False
        with _progress_view(console, ids) as show:

            def show_and_keep(views: list[EpisodeView]) -> None:
                seen.update((view.id, view) for view in views)
                show(views)

            try:
                launcher.follow(run, ids, show_and_keep)
            except KeyboardInterrupt:
                interrupted = True
                console.print("interrupted: cancelled the episodes; writing the report for what "
                              "finished")
            except launcher.CoordinatorLost as err:
                console.print(f"the run stopped: {err}")
        report = launcher.collect_report(run, ids, seen)
    unwritten = launcher.write_report(report, storage, report_file)
    _closing_table(console, report, storage)
    if unwritten is not None:
        console.print(f"showrunner: error: {unwritten}", soft_wrap=True, highlight=False)
        return EXIT_FAILED
    log.info("run report: %s", report["totals"])
    if interrupted:
        return EXIT_INTERRUPTED
    # One cancelled with ``showrunner cancel`` while no run went on ended as it was asked to.
    asked = {e.id for e in earlier if e.cancel_requested}
    return EXIT_OK if all(e["status"] == "completed"
                          or (e["status"] == "cancelled" and e["id"] in asked)
                          for e in report["episodes"]) else EXIT_FAILED


def _say_what_goes_on(console: Console, queued: list[EpisodeView],
                      earlier: Sequence[EpisodeSummary], taken_up: list[str]) -> None:
    """Which episodes this storage already had: a run asked again is not a new run."""
    unfinished = {e.id for e in earlier}
    notes = [
        ("already completed on this storage, shown as they are",
         [v.id for v in queued if v.status is EpisodeStatus.COMPLETED]),
        ("going on from their stored nodes",
         [v.id for v in queued if v.id in unfinished]),
        ("unfinished on this storage, taken up", taken_up),
    ]
    for what, ids in notes:
        if ids:
            console.print(f"{len(ids)} episode(s) {what}: {' '.join(ids)}", soft_wrap=True,
                          highlight=False)


@contextlib.contextmanager
def _progress_view(console: Console, ids: list[str]
                   ) -> Iterator[Callable[[list[EpisodeView]], None]]:
    """Live bars on a terminal; elsewhere (a log, a Ray job) a line per change of status and
    per quarter done, so the output stays readable."""
    if not console.is_terminal:
        shown: dict[str, tuple[str, int]] = {}

        def log_lines(views: list[EpisodeView]) -> None:
            for v in views:
                state = (v.status.value, int(v.percent // 25))
                if shown.get(v.id) != state:
                    shown[v.id] = state
                    console.print(f"{v.id} {v.status.value} {v.percent:.0f}% "
                                  f"{v.title or ''}".rstrip())

        yield log_lines
        return
    with Progress(
        TextColumn("{task.description}", justify="left"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bars = {i: progress.add_task(i, total=100, status="queued") for i in ids}

        def update_bars(views: list[EpisodeView]) -> None:
            for v in views:
                title = (v.title or v.id)[:40]
                progress.update(bars[v.id], completed=v.percent, description=f"{v.id} {title}",
                                status=v.status.value)

        yield update_bars


def _closing_table(console: Console, report: dict[str, Any], storage: Storage) -> None:
    table = Table(title="Episodes")
    for column in ("episode", "status", "scenes", "wall s", "cost $", "files / reason"):
        table.add_column(column)
    for e in report["episodes"]:
        table.add_row(
            e["id"], e["status"], f"{e['scenes_completed']}/{e['scenes']}",
            f"{e['wall_s']:.1f}" if e["wall_s"] is not None else "-",
            f"{e['cost_usd']:.4f}", e["output_dir"] or (e["error"] or "")[:80],
        )
    console.print(table)
    t = report["totals"]
    summary = Table(title="Run", show_header=False)
    summary.add_column()
    summary.add_column(justify="right")
    rows = [
        ("wall time", f"{t['wall_s']:.1f} s"),
        ("one call at a time would take", f"{t['sequential_s']:.1f} s"),
        ("speedup", f"{t['speedup']:.1f}x" if t["speedup"] else "-"),
        ("best possible (lower bound)", f"{t['lower_bound_s']:.1f} s, set by {t['bottleneck']}"),
        ("parallel efficiency", f"{t['parallel_efficiency']:.2f}" if t["parallel_efficiency"]
         else "-"),
        ("cost", f"${t['cost_usd']:.4f}"),
        ("saved by the call cache", f"${t['saved_usd']:.4f}"),
    ]
    for kind, p in t["providers"].items():
        rows.append((f"{kind}: calls / from the cache / 429s / retries",
                     f"{p['calls']} / {p['cache_hits']} / {p['rate_limited']} / "
                     f"{p['retries']}"))
        flex = p.get("tiers", {}).get("flex")
        if flex:
            rows.append((f"{kind}: flex calls / cost / saved / busy answers / fell back",
                         f"{flex['calls']} / ${flex['cost_usd']:.4f} / "
                         f"${flex['saved_usd']:.4f} / {p['flex_busy']} / {p['flex_fell_back']}"))
    for row in rows:
        summary.add_row(*row)
    console.print(summary)
    # Plain, unwrapped lines: under a Ray job or a log the table's columns are cut short.
    for e in report["episodes"]:
        if e["output_dir"]:
            console.print(f"{e['id']}: {e['output_dir']}", soft_wrap=True, highlight=False)
    console.print(f"Output: {storage.where()}", soft_wrap=True, highlight=False)
    console.print(f"Report: {storage.where(launcher.REPORT_FILE)}", soft_wrap=True,
                  highlight=False)
    # The same report as a page with the run's timeline; it opens from a file, offline.
    console.print(f"Report page: {storage.where(launcher.REPORT_PAGE)}", soft_wrap=True,
                  highlight=False)
