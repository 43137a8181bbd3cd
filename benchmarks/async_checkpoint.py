"""How much a checkpoint save stalls training: the synchronous writer against AsyncCheckpointIO.

A model of a few hundred MB trains with a checkpoint every few steps. For each writer it prints the
median time of a training iteration without a save, of the iteration that saves (for the background
writer: the copy to CPU memory), and of the iterations that run while a background write is in flight.

    python benchmarks/async_checkpoint.py            # ~300 MB of weights
    python benchmarks/async_checkpoint.py --width 2048 --layers 4
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as pl
from fulmen.callbacks import ModelCheckpoint
from fulmen.checkpoint import AsyncCheckpointIO


class Big(pl.LightningModule):
    def __init__(self, width: int, layers: int) -> None:
        super().__init__()
        self.net = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])

    def training_step(self, batch, batch_idx):
        return self.net(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-6)


class Clock(pl.Callback):
    """Iteration times, each tagged: a save happened in it, a background write was in flight, or neither."""

    def __init__(self, every: int) -> None:
        self.every, self.last, self.rows = every, None, []
        self.busy_at_start = False

    def _busy(self, trainer) -> bool:
        writers = trainer._async_writers()
        return any(not f.done() for w in writers for f in w._pending)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        now = time.perf_counter()
        if self.last is not None:
            self.rows.append((now - self.last, self.kind))
        self.last = now
        self.busy_at_start = self._busy(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        saves = trainer.global_step % self.every == 0
        self.kind = "save" if saves else "in flight" if self.busy_at_start or self._busy(trainer) else "normal"


def run(width: int, layers: int, steps: int, every: int, use_async: bool) -> dict[str, list[float]]:
    torch.manual_seed(0)
    model = Big(width, layers)
    loader = DataLoader(TensorDataset(torch.randn(64, width)), batch_size=8)
    clock = Clock(every)
    with tempfile.TemporaryDirectory() as d:
        trainer = pl.Trainer(
            max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
            plugins=[AsyncCheckpointIO()] if use_async else None,
            callbacks=[clock, ModelCheckpoint(dirpath=d, every_n_train_steps=every, save_top_k=1)],
        )
        trainer.fit(model, loader)
    out: dict[str, list[float]] = {}
    for seconds, kind in clock.rows[2:]:  # the first iterations warm up
        out.setdefault(kind, []).append(seconds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=3072)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=8)
    args = parser.parse_args()
    size_mb = args.layers * (args.width * args.width + args.width) * 4 / 2**20
    print(f"model: {size_mb:.0f} MB of weights; a checkpoint every {args.every} steps; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for use_async in (False, True):
        times = run(args.width, args.layers, args.steps, args.every, use_async)
        normal = statistics.median(times.get("normal", [float("nan")]))
        parts = [f"normal step {normal * 1e3:.0f} ms"]
        for kind in ("save", "in flight"):
            if kind in times:
                m = statistics.median(times[kind])
                parts.append(f"{kind} {m * 1e3:.0f} ms ({m / normal:.2f}x, n={len(times[kind])})")
        print(f"{'AsyncCheckpointIO' if use_async else 'synchronous      '}: " + "; ".join(parts))


if __name__ == "__main__":
    main()
