#!/usr/bin/env bash
# README command 2 (and what .ci/run calls): install what the tests need into .venv, run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest -q "$@"
