"""The two wings' import contracts (import-linter, in pyproject.toml) hold on the tree, and fail when a runtime
module imports the training stack or the build wing: shown on a copy of the package with one module added."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(where: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(where)}  # the package found first is the one in `where`
    return subprocess.run([str(LINT), "--no-cache"], cwd=where, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "bertdeploy", tmp_path / "bertdeploy", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_tree_keeps_every_contract() -> None:
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(("module", "line", "broken"), [
    ("runtime/leak.py", "import torch\n", "bertdeploy.runtime is not allowed to import torch"),
    ("serve/leak.py", "from transformers import AutoTokenizer\n",
     "bertdeploy.serve is not allowed to import transformers"),
    ("predict/leak.py", "from bertdeploy.builder import export\n",
     "bertdeploy.predict is not allowed to import bertdeploy.builder"),
    ("labels_leak.py", "from bertdeploy.runtime import predictor\n",
     "bertdeploy.labels is not allowed to import bertdeploy.runtime"),
])
def test_a_forbidden_import_breaks_a_contract(copy: Path, module: str, line: str, broken: str) -> None:
    path = copy / "bertdeploy" / module
    if module == "labels_leak.py":  # a core module that reaches up into the runtime
        path = copy / "bertdeploy" / "labels.py"
        path.write_text(path.read_text() + "\n" + line)
    else:
        path.write_text(line)
    done = lint(copy)
    assert done.returncode != 0
    assert broken in done.stdout, done.stdout
    assert "1 broken" in done.stdout or "2 broken" in done.stdout
