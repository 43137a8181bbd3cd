"""The program a user writes first, run uninterrupted or resumed from one of its own checkpoints, for the exact
resume tests (``tests/trainer/test_resume_workers.py``, ``tests/strategies/test_resume_distributed.py``).

A shuffled training loader whose ``__getitem__`` draws a random augmentation (in the loader's workers when it has
some), dropout, AdamW with a StepLR stepped per step, gradient accumulation and clipping, validation twice per
epoch with the sanity check, EarlyStopping, ModelCheckpoint every 3 steps, a CSV logger. Each run writes, on rank
zero, ``<root>/final.pt`` (the full weights), ``<root>/final.json`` (callback_metrics) and ``<root>/final_bar.json``
(progress_bar_metrics); the CSV rows are in ``<root>/lightning_logs/version_0/metrics.csv``.

Usage: python resume_program.py OUT RUN [RUN ...]
  RUN = name:workers:persistent:strategy:devices[:checkpoint file name[:logged]]; a run with a checkpoint resumes
  from ``OUT/name/lightning_logs/version_0/checkpoints/<checkpoint>`` (the caller copies the uninterrupted run
  there); an empty checkpoint name starts afresh. ``logged`` runs ``Logged`` (more kinds of logged values) with a
  checkpoint every 4 steps, so that checkpoints fall on the last batch of each epoch, the fit's last included.
Several runs go in one launch, one after another, because starting processes costs seconds.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

import fulmen as pl
from fulmen.callbacks import EarlyStopping, ModelCheckpoint
from fulmen.loggers import CSVLogger

EPOCHS, SAMPLES, BATCH = 4, 64, 8


class Noisy(Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=g)
        self.y = (self.x.sum(1, keepdim=True) > 0).float()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i] + 0.05 * torch.randn(8), self.y[i]  # a random augmentation


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.binary_cross_entropy_with_logits(self.net(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.binary_cross_entropy_with_logits(self.net(x), y), sync_dist=True)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=0.05)
        return [opt], [{"scheduler": torch.optim.lr_scheduler.StepLR(opt, 2, 0.8), "interval": "step"}]


class Logged(Net):
    """Net, logging also to the progress bar and a torchmetrics Metric, each with step and epoch values."""

    def __init__(self) -> None:
        super().__init__()
        from torchmetrics.classification import BinaryAccuracy

        self.accuracy = BinaryAccuracy()

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        loss = F.binary_cross_entropy_with_logits(logits, y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True)
        self.accuracy(logits, y)
        self.log("train_acc", self.accuracy, on_step=True, on_epoch=True)
        return loss


def run(out: str, spec: str) -> None:
    name, workers, persistent, strategy, devices, *ckpt = spec.split(":")
    logged = ckpt[1:] == ["logged"]
    ckpt = [c for c in ckpt[:1] if c]
    root = os.path.join(out, name)
    pl.seed_everything(7)
    model = Logged() if logged else Net()
    kwargs = dict(num_workers=int(workers), persistent_workers=persistent == "1")
    train = DataLoader(Noisy(SAMPLES, 0), batch_size=BATCH, shuffle=True, **kwargs)
    val = DataLoader(Noisy(SAMPLES // 2, 1), batch_size=BATCH, **kwargs)
    trainer = pl.Trainer(
        accelerator="cpu", devices=int(devices), strategy=strategy, max_epochs=EPOCHS, accumulate_grad_batches=2,
        gradient_clip_val=1.0, val_check_interval=0.5, default_root_dir=root, logger=CSVLogger(root),
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[EarlyStopping(monitor="val_loss"),
                   ModelCheckpoint(every_n_train_steps=4 if logged else 3, save_top_k=-1, save_last=True)],
    )
    path = os.path.join(root, "lightning_logs", "version_0", "checkpoints", ckpt[0]) if ckpt else None
    trainer.fit(model, train, val, ckpt_path=path)
    weights = trainer.strategy.lightning_module_state_dict()  # full tensors, on every rank (collective)
    if trainer.is_global_zero:
        torch.save({k: v.detach().clone() for k, v in weights.items()}, os.path.join(root, "final.pt"))
        with open(os.path.join(root, "final.json"), "w") as f:
            json.dump({k: float(v) for k, v in trainer.callback_metrics.items()}, f)
        with open(os.path.join(root, "final_bar.json"), "w") as f:
            json.dump(trainer.progress_bar_metrics, f)


if __name__ == "__main__":
    torch.set_num_threads(1)
    for spec in sys.argv[2:]:
        run(sys.argv[1], spec)
    sys.stdout.flush()
