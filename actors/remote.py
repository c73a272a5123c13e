"""The Ray side of the actors: the factory that makes the plain classes named actors, the adapter
through which one actor awaits another, and the media work as Ray tasks. The only module of
``actors`` besides ``actors.ray_metrics`` that imports Ray.

One actor per provider is what makes a limit hold for the whole cluster: every episode on every
node calls the same actor, so there is one limiter per key, not one per worker.
"""

from __future__ import annotations

import asyncio
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

NAMESPACE = "showrunner"
# In-flight calls are coroutines in the actor, not threads or processes: thousands cost little.
MAX_CONCURRENCY = 20_000


def actor_name(role: str, prefix: str = "showrunner") -> str:
    return f"{prefix}:{role}"


def _options(name: str, detached: bool, resources: dict[str, float] | None = None
             ) -> dict[str, Any]:
    """``resources``: Ray custom resources that pin the actor to the nodes that have them
    (``settings.placement``); a restart after its node is lost lands on another such node."""
    options: dict[str, Any] = {
        "name": name,
        "namespace": NAMESPACE,
        "get_if_exists": True,
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


class ProviderActor(ProviderGateway):
    """A provider's gateway as its actor. One that Ray restarted starts with empty buckets:
    the process before it may have spent this second's quota just before it died."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        restarted = ray.get_runtime_context().was_current_actor_reconstructed
        super().__init__(*args, start_empty=restarted, **kwargs)


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


def coordinator_actor(settings: Settings, providers: dict[ProviderKind, str], *,
                      storage: Storage | None = None, state_url: str | None = None,
                      name: str | None = None, detached: bool = False) -> Any:
    """The coordinator actor, given the provider actors' names; ``state_url`` is its state
    store (a coordinator Ray restarts takes up its episodes from there)."""
    return (
        ray.remote(EpisodeCoordinator)
        .options(**_options(name or actor_name("coordinator"), detached,
                            settings.placement.coordinator))
        .remote(
            settings,
            {kind: ProviderProxy(name, kind) for kind, name in providers.items()},
            storage=storage,
            tasks=RayMediaTasks(storage, settings.encoding,
                                settings.placement.media),
            metrics=RayCoordinatorMetrics(),
            state_url=state_url,
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
    ``ProviderActorLost``, which the executor runs again once the actor is back."""

    def __init__(self, name: str, kind: ProviderKind) -> None:
        super().__init__(name)
        self.kind = kind

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.kind))

    def __getattr__(self, method: str) -> Any:
        call = super().__getattr__(method)

        async def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return await call(*args, **kwargs)
            except RayActorError as err:
                raise ProviderActorLost(f"the {self.kind} provider actor's process died: "
                                        f"{type(err).__name__}") from err

        return guarded


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
