#!/usr/bin/env python3
"""What fulmen's automatic optimization costs over the same loop written by hand, with gradient
accumulation (accumulate_grad_batches=4) and norm clipping (gradient_clip_val=1.0).

The workload: a 32->64->2 MLP, batch 32, SGD with momentum, one thread. Each run is a fresh process;
"raw" and "fulmen" runs alternate so drift hits both alike; the ratio of medians (fulmen / raw, lower
is better, 1.00 = no overhead) is printed, and the final weights of both are checked to be bitwise equal.

usage: python benchmarks/optimization.py [--steps 2000] [--rounds 5]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

CHILD = r'''
import sys, time, hashlib
import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

variant, batches = sys.argv[1], int(sys.argv[2])
ACC, CLIP = 4, 1.0
torch.set_num_threads(1)
torch.manual_seed(0)
x = torch.randn(batches * 32, 32)
y = (x.sum(1) > 0).long()
loader = DataLoader(TensorDataset(x, y), batch_size=32)

def mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 2))

def make_opt(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)

if variant == "raw":
    net = mlp()
    opt = make_opt(net.parameters())
    n = len(loader)
    start = time.perf_counter()
    for i, (xb, yb) in enumerate(loader):
        if i % ACC == 0:
            opt.zero_grad()
        loss = F.cross_entropy(net(xb), yb) / ACC
        loss.backward()
        if (i + 1) % ACC == 0 or i + 1 == n:
            torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.grad is not None], CLIP)
            opt.step()
    seconds = time.perf_counter() - start
    weights = net.state_dict()
else:
    import fulmen as pl

    class Model(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def training_step(self, batch, batch_idx):
            xb, yb = batch
            return F.cross_entropy(self.net(xb), yb)

        def configure_optimizers(self):
            return make_opt(self.parameters())

    model = Model()
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         accumulate_grad_batches=ACC, gradient_clip_val=CLIP)
    start = time.perf_counter()
    trainer.fit(model, loader)
    seconds = time.perf_counter() - start
    weights = model.net.state_dict()
digest = hashlib.sha256(b"".join(t.numpy().tobytes() for t in weights.values())).hexdigest()[:16]
print(seconds, digest)
'''


def run(variant: str, batches: int) -> tuple[float, str]:
    out = subprocess.run([sys.executable, "-c", CHILD, variant, str(batches)], capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[0]), out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="training batches per run")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"raw": [], "fulmen": []}
    digests: dict[str, set[str]] = {"raw": set(), "fulmen": set()}
    for _ in range(args.rounds):
        for variant in ("raw", "fulmen"):
            seconds, digest = run(variant, args.steps)
            times[variant].append(seconds)
            digests[variant].add(digest)
    raw, ful = statistics.median(times["raw"]), statistics.median(times["fulmen"])
    print(f"batches={args.steps} accumulate_grad_batches=4 gradient_clip_val=1.0 rounds={args.rounds} threads=1")
    print(f"raw    median {raw:.3f}s  ({1e6 * raw / args.steps:.1f} us/batch)  runs {[round(t, 3) for t in times['raw']]}")
    print(f"fulmen median {ful:.3f}s  ({1e6 * ful / args.steps:.1f} us/batch)  runs {[round(t, 3) for t in times['fulmen']]}")
    print(f"ratio fulmen/raw = {ful / raw:.3f}")
    same = digests["raw"] == digests["fulmen"] and len(digests["raw"]) == 1
    print(f"final weights bitwise equal: {same}")


if __name__ == "__main__":
    main()
