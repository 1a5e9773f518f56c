#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine, then run the whole suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k windowing
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
# Lint and types first (configured in pyproject.toml): either one failing fails the run.
.venv/bin/python -m ruff check .
.venv/bin/python -m mypy
exec .venv/bin/python -m pytest "$@"
