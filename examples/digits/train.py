"""Classify scikit-learn's 8x8 handwritten digits: the introductory LitModel, grown into a full run.

    python examples/digits/train.py                 # an MLP with one hidden layer, Trainer defaults
    python examples/digits/train.py --model linear  # the introductory one-layer model
    python examples/digits/train.py --fast-dev-run  # one batch of each stage, as a smoke test

It trains with the Trainer's defaults (progress bar, a checkpoint and a log under ``lightning_logs/version_N``:
TensorBoard when tensorboard is installed, else CSV), validates every epoch, then tests the checkpoint it saved and prints the
test accuracy. The data ships with scikit-learn: nothing is downloaded.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

import fulmen as pl


class LitModel(pl.LightningModule):
    """The introductory model: one linear layer from the 64 pixels to the 10 classes, Adam at lr 0.02.

    It reaches about 94-97% test accuracy depending on the split; :class:`LitMLP` is the default for that reason.
    """

    def __init__(self, lr: float = 0.02) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.l1 = nn.Linear(8 * 8, 10)

    def forward(self, x):
        return self.l1(x.view(x.size(0), -1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def _evaluate(self, batch, stage: str) -> None:
        x, y = batch
        logits = self(x)
        self.log(f"{stage}_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log(f"{stage}_acc", (logits.argmax(-1) == y).float().mean(), prog_bar=True)

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def predict_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(x).argmax(-1)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class LitMLP(LitModel):
    """The same model with one hidden layer of ``hidden`` units: about 96-97% test accuracy after 10 epochs."""

    def __init__(self, lr: float = 0.005, hidden: int = 128) -> None:
        super().__init__(lr)
        self.save_hyperparameters()
        self.l1 = nn.Sequential(nn.Linear(8 * 8, hidden), nn.ReLU(), nn.Linear(hidden, 10))


class DigitsDataModule(pl.LightningDataModule):
    """The 1797 digits split, with a fixed seed, into train / validation / test (70/15/15), and standardised
    with the training split's pixel statistics."""

    def __init__(self, batch_size: int = 32, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        try:
            from sklearn.datasets import load_digits
        except ImportError as err:
            raise ImportError("This example reads scikit-learn's bundled digits: pip install scikit-learn") from err
        x, y = load_digits(return_X_y=True)
        x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
        n_val = n_test = int(0.15 * len(x))
        train, val, test = random_split(range(len(x)), [len(x) - n_val - n_test, n_val, n_test],
                                        generator=torch.Generator().manual_seed(self.hparams.seed))
        mean, std = x[train.indices].mean(0), x[train.indices].std(0) + 1.0  # +1: some border pixels are always 0
        x = (x - mean) / std
        self.train_set, self.val_set, self.test_set = (TensorDataset(x[part.indices], y[part.indices])
                                                       for part in (train, val, test))

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=256)

    def test_dataloader(self):
        return DataLoader(self.test_set, batch_size=256)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Train a classifier on scikit-learn's 8x8 digits.")
    parser.add_argument("--model", choices=["linear", "mlp"], default="mlp")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps")
    parser.add_argument("--fast-dev-run", action="store_true", help="one batch of each stage, as a smoke test")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root-dir", default=None, help="where lightning_logs/ goes (default: here)")
    args = parser.parse_args(argv)

    pl.seed_everything(args.seed)
    model = LitMLP() if args.model == "mlp" else LitModel()
    data = DigitsDataModule(batch_size=args.batch_size, seed=args.seed)
    trainer = pl.Trainer(max_epochs=args.epochs, max_steps=args.max_steps, fast_dev_run=args.fast_dev_run,
                         default_root_dir=args.root_dir)
    trainer.fit(model, datamodule=data)
    # Test the weights the checkpoint callback saved (in-memory weights under --fast-dev-run, which saves none).
    ckpt = "best" if trainer.checkpoint_callback is not None and not args.fast_dev_run else None
    accuracy = trainer.test(model, datamodule=data, ckpt_path=ckpt, verbose=False)[0]["test_acc"]
    print(f"test accuracy: {accuracy:.1%}")
    return {"test_acc": accuracy, "trainer": trainer, "model": model}


if __name__ == "__main__":
    main()
