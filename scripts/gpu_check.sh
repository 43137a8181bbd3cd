#!/usr/bin/env bash
# On a machine with NVIDIA GPUs: set up, run the tests of the CUDA-only paths (fp16-mixed's grad scaler,
# bf16-mixed, nccl DDP, FSDP and DeepSpeed on GPUs, sync_batchnorm, pinned memory), then the GPU benchmark
# (a GPT-2-small-sized model in bf16-mixed: fulmen against a raw loop, then DDP over the GPUs present).
# Prints the figures; about 5 minutes once .venv exists (the first setup downloads PyTorch with CUDA), and
# each part stops at a time limit (tests 3 min, benchmark 3.5 min) so the whole stays under 8.
#   bash scripts/gpu_check.sh                 # extra arguments go to benchmarks/gpu.py, e.g. --rounds 3
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
bash scripts/setup.sh test
py=.venv/bin/python
if ! "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: torch sees no CUDA GPU here (torch $("$py" -c 'import torch; print(torch.__version__)')). Run it on" \
       "a machine with an NVIDIA GPU; a CPU-only torch in .venv needs removing first (rm -rf .venv)." >&2
  exit 1
fi
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
"$py" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPUs', torch.cuda.device_count())"

echo "== CUDA tests"
# every test that can use a GPU: the device-parametrized precision tests' cuda cases, and test_gpu.py
# (its 2-GPU test is skipped, and says so, on a machine with one GPU)
timeout 180 "$py" -m pytest -q -rs -p no:cacheprovider tests/strategies/test_gpu.py \
  "tests/optimization/test_precision_parity.py" -k "cuda or test_gpu"
echo "tests: $((SECONDS - start)) s since start"

echo "== benchmark"
timeout 210 "$py" benchmarks/gpu.py --timeout 100 "$@"
echo "gpu_check: done in $((SECONDS - start)) s"
