"""A real Prometheus (Debian's ``prometheus``) on loopback, scraping one metrics endpoint, and
the queries Grafana makes of it to draw a dashboard: what the dashboard is tested against, since
parsing PromQL proves nothing about whether it returns data.

It is started with its own storage folder and a generated config, so nothing of the machine's
own Prometheus (if any) is read or written, and it is stopped however the test ends.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local_server.process import die_with_parent
from tests.support import unavailable, wait_for

BINARY = "prometheus"
START_TIMEOUT_S = 30.0
STOP_GRACE_S = 10.0
# Once a second: a test's run lasts seconds, and Ray's workers push to the endpoint as often
# in the test session (``metrics_report_interval_ms``).
SCRAPE_INTERVAL = "1s"
CONFIG = """\
global:
  scrape_interval: {interval}
  scrape_timeout: {interval}
scrape_configs:
  - job_name: ray
    metrics_path: {path}
    static_configs:
      - targets: ["{target}"]
"""


class PrometheusError(RuntimeError):
    """Prometheus refused a query, or did not start (the message says what it said)."""


class Prometheus:
    """A started Prometheus's HTTP API: the calls Grafana makes to draw a dashboard."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def _get(self, path: str, **params: str | list[str]) -> Any:
        url = f"{self.base_url}{path}?{urllib.parse.urlencode(params, doseq=True)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as err:  # a bad query is a 400 whose body says why
            body = json.loads(err.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's samples, now: each ``{"metric": labels, "value": [t, "v"]}``."""
        data = self._get("/api/v1/query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def label_values(self, label: str, match: str) -> list[str]:
        """The values ``label`` takes in the series ``match`` selects (Grafana's
        ``label_values(match, label)``)."""
        return list(self._get(f"/api/v1/label/{label}/values", **{"match[]": [match]}))

    def scrapes(self) -> list[str]:
        """How its scrapes of each target went: a test that finds no data says why."""
        return [f"{t['scrapeUrl']}: {t['health']} {t['lastError']}".rstrip()
                for t in self._get("/api/v1/targets")["activeTargets"]]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:  # not listening yet, or still loading its storage (503)
            return False


def installed() -> str | None:
    """The binary's path, if this machine has it."""
    return shutil.which(BINARY)


def missing() -> None:
    """Skip the test, saying how to install Prometheus; under ``CI=true`` fail it."""
    unavailable("Prometheus (Debian's prometheus)", "apt-get install prometheus")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def scraping(metrics_url: str, folder: Path) -> Iterator[Prometheus]:
    """Prometheus scraping ``metrics_url`` every second, ready to be queried; its config, data
    and log live in ``folder``. Skips (fails under ``CI=true``) where it is not installed."""
    binary = installed()
    if binary is None:
        missing()
    assert binary is not None
    target = urllib.parse.urlsplit(metrics_url)
    config = folder / "prometheus.yml"
    config.write_text(CONFIG.format(interval=SCRAPE_INTERVAL, path=target.path or "/metrics",
                                    target=target.netloc))
    port = _free_port()
    log_path = folder / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            # A test session killed outright must not leave it scraping: the kernel ends it.
            preexec_fn=die_with_parent())
    prometheus = Prometheus(f"http://127.0.0.1:{port}")

    def up() -> bool:
        if process.poll() is not None:  # it will not come up: say why, not "timed out"
            raise PrometheusError(f"prometheus exited with {process.returncode}: "
                                  f"{log_path.read_text()[-2000:]}")
        return prometheus.ready()

    try:
        wait_for(up, START_TIMEOUT_S, lambda: f"Prometheus to be ready; its log: "
                                              f"{log_path.read_text()[-2000:]}", interval=0.1)
        yield prometheus
    finally:
        process.terminate()
        try:
            process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- what Grafana asks of it ------------------------------------------------------------------

# Grafana's interval variables, for a run of seconds that Prometheus scraped every second: a
# window of a minute holds the whole run (and nothing older: Prometheus started with the module).
WINDOW = "1m"
INTERVALS = {"__rate_interval": WINDOW, "__interval": WINDOW, "__range": WINDOW}
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")
_LABEL_VALUES = re.compile(r"^label_values\((.+),\s*(\w+)\)$")
ALL = "$__all"


def panels_of(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel with queries, those inside rows too."""
    def flat(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [p for panel in panels for p in (panel, *flat(panel.get("panels", [])))]

    return [panel for panel in flat(dashboard["panels"]) if panel.get("targets")]


def fill_in(text: str, values: dict[str, str]) -> str:
    """``text`` with its Grafana variables (``$name``, ``${name}``) replaced; one that has no
    value fails the test, naming it."""
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            pytest.fail(f"no value for the dashboard variable ${name} in {text}")
        return values[name]

    return _VARIABLE.sub(value, text)


def opening_choices(dashboard: dict[str, Any], prometheus: Prometheus) -> dict[str, str]:
    """Each variable's value as Grafana picks it when the dashboard opens: its query run against
    Prometheus (later variables see the earlier ones' values), then the saved choice if "All",
    else the first option in the variable's order, else "All" (its ``allValue``)."""
    values = dict(INTERVALS)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "datasource":  # Grafana's own: which Prometheus, not a filter
            continue
        assert variable["type"] == "query", variable["name"]
        query = variable["query"]
        parsed = _LABEL_VALUES.match(fill_in(query["query"] if isinstance(query, dict) else query,
                                             values))
        assert parsed, f"{variable['name']}: only label_values(...) is understood here"
        options = sorted(prometheus.label_values(parsed.group(2), parsed.group(1)),
                         reverse=variable.get("sort") == 2)  # 2: alphabetical, descending
        saved = variable.get("current", {}).get("value")
        if saved in (ALL, [ALL]) or (not options and variable.get("includeAll")):
            values[variable["name"]] = variable["allValue"]
        else:
            assert options, f"{variable['name']}: its query finds no values"
            values[variable["name"]] = options[0]
    return values


def draws(samples: list[dict[str, Any]]) -> bool:
    """Whether Grafana would draw something: a sample with a number (NaN draws nothing)."""
    return any(math.isfinite(float(sample["value"][1])) for sample in samples)
