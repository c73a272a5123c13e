"""A real browser for the page's tests: Debian's Chromium, driven by Playwright. The fixtures
are offered to every tier by ``tests/conftest.py``.

Playwright's own browser download is not used (the machines reach only the package registries):
it drives the system's ``chromium`` by ``executable_path``. One browser per test module, not per
session: while Playwright's sync API is open it leaves its event loop marked running in the
thread, and a later test's ``asyncio.run`` would refuse to start. Each test gets a fresh
context (its own session storage and cookies), so tests never see each other's sign-in.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import unavailable

CHROMIUM = "Chromium (Debian's chromium) and Playwright (pip install -e '.[test]')"
GET_CHROMIUM = "apt-get install chromium"
# Headless on a closed network: without the background-networking flags Chromium keeps trying
# (and failing) to reach Google's hosts.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--autoplay-policy=no-user-gesture-required"]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        executable = None
    if executable is None:
        unavailable(CHROMIUM, GET_CHROMIUM)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page in a context of its own; what the page logged as an error fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    yield page
    context.close()
    assert not errors, f"the page threw: {errors}"
