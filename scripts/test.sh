#!/usr/bin/env bash
# Set everything up (fulmen with every optional extra), then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
exec .venv/bin/python -m pytest "$@"
