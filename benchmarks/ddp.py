#!/usr/bin/env python3
"""What fulmen's DDP adds to a hand-written DistributedDataParallel loop: 2 gloo processes on CPU.

The workload: a 64->256->256->2 MLP, batch 64 per process, SGD, the same samples in the same order
(a DistributedSampler without shuffling), one thread per process. Each variant is a fresh
`python` command that starts its second process itself (the raw loop the way torchrun would, fulmen
and Lightning with their own launchers); variants alternate, and the medians are printed:

  raw        the hand-written loop: init_process_group, DDP(model), DistributedSampler, SGD
  fulmen     Trainer(accelerator="cpu", devices=2, strategy="ddp"), progress bar/logger/checkpoints off
  lightning  the same with PyTorch Lightning, when --lightning-python names an interpreter that has it

Figures: training time on rank 0 (first step to last, both ranks in step; target fulmen/raw <= 1.05),
start-up (command start to the first step: the launcher, imports, process group, DDP set-up), and
whether the final weights equal the raw loop's bit for bit.

usage: python benchmarks/ddp.py [--steps 300] [--rounds 3] [--lightning-python /path/to/python]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

WORKER = r'''
import hashlib, json, os, subprocess, sys, time
import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

variant, steps, out, launched = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
torch.set_num_threads(1)
BATCH = 64
g = torch.Generator().manual_seed(0)
x = torch.randn(steps * BATCH * 2, 64, generator=g)
y = (x.sum(1) > 0).long()
data = TensorDataset(x, y)


def mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 2))


def digest(module):
    h = hashlib.sha256()
    for t in module.state_dict().values():
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def report(rank, start, end, module):
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"train_s": end - start, "startup_s": start - launched, "weights": digest(module)}, f)


if variant == "raw":
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank = int(os.environ.get("RANK", "0"))
    child = None
    if rank == 0:  # start rank 1 as torchrun would: the same command, the rank in the environment
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
        child = subprocess.Popen([sys.executable, *sys.argv], env=dict(os.environ, RANK="1"))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    net = mlp()
    model = DDP(net)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(data, batch_size=BATCH, sampler=DistributedSampler(data, 2, rank, shuffle=False))
    dist.barrier()
    start = time.time()
    for xb, yb in loader:
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    dist.barrier()
    end = time.time()
    report(rank, start, end, net)
    dist.destroy_process_group()
    if child is not None:
        child.wait()
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
            return F.cross_entropy(self.net(xb), yb)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Clock(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            trainer.strategy.barrier()
            self.start = time.time()

        def on_train_end(self, trainer, pl_module):
            trainer.strategy.barrier()
            report(trainer.global_rank, self.start, time.time(), pl_module.net)

    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         callbacks=[Clock()])
    trainer.fit(Model(), DataLoader(data, batch_size=BATCH))
'''


def run(python: str, variant: str, steps: int, script: str, folder: str) -> dict:
    out = os.path.join(folder, f"{variant}.json")
    if os.path.exists(out):
        os.remove(out)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    subprocess.run([python, script, variant, str(steps), out, repr(time.time())], check=True, env=env, timeout=900,
                   cwd=folder)
    with open(out) as f:
        return json.load(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lightning-python", default=None)
    args = parser.parse_args()
    variants = [("raw", sys.executable), ("fulmen", sys.executable)]
    if args.lightning_python:
        variants.append(("lightning", args.lightning_python))
    results: dict[str, list[dict]] = {name: [] for name, _ in variants}
    with tempfile.TemporaryDirectory() as folder:
        script = os.path.join(folder, "ddp_worker.py")
        with open(script, "w") as f:
            f.write(WORKER)
        for round_ in range(args.rounds):
            order = variants if round_ % 2 == 0 else variants[::-1]  # alternate, so drifts in machine load even out
            for name, python in order:
                results[name].append(run(python, name, args.steps, script, folder))
    raw_train = statistics.median(r["train_s"] for r in results["raw"])
    print(f"{args.steps} steps, 2 gloo processes on CPU, median of {args.rounds} alternating rounds")
    print(f"{'variant':<10} {'train s':>8} {'ratio':>6} {'start-up s':>10}  weights")
    for name, _ in variants:
        train = statistics.median(r["train_s"] for r in results[name])
        startup = statistics.median(r["startup_s"] for r in results[name])
        same = all(r["weights"] == results["raw"][0]["weights"] for r in results[name])
        print(f"{name:<10} {train:8.3f} {train / raw_train:6.3f} {startup:10.2f}  "
              f"{'bitwise equal to raw' if same else 'differ from raw'}")


if __name__ == "__main__":
    main()
