#!/usr/bin/env python3
"""How much fulmen adds to a hand-written PyTorch loop on a tiny model, and to `import torch`.

The workload: a 32->64->2 MLP, batch 32, SGD, `self.log` of the loss every step, one thread.
Each variant runs in a fresh process, variants alternate, and the ratio of medians is printed:

  bare      Trainer with progress bar, logger and checkpointing off   (target <= 1.05, same loss bit for bit)
  nolog     as bare, without self.log                                  (bare/nolog = the cost of logging)
  defaults  Trainer defaults: progress bar, default logger (TensorBoard when installed, else CSV), checkpoint (target <= 1.15)
  lightning PyTorch Lightning's Trainer, as bare, when --lightning-python names an interpreter that has it

usage: python benchmarks/overhead.py [--steps 3000] [--rounds 5] [--lightning-python /path/to/python]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r'''
import sys, time, tempfile
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

def mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 2))

if variant == "raw":
    net = mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    start = time.perf_counter()
    for xb, yb in loader:
        loss = F.cross_entropy(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
else:
    if variant == "lightning":
        import pytorch_lightning as pl
    else:
        import fulmen as pl
    log = variant != "nolog"

    class Model(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def training_step(self, batch, batch_idx):
            xb, yb = batch
            loss = F.cross_entropy(self.net(xb), yb)
            if log:
                self.log("loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model = Model()
    if variant == "defaults":
        flags = dict(default_root_dir=tempfile.mkdtemp())
    else:
        flags = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, **flags)
    start = time.perf_counter()
    trainer.fit(model, loader)
    seconds = time.perf_counter() - start
    net = model.net
with torch.no_grad():
    final = F.cross_entropy(net(x[:1024]), y[:1024]).item()
print("RESULT", seconds, repr(final))
'''

IMPORT = r'''
import resource, time
t0 = time.perf_counter(); import torch; t1 = time.perf_counter()
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
import fulmen
t2 = time.perf_counter(); rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("RESULT", t2 - t1, (rss1 - rss0) / 1024)
'''


def child(python: str, args: list[str]) -> list[str]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    out = subprocess.run([python, *args], capture_output=True, text=True, env=env, timeout=900)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return line.split()[1:]
    raise SystemExit(f"{args[:2]} failed:\n{out.stdout[-1500:]}{out.stderr[-3000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--python", default=sys.executable, help="interpreter with fulmen installed")
    ap.add_argument("--lightning-python", default=None, help="interpreter with pytorch_lightning installed")
    a = ap.parse_args()
    with tempfile.NamedTemporaryFile("w", suffix="_overhead_child.py", delete=False) as f:
        f.write(CHILD)
    variants = ["raw", "bare", "nolog", "defaults"] + (["lightning"] if a.lightning_python else [])
    times: dict[str, list[float]] = {v: [] for v in variants}
    losses: dict[str, str] = {}
    try:
        for _ in range(a.rounds):
            for v in variants:
                py = a.lightning_python if v == "lightning" else a.python
                seconds, loss = child(py, [f.name, v, str(a.steps)])
                times[v].append(float(seconds))
                losses[v] = loss
        imports = [child(a.python, ["-c", IMPORT]) for _ in range(a.rounds)]
    finally:
        os.unlink(f.name)
    raw = statistics.median(times["raw"])
    print(f"raw loop: {raw / a.steps * 1e6:.0f} us/step over {a.steps} steps, median of {a.rounds} rounds")
    for v in variants[1:]:
        ratio = statistics.median(times[v]) / raw
        print(f"{v:>9}/raw = {ratio:.3f}   final loss {losses[v]} (raw {losses['raw']}, same: {losses[v] == losses['raw']})")
    print(f"logging every step costs {statistics.median(times['bare']) / statistics.median(times['nolog']) - 1:+.1%}")
    imp_s = statistics.median(float(i[0]) for i in imports)
    imp_mb = statistics.median(float(i[1]) for i in imports)
    print(f"import fulmen adds {imp_s:.3f} s and {imp_mb:.1f} MB to import torch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
