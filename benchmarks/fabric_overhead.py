#!/usr/bin/env python3
"""Per-step cost of Fabric over a raw PyTorch loop on a tiny model: fulmen's Fabric and Lightning's.

The workload: a 32->64->2 MLP, batch 32, SGD, one thread, the loop written once and converted in Fabric's five
changes (Fabric(), setup, setup_dataloaders, fabric.backward, the wrapped optimizer). Each variant runs in a fresh
process, variants alternate, and the median per-step time and its ratio to raw are printed (goal: <= 1.03).

  raw        plain PyTorch
  fulmen     fulmen.fabric.Fabric(accelerator="cpu")
  lightning  lightning.fabric.Fabric(accelerator="cpu"), when --lightning-python names an interpreter that has it
             (else the interpreter running this script, if it can import lightning); otherwise not measured

usage: python benchmarks/fabric_overhead.py [--steps 4000] [--rounds 5] [--lightning-python /path/to/python]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CHILD = r'''
import sys, time
import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

variant, steps = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(1)
torch.manual_seed(0)
x = torch.randn(steps * 32, 32)
y = (x.sum(1) > 0).long()
loader = DataLoader(TensorDataset(x, y), batch_size=32)
torch.manual_seed(1)
model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
if variant == "raw":
    backward = lambda loss: loss.backward()
else:
    if variant == "fulmen":
        from fulmen.fabric import Fabric
    else:
        from lightning.fabric import Fabric
    fabric = Fabric(accelerator="cpu", devices=1)
    model, optimizer = fabric.setup(model, optimizer)
    loader = fabric.setup_dataloaders(loader)
    backward = fabric.backward
t = time.perf_counter()
for xb, yb in loader:
    loss = F.cross_entropy(model(xb), yb)
    optimizer.zero_grad()
    backward(loss)
    optimizer.step()
dt = time.perf_counter() - t
with torch.no_grad():
    final = F.cross_entropy(model(x[:1024]), y[:1024]).item()
print(f"RESULT {dt / steps:.9f} {final!r}")
'''


def run(python: str, variant: str, steps: int, env: dict[str, str]) -> tuple[float, float]:
    out = subprocess.run([python, "-c", CHILD, variant, str(steps)], capture_output=True, text=True, env=env)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")]
    if out.returncode or not line:
        raise SystemExit(f"{variant} failed:\n{out.stderr[-2000:]}")
    _, per_step, final = line[0].split()
    return float(per_step), float(final)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lightning-python", default=None)
    args = parser.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    lightning_python = args.lightning_python or sys.executable
    has_lightning = subprocess.run([lightning_python, "-c", "import lightning.fabric"], capture_output=True,
                                   env={k: v for k, v in env.items() if k != "PYTHONPATH"}).returncode == 0
    variants = ["raw", "fulmen"] + (["lightning"] if has_lightning else [])
    times: dict[str, list[float]] = {v: [] for v in variants}
    finals: dict[str, float] = {}
    for _ in range(args.rounds):
        for v in variants:
            child_env = env if v != "lightning" else {k: val for k, val in env.items() if k != "PYTHONPATH"}
            per_step, finals[v] = run(lightning_python if v == "lightning" else sys.executable, v, args.steps,
                                      child_env)
            times[v].append(per_step)
    raw = statistics.median(times["raw"])
    print(f"{args.steps} steps x {args.rounds} rounds; load average {os.getloadavg()[0]:.2f}")
    for v in variants:
        med = statistics.median(times[v])
        print(f"{v:10s} {med * 1e6:8.1f} us/step   ratio to raw {med / raw:.3f}   final loss {finals[v]!r}")
    if not has_lightning:
        print("lightning  not measured: `import lightning.fabric` failed (pass --lightning-python)")


if __name__ == "__main__":
    main()
