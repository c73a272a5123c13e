"""Commands tier: ``showrunner`` and ``ray`` run as processes, each starting a Ray of its own.

A finished run's folder is made once for the session: ``showrunner run`` takes seconds to start
Ray, and the tests of its report and those of ``showrunner open`` read the same run.
"""

from __future__ import annotations

import pytest

from tests.commands.cli_runs import FinishedRun, finish_a_run


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    return finish_a_run(tmp_path_factory.mktemp("finished-run"))
