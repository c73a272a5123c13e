"""``python -m showrunner``: the ``showrunner`` command."""

from showrunner.cli import run

run()
