"""Record what PyTorch Lightning gives for ``parity_program.py`` into ``parity_lightning.json`` (not run by the
tests; tests/strategies/test_lightning_parity.py compares fulmen against the file).

    python -m venv /tmp/plvenv && /tmp/plvenv/bin/pip install torch==<fulmen's torch> 'pytorch-lightning==2.6.*'
    python tests/data/make_parity_lightning.py --lightning-python /tmp/plvenv/bin/python
    python tests/data/make_parity_lightning.py --lightning-python /tmp/plvenv/bin/python --compare   # no writing:
        # run every configuration on both and say, per rank, whether each recorded field is bitwise equal

Use the same torch version as fulmen's environment (the file records both versions). Lightning under ``ddp``
with loader workers sometimes hangs in a forked worker (CPython 3.11 fork-after-threads), so each run has a
time limit and is retried.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PROGRAM = os.path.join(HERE, "parity_program.py")
OUTPUT = os.path.join(HERE, "parity_lightning.json")
# name: (devices, workers, seed_everything(workers=True))
CONFIGS = {
    "one_device": (1, 0, False),
    "ddp_workers0": (2, 0, False),
    "ddp_workers2": (2, 2, False),
    "ddp_workers2_seeded": (2, 2, True),
}
# (base seed, worker id, rank) for pl_worker_init_function; the draws after it
WORKER_CASES = [(0, 0, 0), (12345, 1, 0), (12345, 1, 1), (2**63 - 7, 3, 5)]
WORKER_DRAWS = """
import json, random, sys, numpy as np, torch
from {module} import pl_worker_init_function
out = []
for base, worker, rank in {cases}:
    torch.manual_seed(base + worker)  # what torch does in worker `worker` of a loader with base seed `base`
    pl_worker_init_function(worker, rank=rank)
    out.append({{"torch": torch.rand(3).tolist(), "python": random.random(), "numpy": np.random.rand(2).tolist()}})
print(json.dumps(out))
"""


def run(python: str, lib: str, devices: int, workers: int, seeded: bool, tries: int = 3) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PL_", "MASTER_", "FULMEN_"))}
    env.update(OMP_NUM_THREADS="1")
    for attempt in range(tries):
        out = tempfile.mkdtemp(prefix="parity-")
        cmd = [python, PROGRAM, out, "--lib", lib, "--devices", str(devices), "--workers", str(workers)]
        cmd += ["--seed-workers"] if seeded else []
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            err = b"timed out"
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the whole group: children and loader workers
            except ProcessLookupError:
                pass
            proc.wait()
        try:
            reports = [json.load(open(os.path.join(out, f"rank{r}.json"))) for r in range(devices)]
        except FileNotFoundError:
            print(f"{lib} {devices} {workers} {seeded}: try {attempt + 1} failed: {err.decode()[-500:]}", file=sys.stderr)
            continue
        finally:
            shutil.rmtree(out, ignore_errors=True)
        return reports
    raise SystemExit(f"{lib} devices={devices} workers={workers}: no result in {tries} tries")


def predictions(reports: list[dict]) -> dict[int, str]:
    """Every rank's predictions by sample index (fulmen's predict returns all of them on every rank)."""
    return {i: value for rep in reports for idx, values in rep["predict"] for i, value in zip(idx, values)}


def versions(python: str, module: str) -> dict:
    code = f"import torch, {module} as m; print(torch.__version__, m.__version__)"
    torch_v, lib_v = subprocess.check_output([python, "-c", code], text=True).split()
    return {"torch": torch_v, module: lib_v}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lightning-python", required=True, help="an interpreter with pytorch_lightning installed")
    parser.add_argument("--compare", action="store_true", help="run fulmen too (this interpreter) and compare")
    args = parser.parse_args()
    draws = WORKER_DRAWS.format(module="lightning_fabric.utilities.seed", cases=WORKER_CASES)
    result = {"versions": versions(args.lightning_python, "pytorch_lightning"), "worker_cases": WORKER_CASES,
              "worker_draws": json.loads(subprocess.check_output([args.lightning_python, "-c", draws], text=True))}
    for name, (devices, workers, seeded) in CONFIGS.items():
        result[name] = run(args.lightning_python, "lightning", devices, workers, seeded)
        print(f"{name}: val_loss {result[name][0]['val_loss']:.7f}", file=sys.stderr)
        if args.compare:
            mine = run(sys.executable, "fulmen", devices, workers, seeded)
            for r, (a, b) in enumerate(zip(mine, result[name])):
                fields = [k for k in b if k not in ("lib", "predict")]
                diff = [k for k in fields if a[k] != b[k]]
                print(f"  rank {r}: fulmen val_loss {a['val_loss']:.7f}; "
                      + (f"differs in {diff}" if diff else "every recorded field bitwise equal"), file=sys.stderr)
            same = predictions(mine) == predictions(result[name])
            print(f"  predictions by sample: {'bitwise equal' if same else 'DIFFERENT'}", file=sys.stderr)
    if args.compare:
        ours = json.loads(subprocess.check_output(
            [sys.executable, "-c", WORKER_DRAWS.format(module="fulmen.utilities.seed", cases=WORKER_CASES)], text=True))
        print("worker seeds:", "equal" if ours == result["worker_draws"] else "DIFFERENT", file=sys.stderr)
        return
    with open(OUTPUT, "w") as f:
        json.dump(result, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
