"""Resume start-up time against the position in the epoch: sampler-level skip against replay.

A long epoch over a dataset whose items cost a little to load is interrupted at 10%, 50% and 90% of
the epoch; the checkpoint is then resumed and the time from ``fit`` to the first resumed training
batch is measured. With a map-style dataset fulmen skips at the sampler level (no item is loaded
again); the same data behind an IterableDataset has to be replayed.

    python benchmarks/resume_startup.py
    python benchmarks/resume_startup.py --batches 20000 --item-us 50
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

import fulmen as pl


class Items(Dataset):
    def __init__(self, n: int, cost_us: float) -> None:
        self.n, self.cost = n, cost_us / 1e6

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        end = time.perf_counter() + self.cost  # stands for decoding / reading a sample
        while time.perf_counter() < end:
            pass
        return torch.full((8,), float(i))


class Stream(IterableDataset):
    def __init__(self, items: Items) -> None:
        self.items = items

    def __iter__(self):
        return (self.items[i] for i in range(len(self.items)))


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


class _Stop(Exception):
    pass


class StopAt(pl.Callback):
    def __init__(self, at: int, path: str) -> None:
        self.at, self.path = at, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at:
            trainer.save_checkpoint(self.path)
            raise _Stop


class FirstBatch(pl.Callback):
    def __init__(self) -> None:
        self.at = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.at is None:
            self.at = time.perf_counter()
            raise _Stop  # measured: no need to train on


def _trainer(callbacks) -> pl.Trainer:
    return pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", callbacks=callbacks)


def startup(make_loader, at: int, path: str) -> float:
    try:
        _trainer([StopAt(at, path)]).fit(Tiny(), make_loader())
    except _Stop:
        pass
    probe = FirstBatch()
    start = time.perf_counter()
    try:
        _trainer([probe]).fit(Tiny(), make_loader(), ckpt_path=path)
    except _Stop:
        pass
    return probe.at - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--item-us", type=float, default=20.0, help="cost of loading one item, in microseconds")
    args = parser.parse_args()
    items = Items(args.batches * args.batch_size, args.item_us)
    kinds = {
        "map-style (sampler-level skip)": lambda: DataLoader(items, batch_size=args.batch_size, shuffle=True),
        "IterableDataset (replay)": lambda: DataLoader(Stream(items), batch_size=args.batch_size),
    }
    print(f"{args.batches} batches per epoch of {args.batch_size} items, {args.item_us:g} us per item")
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "mid.ckpt")
        for name, make in kinds.items():
            figures = []
            for fraction in (0.1, 0.5, 0.9):
                seconds = startup(make, int(args.batches * fraction), path)
                figures.append(f"{fraction:.0%}: {seconds * 1e3:.0f} ms")
            print(f"{name:32s} resume start-up at " + ", ".join(figures))


if __name__ == "__main__":
    main()
