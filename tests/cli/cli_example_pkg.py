"""A tiny model and datamodule that the CLI tests drive as a user's package would be driven.

Each run writes ``<default_root_dir>/result_<stage>.json`` at teardown: the metrics, the final
weights, the optimizer and scheduler in use, and the hyperparameters, so a test in another process
can check what the command line actually did.
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen


class BoringModel(fulmen.LightningModule):
    """A linear-ReLU-linear regressor.

    Args:
        hidden: width of the hidden layer
        lr: learning rate of the built-in SGD optimizer
    """

    def __init__(self, hidden: int = 4, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(3, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.predictions = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._loss(batch))

    def test_step(self, batch, batch_idx):
        self.log("test_loss", self._loss(batch))

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        self.predictions += len(batch[0])
        return self(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    def teardown(self, stage: str) -> None:
        trainer = self.trainer
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        schedulers = trainer.lr_scheduler_configs
        result = {
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            "weights": [float(p) for p in torch.cat([p.detach().flatten() for p in self.parameters()])],
            "hparams": dict(self.hparams),
            "optimizer": type(optimizer).__name__ if optimizer else None,
            "optimizer_lr": optimizer.param_groups[0]["lr"] if optimizer else None,
            "scheduler": type(schedulers[0].scheduler).__name__ if schedulers else None,
            "global_step": trainer.global_step,
            "predictions": self.predictions,
            "log_dir": trainer.log_dir,
            "datamodule": type(trainer.datamodule).__name__ if trainer.datamodule is not None else None,
        }
        with open(os.path.join(trainer.default_root_dir, f"result_{stage}.json"), "w") as f:
            json.dump(result, f)


class WideModel(BoringModel):
    """BoringModel with a wider default and an extra dropout.

    Args:
        hidden: width of the hidden layer
        dropout: dropout probability after the hidden layer
    """

    def __init__(self, hidden: int = 16, dropout: float = 0.0, lr: float = 0.1) -> None:
        super().__init__(hidden=hidden, lr=lr)
        self.save_hyperparameters()
        self.net.insert(2, nn.Dropout(dropout))


class WithEncoder(BoringModel):
    """BoringModel whose first layer is given as a class (a nested ``class_path`` on the command line).

    Args:
        encoder: the first layer; its output width is the hidden width
    """

    def __init__(self, encoder: nn.Module, lr: float = 0.1) -> None:
        super().__init__(hidden=encoder.out_features, lr=lr)
        self.net[0] = encoder


class RandomData(fulmen.LightningDataModule):
    """Fixed random regression data: the same for every run with the same ``seed``.

    Args:
        batch_size: samples per batch
        num_batches: batches per loader
        seed: seed of the data generator (independent of --seed_everything)
    """

    def __init__(self, batch_size: int = 4, num_batches: int = 3, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        g = torch.Generator().manual_seed(self.hparams.seed)
        n = self.hparams.batch_size * self.hparams.num_batches
        x = torch.randn(n, 3, generator=g)
        self.dataset = TensorDataset(x, x.sum(dim=1, keepdim=True))

    def _loader(self, shuffle: bool = False) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.hparams.batch_size, shuffle=shuffle)

    def train_dataloader(self):
        return self._loader(shuffle=True)

    def val_dataloader(self):
        return self._loader()

    def test_dataloader(self):
        return self._loader()

    def predict_dataloader(self):
        return self._loader()
