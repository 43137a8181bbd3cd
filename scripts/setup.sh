#!/usr/bin/env bash
# Create .venv (if needed) and install fulmen into it with the extras named in $1 (e.g. "test").
# PyTorch, when .venv has none yet: with an NVIDIA GPU (nvidia-smi lists one), the default build from PyPI,
# which includes CUDA; without one, a CPU-only build, so a laptop or CI machine does not download gigabytes of
# CUDA libraries it cannot use. An existing torch in .venv is kept as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${pip[@]}" "torch>=2.4"
  else
    # a CPU build, tried in turn: the 2.13.0 CPU wheel if pip's configured indexes or wheel folders hold it
    # (PyPI does not: it fails fast there, rather than fetching PyPI's CUDA build), then the newest wheel from
    # PyTorch's CPU index, then whatever pip's configured index offers
    "${pip[@]}" "torch==2.13.0+cpu" 2> >(grep -v "^WARNING: Location" >&2) \
      || "${pip[@]}" "torch>=2.4" --index-url https://download.pytorch.org/whl/cpu \
      || "${pip[@]}" "torch>=2.4"
  fi
fi
target="."
[ -n "$extras" ] && target=".[${extras}]"
# pip warns once per package when a configured local index folder is missing; drop those lines, keep the errors
"${pip[@]}" -e "$target" 2> >(grep -v "^WARNING: Location" >&2)
.venv/bin/python -c "import fulmen" # fail loudly if the install did not work
