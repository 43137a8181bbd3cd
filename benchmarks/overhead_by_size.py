#!/usr/bin/env python3
"""fulmen's time over a hand-written PyTorch loop, by model size: the overhead a framework adds shows on small
models and fades on large ones.

The workload at each size: an MLP 32 -> H -> H -> 2 (H from 16 to 1024), batch 64, SGD, `self.log` of the loss
every step, one thread, on the CPU. Each run is a fresh process timing `trainer.fit` (or the raw loop) from
start to end; variants alternate so drift hits them alike; the ratio of medians is reported. The clock is the
process's CPU time by default (`--clock cpu`): on a machine shared with other work, wall-clock time mostly
measures the neighbours; `--clock wall` measures wall-clock time, for a quiet machine.

  raw        the loop written by hand: forward, loss, zero_grad, backward, step
  fulmen     fulmen's Trainer with progress bar, logger, checkpointing and summary off
  lightning  PyTorch Lightning's Trainer with the same flags, when --lightning-python names an interpreter with it

usage: python benchmarks/overhead_by_size.py [--rounds 5] [--clock cpu|wall] [--json out.json] [--plot out.png]
                                             [--lightning-python /path/to/python]
The docs' figures come from the committed docs/assets/overhead_by_size.json, written by
    python benchmarks/overhead_by_size.py --lightning-python /path/to/python --json docs/assets/overhead_by_size.json
(the docs build draws the plot from it with plot() below, and every page quotes its ratios from it).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

SIZES = (16, 64, 256, 1024)
# enough steps that the smallest model runs for about a second: the ratio then is not start-up noise
STEPS = {16: 3000, 64: 3000, 256: 1500, 1024: 300}

CHILD = r'''
import sys, time
import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

variant, hidden, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
clock = time.process_time if sys.argv[4] == "cpu" else time.perf_counter
torch.set_num_threads(1)
torch.manual_seed(0)
x = torch.randn(steps * 64, 32)
y = (x.sum(1) > 0).long()
loader = DataLoader(TensorDataset(x, y), batch_size=64)

def mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(32, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2))

if variant == "raw":
    net = mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    start = clock()
    for xb, yb in loader:
        loss = F.cross_entropy(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = clock() - start
else:
    if variant == "lightning":
        import pytorch_lightning as pl
    else:
        import fulmen as pl

    class Model(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def training_step(self, batch, batch_idx):
            xb, yb = batch
            loss = F.cross_entropy(self.net(xb), yb)
            self.log("loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    model = Model()
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    start = clock()
    trainer.fit(model, loader)
    seconds = clock() - start
    net = model.net
params = sum(p.numel() for p in net.parameters())
print("RESULT", seconds, params)
'''


def child(python: str, args: list[str]) -> tuple[float, int]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    out = subprocess.run([python, *args], capture_output=True, text=True, env=env, timeout=900)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            seconds, params = line.split()[1:]
            return float(seconds), int(params)
    raise SystemExit(f"{args[1:]} failed:\n{out.stdout[-1500:]}{out.stderr[-3000:]}")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    return f"{cpu}, {os.cpu_count()} cores visible, 1 thread used; Python {platform.python_version()}, torch {torch.__version__}"


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    params = [row["params"] for row in results["rows"]]
    for variant, style in (("fulmen", "o-"), ("lightning", "s--")):
        if all(variant in row["ratio"] for row in results["rows"]):
            ax.plot(params, [row["ratio"][variant] for row in results["rows"]], style, label=variant)
    ax.axhline(1.0, color="grey", lw=1, ls=":", label="hand-written loop")
    ax.set_xscale("log")
    ax.set_xlabel("model parameters")
    ax.set_ylabel("time / time of the hand-written loop")
    clock = "CPU time" if results["clock"] == "cpu" else "wall-clock time"
    ax.set_title(f"Training {clock} against a raw PyTorch loop (CPU, 1 thread, batch 64)", fontsize=10)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="CPU time of the process, or wall-clock")
    ap.add_argument("--python", default=sys.executable, help="interpreter with fulmen installed")
    ap.add_argument("--lightning-python", default=None, help="interpreter with pytorch_lightning installed")
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    ap.add_argument("--plot", default=None, help="draw the ratios into this PNG (needs matplotlib)")
    a = ap.parse_args()
    variants = ["raw", "fulmen"] + (["lightning"] if a.lightning_python else [])
    with tempfile.NamedTemporaryFile("w", suffix="_overhead_size_child.py", delete=False) as f:
        f.write(CHILD)
    rows = []
    try:
        for hidden in SIZES:
            times: dict[str, list[float]] = {v: [] for v in variants}
            params = 0
            for _ in range(a.rounds):
                for v in variants:
                    py = a.lightning_python if v == "lightning" else a.python
                    seconds, params = child(py, [f.name, v, str(hidden), str(STEPS[hidden]), a.clock])
                    times[v].append(seconds)
            raw = statistics.median(times["raw"])
            row = {"hidden": hidden, "params": params, "steps": STEPS[hidden],
                   "raw_us_per_step": raw / STEPS[hidden] * 1e6,
                   "ratio": {v: statistics.median(times[v]) / raw for v in variants[1:]}}
            rows.append(row)
            print(f"H={hidden:<5} {params:>9,} params  raw {row['raw_us_per_step']:7.0f} us/step ({a.clock})  "
                  + "  ".join(f"{v}/raw {r:.3f}" for v, r in row["ratio"].items()), flush=True)
    finally:
        os.unlink(f.name)
    results = {"machine": machine(), "rounds": a.rounds, "clock": a.clock, "batch_size": 64, "rows": rows}
    if a.json:
        with open(a.json, "w") as out:
            json.dump(results, out, indent=1)
    if a.plot:
        plot(results, a.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
