#!/usr/bin/env bash
# Install, lint and run the whole test suite (what CI runs). Pass pytest options through, e.g. -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check modelshrink tests scripts examples
.venv/bin/mkdocs build --strict --quiet --site-dir "$(mktemp -d)"  # a broken link in docs/ fails here
.venv/bin/python -m pytest -q "$@"
