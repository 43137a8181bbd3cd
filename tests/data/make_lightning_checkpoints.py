"""Regenerate the Lightning 2.x checkpoints in this folder (needs pytorch-lightning; not run by the tests).

    python tests/data/make_lightning_checkpoints.py tests/data

lightning_plain.ckpt: kwargs hparams, Adam + StepLR, ModelCheckpoint + EarlyStopping state, BatchNorm buffers.
lightning_rich_hparams.ckpt: hparams holding a pathlib.Path, an argparse.Namespace and a torch.dtype;
SGD with momentum + ReduceLROnPlateau.
"""

import argparse
import pathlib
import sys
import tempfile

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset


class Steps:
    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)}


class Plain(Steps, pl.LightningModule):
    def __init__(self, lr=0.1, hidden=3, name="tiny"):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.BatchNorm1d(hidden), torch.nn.Linear(hidden, 1))


class RichHparams(Steps, pl.LightningModule):
    def __init__(self, lr=0.1, data_dir=pathlib.Path("/data/tiny"), opt=argparse.Namespace(beta=0.9), dtype=torch.float32):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(4, 1)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss"}}


def make(model, out: pathlib.Path, epochs: int) -> None:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(16, 4), torch.randn(16, 1))
    with tempfile.TemporaryDirectory() as tmp:
        callbacks = [ModelCheckpoint(dirpath=tmp, monitor="val_loss", save_top_k=2, save_last=True), EarlyStopping("val_loss", patience=3)]
        trainer = pl.Trainer(max_epochs=epochs, callbacks=callbacks, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp)
        trainer.fit(model, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
        trainer.save_checkpoint(out)


if __name__ == "__main__":
    folder = pathlib.Path(sys.argv[1])
    make(Plain(), folder / "lightning_plain.ckpt", epochs=2)
    make(RichHparams(), folder / "lightning_rich_hparams.ckpt", epochs=1)
