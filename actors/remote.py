"""The Ray side of the actors: factories that make the plain classes named actors, and the
adapter through which the coordinator awaits a provider actor.

One actor per provider is what makes a limit hold for the whole cluster: every episode on every
node calls the same actor, so there is one limiter per key, not one per worker.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray
from ray.exceptions import RayTaskError

from actors.coordinator import EpisodeCoordinator, ThreadMediaTasks
from actors.gateway import ChatResult, MediaResult, ProviderGateway
from pipelines.composition import compose_scene, pan_clip, stitch
from pipelines.settings import ProviderKind, ProviderSettings, Settings

NAMESPACE = "showrunner"
# In-flight calls are coroutines in the actor, not threads or processes: thousands cost little.
MAX_CONCURRENCY = 20_000


def actor_name(role: str, prefix: str = "showrunner") -> str:
    return f"{prefix}:{role}"


def _options(name: str, detached: bool) -> dict[str, Any]:
    options: dict[str, Any] = {
        "name": name,
        "namespace": NAMESPACE,
        "get_if_exists": True,
        # Both only wait on the network: a CPU held here is one a media task cannot use.
        "num_cpus": 0,
        "max_concurrency": MAX_CONCURRENCY,
    }
    if detached:
        options["lifetime"] = "detached"
    return options


def provider_actor(
    kind: ProviderKind,
    settings: ProviderSettings,
    *,
    local_base_url: str | None = None,
    name: str | None = None,
    detached: bool = False,
) -> Any:
    """The provider's actor, created on first use and shared after (got-if-exists by name)."""
    return (
        ray.remote(ProviderGateway)
        .options(**_options(name or actor_name(kind), detached))
        .remote(kind, settings, local_base_url=local_base_url)
    )


class RayProvider:
    """Lets the coordinator await a provider actor like a local object.

    Cancelling the awaiting coroutine cancels the actor's call too, so its limiter slot is freed
    and its HTTP request aborted; errors arrive as the provider's own typed error.
    """

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> ChatResult:
        return await await_call(self.handle.chat.remote(messages, **kwargs))

    async def speech(self, text: str, **kwargs: Any) -> MediaResult:
        return await await_call(self.handle.speech.remote(text, **kwargs))

    async def image(self, prompt: str, **kwargs: Any) -> MediaResult:
        return await await_call(self.handle.image.remote(prompt, **kwargs))

    async def clip(self, prompt: str, **kwargs: Any) -> MediaResult:
        return await await_call(self.handle.clip.remote(prompt, **kwargs))


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
    """The coordinator's CPU work as Ray tasks, one CPU each, anywhere in the cluster; the
    encoding and the CPU accounting are ``ThreadMediaTasks``'s."""

    async def run(self, fn: Any, *args: Any) -> Any:
        task = {compose_scene: compose_scene_task, stitch: stitch_task,
                pan_clip: pan_clip_task}[fn]
        return await await_call(task.remote(*args))


def coordinator_actor(
    settings: Settings,
    providers: dict[str, Any],
    *,
    output_root: str | None = None,
    name: str | None = None,
    detached: bool = False,
) -> Any:
    """The coordinator actor, given the provider actors' handles."""
    return (
        ray.remote(EpisodeCoordinator)
        .options(**_options(name or actor_name("coordinator"), detached))
        .remote(
            settings,
            {kind: RayProvider(handle) for kind, handle in providers.items()},
            output_root=output_root,
            tasks=RayMediaTasks(settings.encoding),
        )
    )


# CPU work: one CPU each, spread over the cluster's nodes by Ray. No retries: a composition that
# fails says why, and a cancelled one kills its ffmpeg (see ``pipelines.composition``).
compose_scene_task = ray.remote(num_cpus=1, max_retries=0)(compose_scene)
stitch_task = ray.remote(num_cpus=1, max_retries=0)(stitch)
pan_clip_task = ray.remote(num_cpus=1, max_retries=0)(pan_clip)
