"""``showrunner open``'s app served for real on loopback (uvicorn in a thread of this process),
for the tests of its API and of the studio page over it."""

from __future__ import annotations

import threading

import requests
import uvicorn

from showrunner import open_run
from tests.support import wait_for

LIMITS = {"max_batch": 50, "max_scenes_per_request": 1000}


class Served:
    """The app of ``showrunner open`` on a loopback port, in a thread of this process."""

    def __init__(self, folder: open_run.RunFolder) -> None:
        self.sock = open_run.listen(0)
        self.base = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(
            open_run.build_app(folder, LIMITS), log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run,
                                       kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        wait_for(lambda: self.server.started, 10, "the app to listen")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def get(self, path: str, **kwargs: object) -> requests.Response:
        return requests.get(self.base + path, timeout=10, **kwargs)  # type: ignore[arg-type]
