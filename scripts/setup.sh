#!/usr/bin/env bash
# Create .venv (if needed) and install fulmen into it with the extras named in $1 (e.g. "test").
# PyTorch: the CPU build where there is no NVIDIA GPU, so a laptop or CI box does not pull gigabytes of CUDA.
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
    # 2.13.0 is the CPU build this workplace keeps on disk; elsewhere PyTorch's CPU index serves one
    "${pip[@]}" "torch==2.13.0" 2> >(grep -v "^WARNING: Location" >&2) \
      || "${pip[@]}" "torch>=2.4" --index-url https://download.pytorch.org/whl/cpu \
      || "${pip[@]}" "torch>=2.4"
  fi
fi
target="."
[ -n "$extras" ] && target=".[${extras}]"
# this workplace's pip prints a warning per package about a missing local index; keep the real errors
"${pip[@]}" -e "$target" 2> >(grep -v "^WARNING: Location" >&2)
.venv/bin/python -c "import fulmen" # fail loudly if the install did not work
