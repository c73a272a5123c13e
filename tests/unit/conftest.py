"""Unit tests run without Ray: starting it here is a mistake, so it fails loudly."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _forbid_ray_init(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unit tests must not start Ray; move this test to tests/integration")

    monkeypatch.setattr(ray, "init", refuse)
    # Run after the integration tier in one process, Ray is up; unit code must still see none.
    monkeypatch.setattr(ray, "is_initialized", lambda: False)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``SHOWRUNNER_*`` variable from the caller's shell leaks into a settings test."""
    import os

    for name in list(os.environ):
        if name.startswith("SHOWRUNNER_"):
            monkeypatch.delenv(name)
