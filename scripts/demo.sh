#!/usr/bin/env bash
# Set everything up, then train the digits classifier with the Trainer's defaults:
# a progress bar, a checkpoint and a log under ./lightning_logs (CSV here; TensorBoard where it is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh examples
exec .venv/bin/python examples/digits/train.py "$@"
