"""The Ray side of the actors: the factory that makes the plain classes named actors, the adapter
through which one actor awaits another, and the media work as Ray tasks. The only module of
``actors`` besides ``actors.ray_metrics`` that imports Ray.

One actor per provider is what makes a limit hold for the whole cluster: every episode on every
node calls the same actor, so there is one limiter per key, not one per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import ray
from ray.exceptions import (
    NodeDiedError,
    OutOfMemoryError,
    RayActorError,
    RayTaskError,
    WorkerCrashedError,
)

from actors.coordinator import EpisodeCoordinator
from actors.gateway import ProviderGateway
from actors.media_tasks import ThreadMediaTasks
from actors.ray_metrics import RayCoordinatorMetrics, RayProviderMetrics
from actors.tenant_desk import TenantDesk
from local_server.process import LocalServer
from pipelines.composition import compose_scene, pan_clip, stitch
from pipelines.errors import ProviderActorLost, WorkerLost
from pipelines.settings import EncodingSettings, ProviderKind, ProviderSettings, Settings
from pipelines.storage import Storage

log = logging.getLogger("showrunner.actors")
NAMESPACE = "showrunner"
# In-flight calls are coroutines in the actor, not threads or processes: thousands cost little.
MAX_CONCURRENCY = 20_000


def actor_name(role: str, prefix: str = "showrunner") -> str:
    return f"{prefix}:{role}"


def _options(name: str, detached: bool, resources: dict[str, float] | None = None,
             claim: bool = False) -> dict[str, Any]:
    """``resources``: Ray custom resources that pin the actor to the nodes that have them
    (``settings.placement``); a restart after its node is lost lands on another such node."""
    options: dict[str, Any] = {
        "name": name,
        "namespace": NAMESPACE,
        # Shared by name, unless claimed: then a taken name is Ray's ValueError.
        "get_if_exists": not claim,
        # They only wait on the network: a CPU held here is one a media task cannot use.
        "num_cpus": 0,
        "max_concurrency": MAX_CONCURRENCY,
        # A killed process comes back under the same name and handle. Calls in flight fail (the
        # engine retries them: a provider call may have been paid, so Ray must not resend it);
        # calls made while it restarts wait for it.
        "max_restarts": -1,
    }
    if detached:
        options["lifetime"] = "detached"
    if resources:
        options["resources"] = dict(resources)
    return options


def normal_priority(role: str) -> None:
    """Run this worker at ordinary priority. Ray starts its workers at niceness 15
    (``RAY_worker_niceness``), below every ordinary process on the node: right for media work,
    wrong for the actors every episode waits on. Measured with two busy processes beside it, a
    provider actor at niceness 15 made 16 calls a second instead of hundreds, and its limiter's
    timing slipped. Linux keeps a niceness per thread, so each of the process's threads is
    raised (threads started later inherit it). Raising a priority needs root or CAP_SYS_NICE;
    without them this says so once and goes on."""
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: not Linux
        threads = [0]
    try:
        for thread in threads:
            with contextlib.suppress(ProcessLookupError):  # (a thread that ended meanwhile)
                os.setpriority(os.PRIO_PROCESS, thread, 0)
    except PermissionError:
        log.warning("the %s actor runs at Ray's worker niceness (%d): busy processes on its "
                    "node will slow it; run Ray with RAY_worker_niceness=0, or give it "
                    "CAP_SYS_NICE", role, os.getpriority(os.PRIO_PROCESS, 0))


class ProviderActor(ProviderGateway):
    """A provider's gateway as its actor, at ordinary priority. One that Ray restarted starts
    with empty buckets: the process before it may have spent this second's quota just before
    it died."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        normal_priority("provider")
        restarted = ray.get_runtime_context().was_current_actor_reconstructed
        super().__init__(*args, start_empty=restarted, **kwargs)
        self._batched: dict[str, asyncio.Task[Any]] = {}  # calls of batches, by call id
        self.batches = 0  # batches received (``calls``), for the tests and benchmarks

    async def calls(self, batch: list[tuple[str, str, tuple[Any, ...], dict[str, Any]]]
                    ) -> AsyncIterator[tuple[str, bool, Any]]:
        """A batch of calls (id, method, args, kwargs) made at once; yields each one's
        ``(id, True, answer)`` or ``(id, False, error)`` as it ends (``ProviderProxy``)."""
        self.batches += 1
        running = {asyncio.ensure_future(getattr(self, method)(*args, **kwargs)): call_id
                   for call_id, method, args, kwargs in batch if method in BATCHED}
        self._batched.update((call_id, task) for task, call_id in running.items())
        pending = set(running)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    call_id = running[task]
                    del self._batched[call_id]
                    if task.cancelled():
                        yield call_id, False, asyncio.CancelledError()
                    elif (error := task.exception()) is not None:
                        yield call_id, False, _sendable(error)
                    else:
                        yield call_id, True, task.result()
        finally:  # the caller is gone (or cancelled the batch): stop what is left of it
            for task in pending:
                task.cancel()
                self._batched.pop(running[task], None)

    async def cancel_calls(self, call_ids: list[str]) -> None:
        """Stop calls of a batch: their limiter slots are freed, their requests aborted."""
        for call_id in call_ids:
            task = self._batched.get(call_id)
            if task is not None:
                task.cancel()


def provider_actor(kind: ProviderKind, settings: ProviderSettings, *,
                   local_base_url: str | None = None, name: str | None = None,
                   detached: bool = False, state_url: str | None = None,
                   storage: Storage | None = None,
                   resources: dict[str, float] | None = None) -> Any:
    """The provider's actor, created on first use and shared after (got-if-exists by name).
    ``state_url``: the store of its ledger and call cache; ``storage``: where its files go,
    cached ones too."""
    return (
        ray.remote(ProviderActor)
        .options(**_options(name or actor_name(kind), detached, resources))
        .remote(kind, settings, local_base_url=local_base_url,
                metrics=RayProviderMetrics(kind.value), state_url=state_url,
                storage=storage)
    )


class CoordinatorActor(EpisodeCoordinator):
    """The coordinator as its actor, at ordinary priority: every episode's next call waits on
    it. ``detached``: the service's, which outlives whoever made it (a CLI run's ends with
    the run, so the service must not take it up by name)."""

    def __init__(self, *args: Any, detached: bool = False, **kwargs: Any) -> None:
        normal_priority("coordinator")
        super().__init__(*args, **kwargs)
        self._detached = detached

    async def is_detached(self) -> bool:
        return self._detached


def coordinator_actor(settings: Settings, providers: dict[ProviderKind, str], *,
                      storage: Storage | None = None, state_url: str | None = None,
                      name: str | None = None, detached: bool = False,
                      claim: bool = False) -> Any:
    """The coordinator actor, given the provider actors' names; ``state_url`` is its state
    store (a coordinator Ray restarts takes up its episodes from there). ``claim``: a new one,
    or ``ValueError`` if one has the name."""
    return (
        ray.remote(CoordinatorActor)
        .options(**_options(name or actor_name("coordinator"), detached,
                            settings.placement.coordinator, claim))
        .remote(
            settings,
            {kind: ProviderProxy(name, kind) for kind, name in providers.items()},
            storage=storage,
            tasks=RayMediaTasks(storage, settings.encoding,
                                settings.placement.media),
            metrics=RayCoordinatorMetrics(),
            state_url=state_url,
            detached=detached,
        )
    )


def tenant_desk_actor(coordinator: str, *, name: str, detached: bool = True) -> Any:
    """The service's desk, in front of the coordinator actor (by name)."""
    return (
        ray.remote(TenantDesk)
        .options(**_options(name, detached))
        .remote(NamedActor(coordinator))
    )


class BundledServer:
    """The bundled local server as a child process of an actor: the service's provider actors
    need one stable URL, so the server belongs to a detached actor rather than to whichever
    Serve replica started first."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.server = LocalServer(**options)
        self.server.start()

    def base_url(self) -> str:
        return self.server.base_url

    def stop(self) -> None:
        self.server.stop()


def bundled_server_actor(options: dict[str, Any], *, name: str, detached: bool = True) -> Any:
    extra = {"lifetime": "detached"} if detached else {}
    return (
        ray.remote(BundledServer)
        .options(name=name, namespace=NAMESPACE, get_if_exists=True, num_cpus=0, **extra)
        .remote(options)
    )


class ActorProxy:
    """Lets one actor await another's methods like a local object's.

    Cancelling the awaiting coroutine cancels the call too, so a provider's limiter slot is
    freed and its HTTP request aborted; errors arrive as the callee's own typed error.
    """

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def actor(self) -> Any:
        return self._handle

    def __getattr__(self, method: str) -> Any:
        if method.startswith("__") or "_handle" not in self.__dict__:
            raise AttributeError(method)  # pickling looks for dunders; never a remote call

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await await_call(getattr(self.actor(), method).remote(*args, **kwargs))

        return call


class NamedActor(ActorProxy):
    """An actor handed to another actor by its name, looked up on first use.

    A handle among an actor's constructor arguments is kept in the object store, where a restart
    may not find it (ray-project/ray#53727); a name always resolves, to the restarted actor too.
    """

    def __init__(self, name: str) -> None:
        super().__init__(None)
        self.name = name

    def actor(self) -> Any:
        if self._handle is None:
            self._handle = ray.get_actor(self.name, namespace=NAMESPACE)
        return self._handle

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name,))  # a handle is this process's; the name travels


class ProviderProxy(NamedActor):
    """A provider actor, awaited like a gateway. Its process dying under a call is that call's
    ``ProviderActorLost``, which the executor runs again once the actor is back.

    Calls made in one turn of the caller's event loop (a node's end readies several others)
    go to the actor as one Ray call, a stream that yields each answer as it comes: a Ray round
    trip costs about as much CPU as the HTTP call it carries, so one per batch instead of one
    per call is what lets one actor make over a thousand calls a second. A call alone in its
    turn goes as a plain Ray call, which answers soonest."""

    def __init__(self, name: str, kind: ProviderKind) -> None:
        super().__init__(name)
        self.kind = kind
        self._batcher: CallBatcher | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.kind))

    def __getattr__(self, method: str) -> Any:
        call = super().__getattr__(method)
        batched = method in BATCHED

        async def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                if batched:
                    if self._batcher is None:
                        self._batcher = CallBatcher(self.actor, self._lost)
                    return await self._batcher.call(method, args, kwargs)
                return await call(*args, **kwargs)
            except RayActorError as err:
                raise self._lost(err) from err

        return guarded

    def _lost(self, err: BaseException) -> ProviderActorLost:
        return ProviderActorLost(f"the {self.kind} provider actor's process died: "
                                 f"{type(err).__name__}")


# The provider calls that go in batches: those a run makes by the thousand.
BATCHED = frozenset({"chat", "speech", "image"})


class CallBatcher:
    """Gathers the calls made in one turn of the event loop and sends them as one batch."""

    def __init__(self, actor: Callable[[], Any],
                 lost: Callable[[BaseException], Exception]) -> None:
        self._actor = actor
        self._lost = lost
        self._pending: list[tuple[str, str, tuple[Any, ...], dict[str, Any],
                                  asyncio.Future[Any]]] = []
        self._prefix = uuid.uuid4().hex[:12]
        self._numbers = itertools.count()
        self._streams: set[asyncio.Task[None]] = set()

    async def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        loop = asyncio.get_running_loop()
        if not self._pending:
            loop.call_soon(self._send)
        call_id = f"{self._prefix}-{next(self._numbers)}"
        answer: asyncio.Future[Any] = loop.create_future()
        self._pending.append((call_id, method, args, kwargs, answer))
        return await answer  # (a cancel here is passed on by the answer's sender, below)

    def _send(self) -> None:
        batch, self._pending = self._pending, []
        batch = [entry for entry in batch if not entry[4].done()]  # (cancelled meanwhile)
        if not batch:
            return
        if len(batch) == 1:
            [(call_id, method, args, kwargs, answer)] = batch
            ref = getattr(self._actor(), method).remote(*args, **kwargs)
            stream = self._one(ref, answer)
        else:
            actor = self._actor()
            ref = actor.calls.options(num_returns="streaming").remote(
                [(call_id, method, args, kwargs) for call_id, method, args, kwargs, _ in batch])
            for call_id, *_, answer in batch:  # a cancelled call stops in the actor: its
                answer.add_done_callback(  # limiter slot is freed, its request aborted
                    lambda done, stop=[call_id]: done.cancelled()
                    and actor.cancel_calls.remote(stop))
            stream = self._many(ref, {entry[0]: entry[4] for entry in batch})
        task = asyncio.get_running_loop().create_task(stream)
        self._streams.add(task)  # (held, or the loop could drop it)
        task.add_done_callback(self._streams.discard)

    async def _one(self, ref: Any, answer: asyncio.Future[Any]) -> None:
        answer.add_done_callback(lambda done: done.cancelled() and ray.cancel(ref))
        try:
            value = await await_call(ref)
        except RayActorError as err:
            _settle(answer, error=self._lost(err))
        except Exception as err:  # the call's own error, as itself
            _settle(answer, error=err)
        else:
            _settle(answer, value=value)

    async def _many(self, stream: Any, answers: dict[str, asyncio.Future[Any]]) -> None:
        try:
            async for ref in stream:
                call_id, ok, value = await ref
                answer = answers.pop(call_id)
                _settle(answer, **({"value": value} if ok else {"error": value}))
        except RayActorError as err:
            for answer in answers.values():
                _settle(answer, error=self._lost(err))
        except RayTaskError as err:  # a bug in the batch itself: every call fails with it
            for answer in answers.values():
                _settle(answer, error=err.cause if isinstance(err.cause, Exception) else err)


def _sendable(error: BaseException) -> BaseException:
    """An error as it can travel back: ours pickle whole; anything else (a bug) as its text."""
    try:
        pickle.dumps(error)
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


def _settle(answer: asyncio.Future[Any], *, value: Any = None,
            error: BaseException | None = None) -> None:
    if answer.done():  # its caller gave up on it
        return
    if error is not None:
        answer.set_exception(error)
    else:
        answer.set_result(value)


async def await_call(ref: Any) -> Any:
    """Await a Ray call: cancelling the waiter cancels the call; a task's own error is raised
    as itself, not wrapped."""
    try:
        return await ref
    except asyncio.CancelledError:
        ray.cancel(ref)
        raise
    except RayTaskError as err:
        if isinstance(err.cause, Exception):
            raise err.cause from None
        raise


class RayMediaTasks(ThreadMediaTasks):
    """The coordinator's CPU work as Ray tasks, one CPU each, anywhere in the cluster (on the
    nodes with ``resources``, if given)."""

    def __init__(self, storage: Storage | None, encoding: EncodingSettings | None = None,
                 resources: dict[str, float] | None = None) -> None:
        super().__init__(storage, encoding)
        self.resources = dict(resources or {})

    async def run(self, fn: Any, *args: Any) -> Any:
        task = {compose_scene: compose_scene_task, stitch: stitch_task,
                pan_clip: pan_clip_task}[fn]
        if self.resources:
            task = task.options(resources=self.resources)
        try:
            return await await_call(task.remote(*args))
        except (WorkerCrashedError, NodeDiedError, OutOfMemoryError) as err:
            raise WorkerLost(f"{fn.__name__}'s worker died: {type(err).__name__}") from err


# CPU work: one CPU each, spread over the cluster's nodes by Ray. No Ray retries: one retry policy,
# the executor's, runs lost work again (``WorkerLost``); a composition that fails says why, and a
# cancelled one kills its ffmpeg (see ``pipelines.composition``).
compose_scene_task = ray.remote(num_cpus=1, max_retries=0)(compose_scene)
stitch_task = ray.remote(num_cpus=1, max_retries=0)(stitch)
pan_clip_task = ray.remote(num_cpus=1, max_retries=0)(pan_clip)
