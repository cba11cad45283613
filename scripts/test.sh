#!/usr/bin/env bash
# Set up .venv (first run only) and run the linter and the test suite; extra args go to pytest.
source "$(dirname "$0")/_setup.sh" dev
ruff check bertdeploy tests scripts benchmarks
lint-imports --no-cache  # the wings' contracts (pyproject.toml: tool.importlinter)
python -m pytest "$@"
