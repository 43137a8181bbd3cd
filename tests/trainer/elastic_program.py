"""The program a user writes first, interrupted on one number of processes and resumed on another, for
``tests/trainer/test_elastic_resume.py``.

A shuffled training loader with 2 workers whose samples carry their index, validation with the sanity check,
SGD with momentum and a per-step StepLR, ModelCheckpoint every 3 optimizer steps. No random augmentation and no
dropout: which process draws a sample's random numbers changes with the number of processes, so only a
deterministic model can end with the uninterrupted run's weights. Every training batch appends a line
``epoch global_step id id ...`` to ``OUT/<run>/ids-rank<r>.txt``; rank zero writes the final weights to
``OUT/<run>/final.pt``.

Usage: python elastic_program.py OUT RUN [RUN ...]   (all runs of one launch on the same number of processes)
  RUN = name:devices:strategy:accumulate:global_batch[:source:checkpoint file]; global_batch 0 runs without
  ElasticResume; with a source, the run resumes from ``OUT/<source>/ckpts/<checkpoint file>``.
"""

from __future__ import annotations

import os
import sys

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

import fulmen as pl
from fulmen.callbacks import ElasticResume, ModelCheckpoint

EPOCHS, SAMPLES, BATCH = 2, 96, 4


class Indexed(Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=g)
        self.y = (self.x.sum(1, keepdim=True) > 0).float()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i


class Net(pl.LightningModule):
    def __init__(self, ids_file: str) -> None:
        super().__init__()
        self.ids_file = ids_file
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        x, y, ids = batch
        with open(self.ids_file, "a") as f:
            f.write(" ".join(map(str, [self.current_epoch, self.global_step, *ids.tolist()])) + "\n")
        loss = F.binary_cross_entropy_with_logits(self.net(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y, _ = batch
        self.log("val_loss", F.binary_cross_entropy_with_logits(self.net(x), y), sync_dist=True)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.2, momentum=0.9)
        return [opt], [{"scheduler": torch.optim.lr_scheduler.StepLR(opt, 2, 0.9), "interval": "step"}]


def run(out: str, spec: str) -> None:
    name, devices, strategy, accumulate, global_batch, *resume = spec.split(":")
    root = os.path.join(out, name)
    os.makedirs(root, exist_ok=True)
    pl.seed_everything(3)
    trainer = pl.Trainer(
        accelerator="cpu", devices=int(devices), strategy=strategy, max_epochs=EPOCHS,
        accumulate_grad_batches=int(accumulate), default_root_dir=root, logger=False, enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=os.path.join(root, "ckpts"), every_n_train_steps=3, save_top_k=-1),
                   *([ElasticResume(global_batch_size=int(global_batch))] if int(global_batch) else [])],
    )
    model = Net(os.path.join(root, f"ids-rank{trainer.global_rank}.txt"))
    train = DataLoader(Indexed(SAMPLES, 0), batch_size=BATCH, shuffle=True, num_workers=2, persistent_workers=True)
    val = DataLoader(Indexed(16, 1), batch_size=BATCH, num_workers=1)
    path = os.path.join(out, resume[0], "ckpts", resume[1]) if resume else None
    trainer.fit(model, train, val, ckpt_path=path)
    weights = trainer.strategy.lightning_module_state_dict()  # full tensors, on every rank (collective)
    if trainer.is_global_zero:
        torch.save({k: v.detach().clone() for k, v in weights.items()}, os.path.join(root, "final.pt"))


if __name__ == "__main__":
    torch.set_num_threads(1)
    for spec in sys.argv[2:]:
        run(sys.argv[1], spec)
    sys.stdout.flush()
