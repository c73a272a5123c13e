"""The run report as one self-contained HTML page: totals, episodes, providers and the timeline.

Written beside ``report.json`` so a run can be looked at from a ``file://`` URL, offline, with no
server: the page carries its data (the report's JSON) and its code (``timeline.js``'s source,
inlined as a module script, since a module cannot be imported from a file:// URL).

The JSON sits in a ``<script type="application/json">`` with every ``<`` written ``\\u003c``:
an episode's error text or a premise cannot hold a ``</script>`` that ends the element early.
Everything else the report says goes through ``html.escape``.
"""

from __future__ import annotations

import functools
import html
import json
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from typing import Any

TITLE = "Showrunner — run report"
STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; color: #1a1a1a;
       background: #fff; margin: 2rem auto; max-width: 1280px; padding: 0 1rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
th, td { border-bottom: 1px solid #d9d9d9; padding: 0.25rem 0.75rem; text-align: left; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: bold; padding-bottom: 0.25rem; }
.note { color: #595959; }
"""
DRAW = """
const data = JSON.parse(document.getElementById("report-data").textContent);
drawTimeline(document.getElementById("timeline"), data.timeline);
"""


@functools.cache
def timeline_js() -> str:
    """``timeline.js`` as shipped in the package."""
    source = (resources.files("showrunner.studio") / "static" / "timeline.js").read_text("utf-8")
    # Inlined as it is: a "</script" in it would end the element it is inlined in.
    if "</script" in source.lower() or "<!--" in source:
        raise ValueError("timeline.js cannot be inlined: it holds '</script' or '<!--'")
    return source


def script_json(value: Any) -> str:
    """JSON safe inside a ``<script>`` element: no ``<`` at all, so no ``</script>`` nor
    ``<!--`` (``JSON.parse`` reads ``\\u003c`` back as ``<``)."""
    return json.dumps(value).replace("<", "\\u003c")


def report_html(report: dict[str, Any]) -> str:
    """The page of ``report`` (as ``pipelines.report.build_report`` and the launcher make it)."""
    totals = report.get("totals", {})
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(TITLE)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(TITLE)}</h1>",
        _totals(totals),
        _episodes(report.get("episodes", [])),
        _providers(totals.get("providers", {})),
        '<h2>Timeline</h2><div id="timeline"></div>',
    ]
    if report.get("timeline") is None:
        parts.append('<p class="note" id="no-timeline">This report has no timeline (it was '
                     "written before reports had one), so there is nothing to draw.</p>")
    else:
        parts += [
            '<noscript><p class="note">The timeline is drawn by JavaScript, which is off.</p>'
            "</noscript>",
            f'<script type="application/json" id="report-data">{script_json(report)}</script>',
            f'<script type="module">\n{timeline_js()}\n{DRAW}</script>',
        ]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _table(caption: str, head: Sequence[str], rows: Iterable[Sequence[Any]],
           numeric: Callable[[int], bool] = lambda column: False) -> str:
    header = "".join(f"<th scope=\"col\">{html.escape(h)}</th>" for h in head)
    cells = ('<td class="number">', "<td>")
    body = "".join(
        "<tr>" + "".join(f"{cells[not numeric(i)]}{html.escape(_text(cell))}</td>"
                         for i, cell in enumerate(row)) + "</tr>" for row in rows)
    return (f"<table><caption>{html.escape(caption)}</caption><thead><tr>{header}</tr></thead>"
            f"<tbody>{body}</tbody></table>")


def _text(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def _totals(t: dict[str, Any]) -> str:
    rows = [
        ("wall time (s)", t.get("wall_s")),
        ("one call at a time would take (s)", t.get("sequential_s")),
        ("speedup", t.get("speedup")),
        ("best possible: lower bound (s)", t.get("lower_bound_s")),
        ("set by", t.get("bottleneck")),
        ("parallel efficiency", t.get("parallel_efficiency")),
        ("CPU seconds of media work", t.get("cpu_s")),
        ("CPUs", t.get("cpus")),
        ("cost ($)", t.get("cost_usd")),
        ("saved by the call cache ($)", t.get("saved_usd")),
    ]
    return _table("Run", ("figure", "value"), rows, numeric=lambda column: column == 1)


def _episodes(episodes: list[dict[str, Any]]) -> str:
    rows = [(e.get("id"), e.get("status"), f"{e.get('scenes_completed')}/{e.get('scenes')}",
             e.get("wall_s"), e.get("critical_path_s"), e.get("cost_usd"),
             e.get("output_dir") or e.get("error") or "") for e in episodes]
    return _table("Episodes", ("episode", "status", "scenes", "wall s", "critical path s",
                               "cost $", "files / reason"), rows,
                  numeric=lambda column: column in (3, 4, 5))


def _providers(providers: dict[str, dict[str, Any]]) -> str:
    if not providers:
        return ""
    rows = [(kind, p.get("calls"), p.get("cache_hits"), p.get("rate_limited"), p.get("retries"),
             p.get("errors"), p.get("limiter_wait_s"), p.get("cost_usd"))
            for kind, p in providers.items()]
    return _table("Providers", ("provider", "calls", "from the cache", "429s", "retries",
                                "errors", "limiter wait s", "cost $"), rows,
                  numeric=lambda column: column > 0)
