"""The bundled local server as a child process of a named actor: one per cluster for the service.

Serve replicas come and go; the provider actors they share need one stable URL to call, so the
server belongs to a detached actor rather than to whichever replica started first.
"""

from __future__ import annotations

from typing import Any

import ray

from local_server.process import LocalServer


class BundledServer:
    def __init__(self, options: dict[str, Any]) -> None:
        self.server = LocalServer(**options)
        self.server.start()

    def base_url(self) -> str:
        return self.server.base_url

    def stop(self) -> None:
        self.server.stop()


def bundled_server_actor(options: dict[str, Any], *, name: str, namespace: str,
                         detached: bool = True) -> Any:
    extra = {"lifetime": "detached"} if detached else {}
    return (
        ray.remote(BundledServer)
        .options(name=name, namespace=namespace, get_if_exists=True, num_cpus=0, **extra)
        .remote(options)
    )
