"""What SpikeDetection costs a run without spikes: step time without the callback, with detection only
(Lightning's behaviour: one read of the loss per batch), and with ``recover=True`` (host snapshots of the
weights and Adam's state every ``snapshot_every_n_steps`` steps), and the memory the snapshots hold.

An MLP (``--width``, ``--layers``; ~8.4M parameters by default) trains with Adam on random data; each
variant is a fresh fit of ``--steps`` steps after a short warm-up, variants alternate for ``--rounds``
rounds, and the median time per step is printed (process CPU time and wall time: on a shared machine the
wall clock measures the neighbours too). On a GPU (``--device cuda``) the snapshot is a device-to-host
copy into pinned memory that does not wait for the device.

    python benchmarks/spike_recovery.py
    python benchmarks/spike_recovery.py --device cuda --width 4096 --layers 8 --steps 200
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as pl
from fulmen.callbacks import SpikeDetection


class MLP(pl.LightningModule):
    def __init__(self, width: int, layers: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(*[m for _ in range(layers) for m in (nn.Linear(width, width), nn.ReLU())])

    def training_step(self, batch, batch_idx):
        return self.net(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-5)


class Clock(pl.Callback):
    """Times the steps after the first ``skip`` (start-up and the first snapshot's allocation)."""

    def __init__(self, skip: int) -> None:
        self.skip, self.marks = skip, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.skip:
            if trainer.strategy.root_device.type == "cuda":
                torch.cuda.synchronize()
            self.marks = [time.process_time(), time.perf_counter()]

    def on_train_end(self, trainer, pl_module):
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        self.marks += [time.process_time(), time.perf_counter()]


def _timed_snapshots(spike: SpikeDetection, took: list[float]) -> None:
    """Record the CPU time of each snapshot the guard takes (on a GPU: the time to queue its copies)."""
    guard, take = spike._guard, spike._guard._take

    def timed(*args):
        start = time.process_time()
        take(*args)
        took.append(time.process_time() - start)

    guard._take = timed


def run(variant: str, a: argparse.Namespace, took: list[float]) -> tuple[float, float, int]:
    spike = {"none": None, "detect": SpikeDetection(),
             "recover/10": SpikeDetection(recover=True, snapshot_every_n_steps=10),
             "recover/1": SpikeDetection(recover=True, snapshot_every_n_steps=1)}[variant]
    if spike is not None and spike.recover:
        _timed_snapshots(spike, took)
    clock = Clock(skip=5)
    data = TensorDataset(torch.randn((a.steps + 5) * a.batch, a.width))
    trainer = pl.Trainer(accelerator=a.device, devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[clock] + ([spike] if spike else []))
    trainer.fit(MLP(a.width, a.layers), DataLoader(data, batch_size=a.batch))
    cpu0, wall0, cpu1, wall1 = clock.marks
    snapshot = spike._guard.snapshot_bytes if spike is not None else 0
    return (cpu1 - cpu0) / a.steps * 1e3, (wall1 - wall0) / a.steps * 1e3, snapshot


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.set_num_threads(1) if a.device == "cpu" else None
    variants = ["none", "detect", "recover/10", "recover/1"]
    times: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    memory, took = {}, {v: [] for v in variants}
    for _ in range(a.rounds):
        for v in variants:
            cpu, wall, memory[v] = run(v, a, took[v])
            times[v].append((cpu, wall))
    params = sum(p.numel() for p in MLP(a.width, a.layers).parameters())
    state = params * 4 * 3  # fp32 weights + Adam's two moments
    print(f"MLP {a.layers}x{a.width} ({params / 1e6:.1f}M parameters; weights + Adam state {state / 2**20:.0f} MiB), "
          f"batch {a.batch}, {a.steps} steps x {a.rounds} rounds, device {a.device}, load {os.getloadavg()[0]:.1f}")
    base_cpu = statistics.median(t[0] for t in times["none"])
    base_wall = statistics.median(t[1] for t in times["none"])
    print(f"{'variant':<12} {'cpu ms/step':>12} {'vs none':>8} {'wall ms/step':>13} {'vs none':>8} {'snapshots MiB':>14} "
          f"{'one snapshot ms':>16}")
    for v in variants:
        cpu = statistics.median(t[0] for t in times[v])
        wall = statistics.median(t[1] for t in times[v])
        one = f"{statistics.median(took[v][1:]) * 1e3:.1f}" if len(took[v]) > 1 else "-"  # [0] allocates
        print(f"{v:<12} {cpu:>12.2f} {cpu / base_cpu:>7.3f}x {wall:>13.2f} {wall / base_wall:>7.3f}x "
              f"{memory[v] / 2**20:>14.0f} {one:>16}")


if __name__ == "__main__":
    main()
