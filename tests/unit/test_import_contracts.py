"""The layers hold: the import contracts in ``pyproject.toml`` pass on this tree, and each one
breaks on a deliberately wrong import (made in a copy of the tree)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
LINT = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("showrunner", "actors", "pipelines", "local_server", "bench", "tests")


def lint(cwd: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    only = [arg for contract in contracts for arg in ("--contract", contract)]
    return subprocess.run([str(LINT), "--no-cache", *only], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_the_tree_keeps_every_contract() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "wrong", "contract"),
    [
        ("pipelines/planner.py", "import ray", "pure-domain"),
        ("pipelines/models.py", "import fastapi", "pure-domain"),
        ("actors/stats.py", "from ray.util import metrics", "ray-free-actors"),
        ("actors/gateway.py", "from actors import remote", "actor-factory"),
        ("pipelines/settings.py", "import actors.coordinator", "layers"),
        ("actors/coordinator.py", "import showrunner.launcher", "layers"),
        ("local_server/app.py", "import pipelines.models", "separate-server"),
        ("actors/executor.py", "import bench.common", "product-only"),
        ("pipelines/errors.py", "import pipelines.report", "no-cycles"),
    ],
)
def test_a_wrong_import_breaks_its_contract(tmp_path: Path, module: str, wrong: str,
                                            contract: str) -> None:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{wrong}  # the wrong import\n")
    result = lint(tmp_path, contract)
    assert result.returncode == 1 and "1 broken" in result.stdout, result.stdout[-3000:]
    assert f".{Path(module).stem}" in result.stdout  # names the culprit
