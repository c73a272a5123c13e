"""Runs one episode's graph: starts what its engine says is ready, awaits it, and tells the
engine how it went. No graph logic here: which nodes may run, what a failure skips and when the
episode is over are ``pipelines.engine``'s; what a node does is its runner's.

In-flight nodes are coroutines awaiting the provider actors (or Ray tasks, for CPU work); none
holds a process.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Mapping

from actors.metrics import NO_METRICS, CoordinatorMetrics
from actors.node_runners import EpisodeContext, NodeRunner
from pipelines.engine import EpisodeEngine, Outcome
from pipelines.episode_state import EventKind, NodeRecord, NodeResult
from pipelines.errors import BudgetExceeded, NodeFailed, storage_error
from pipelines.planner import Node, NodeId, NodeKind

# What the coordinator records of an episode's progress: an event, about a node or not.
Emit = Callable[[EventKind, NodeId | None, str], None]
MAX_ERROR_CHARS = 1000
# A node whose work was lost (``NodeFailed.rerun``: a killed worker, encoder or provider actor) is
# run again this many times, after a pause that doubles from RERUN_PAUSE_S.
MAX_RERUNS = 3
RERUN_PAUSE_S = 0.5


class EpisodeExecutor:
    def __init__(self, ctx: EpisodeContext, engine: EpisodeEngine,
                 runners: Mapping[NodeKind, NodeRunner], emit: Emit, *, started: float,
                 metrics: CoordinatorMetrics = NO_METRICS) -> None:
        """``started``: when the episode started, on the monotonic clock."""
        self.ctx = ctx
        self.engine = engine
        self.runners = runners
        self.emit = emit
        self.started = started
        self.metrics = metrics

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    async def run(self) -> Outcome:
        """Until the engine says the episode is over. Cancelled, it cancels what runs; those
        nodes go back to ready (nothing half-kept). A bug in a node is raised."""
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                running |= {asyncio.create_task(self._execute(node))
                            for node in self.engine.start_ready()}
                if self.engine.is_over:
                    return self.engine.outcome()
                finished, running = await asyncio.wait(running,
                                                       return_when=asyncio.FIRST_COMPLETED)
                # A node's own failure was marked; anything else is a bug, raised (every one is
                # looked at, so none is left unretrieved).
                bugs = [error for task in finished if (error := task.exception())]
                if bugs:
                    raise bugs[0]
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            self.engine.abandon()

    async def _execute(self, node: Node) -> None:
        record = self.ctx.record
        figures = record.node(node.id)
        figures.started_s = self.elapsed()
        self.emit(EventKind.NODE_STARTED, node.id, "")
        try:
            result = await self._attempts(node, figures)
        except NodeFailed as err:
            figures.error = str(err)[:MAX_ERROR_CHARS]
            figures.finished_s = self.elapsed()
            if isinstance(err, BudgetExceeded):  # not the node's failure: the episode stops
                self.engine.stop(figures.error)
            self.engine.mark_failed(node.id, rate_limited=figures.rate_limited > 0)
            self.emit(EventKind.NODE_FAILED, node.id, figures.error)
            return
        record.results[node.id] = result
        figures.finished_s = self.elapsed()
        self.engine.mark_done(node.id, rate_limited=figures.rate_limited > 0)
        self.metrics.stage(node.kind, figures.finished_s - figures.started_s)
        self.emit(EventKind.NODE_FINISHED, node.id, "")

    async def _attempts(self, node: Node, figures: NodeRecord) -> NodeResult:
        """The node's runner, run again while its work is lost under it. A file that could not
        be written or read is the node's failure, classified, not a bug."""
        for rerun in itertools.count():
            try:
                try:
                    return await self.runners[node.kind].run(self.ctx, node, figures)
                except OSError as err:
                    if isinstance(err, ConnectionError | TimeoutError) and err.filename is None:
                        raise  # no file's error: a bug, since providers' are mapped
                    raise storage_error(err) from err
            except NodeFailed as err:
                if not err.rerun or rerun >= MAX_RERUNS:
                    raise
                figures.reruns += 1
                self.emit(EventKind.NODE_RETRYING, node.id, str(err)[:MAX_ERROR_CHARS])
                await asyncio.sleep(RERUN_PAUSE_S * 2**rerun)
        raise AssertionError("unreachable")
