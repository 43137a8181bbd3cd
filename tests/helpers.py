"""Small models and data shared by the tests."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

import fulmen as pl


def make_loader(n: int = 64, batch_size: int = 8, features: int = 32, shuffle: bool = False, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = (x.sum(1) > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)


class BoringModel(pl.LightningModule):
    """A tiny classifier with every step defined; logs train_loss / val_loss / test_loss."""

    def __init__(self, features: int = 32, lr: float = 0.1):
        super().__init__()
        self.layer = nn.Linear(features, 2)
        self.lr = lr

    def forward(self, x):
        return self.layer(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        self.log("test_loss", F.cross_entropy(self(x), y))

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def quiet_trainer(**kwargs) -> pl.Trainer:
    """A Trainer with logging, checkpointing, progress bar and summary off unless asked for."""
    defaults = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    accelerator="cpu")
    defaults.update(kwargs)
    return pl.Trainer(**defaults)
