"""Browser tier: pages opened in a real Chromium, with no Ray (the fixtures: ``tests.chromium``)."""

from tests.chromium import browser, page  # noqa: F401
