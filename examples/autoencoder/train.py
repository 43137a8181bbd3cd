"""An autoencoder on scikit-learn's 8x8 digits, with manual optimization and two optimizers.

    python examples/autoencoder/train.py               # about a minute on a laptop CPU
    python examples/autoencoder/train.py --fast-dev-run

One optimizer trains the encoder and decoder to reconstruct the digits through an 8-number code; the other
trains a linear probe that reads the digit's class from the (detached) code, a running measure of how much
the code has learned. Both steps are written out in ``training_step``: ``self.optimizers()``,
``self.toggle_optimizer``, ``self.manual_backward``. At the end a PNG grid of test digits (odd rows) and their
reconstructions (even rows) is written to the run directory.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

import fulmen as pl


class AutoEncoder(pl.LightningModule):
    """64 pixels -> ``code_size`` numbers -> 64 pixels, plus a linear probe on the code."""

    def __init__(self, code_size: int = 8, hidden: int = 64, lr: float = 3e-3, probe_lr: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.encoder = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, code_size))
        self.decoder = nn.Sequential(nn.Linear(code_size, hidden), nn.ReLU(), nn.Linear(hidden, 64), nn.Sigmoid())
        self.probe = nn.Linear(code_size, 10)

    def forward(self, x):
        """Reconstructions of the images ``x`` (batch, 64), pixels in [0, 1]."""
        return self.decoder(self.encoder(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        autoencoder_opt, probe_opt = self.optimizers()

        self.toggle_optimizer(autoencoder_opt)  # only encoder and decoder get gradients
        code = self.encoder(x)
        loss = F.mse_loss(self.decoder(code), x)
        self.manual_backward(loss)
        autoencoder_opt.step()
        autoencoder_opt.zero_grad()
        self.untoggle_optimizer(autoencoder_opt)

        self.toggle_optimizer(probe_opt)
        probe_loss = F.cross_entropy(self.probe(code.detach()), y)
        self.manual_backward(probe_loss)
        probe_opt.step()
        probe_opt.zero_grad()
        self.untoggle_optimizer(probe_opt)

        self.log_dict({"train_mse": loss, "train_probe_loss": probe_loss}, prog_bar=True)

    def _evaluate(self, batch, stage: str) -> None:
        x, y = batch
        code = self.encoder(x)
        self.log(f"{stage}_mse", F.mse_loss(self.decoder(code), x), prog_bar=True)
        self.log(f"{stage}_probe_acc", (self.probe(code).argmax(-1) == y).float().mean(), prog_bar=True)

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def configure_optimizers(self):
        autoencoder = torch.optim.Adam([*self.encoder.parameters(), *self.decoder.parameters()], lr=self.hparams.lr)
        probe = torch.optim.Adam(self.probe.parameters(), lr=self.hparams.probe_lr)
        return autoencoder, probe


class DigitsDataModule(pl.LightningDataModule):
    """The 1797 digits with pixels in [0, 1], split with a fixed seed into train / validation / test (70/15/15)."""

    def __init__(self, batch_size: int = 32, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        try:
            from sklearn.datasets import load_digits
        except ImportError as err:
            raise ImportError("This example reads scikit-learn's bundled digits: pip install scikit-learn") from err
        x, y = load_digits(return_X_y=True)
        data = TensorDataset(torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y))
        n_val = n_test = int(0.15 * len(data))
        split = torch.Generator().manual_seed(self.hparams.seed)
        self.train_set, self.val_set, self.test_set = random_split(data, [len(data) - n_val - n_test, n_val, n_test],
                                                                   generator=split)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=256)

    def test_dataloader(self):
        return DataLoader(self.test_set, batch_size=256)


def save_grid(images: torch.Tensor, path: str, columns: int = 16, scale: int = 4) -> None:
    """Write (n, 64) pixel rows in [0, 1] as a grid of 8x8 tiles (1-pixel gaps), each pixel ``scale`` wide."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("Saving the image grid needs matplotlib: pip install matplotlib") from err
    rows = -(-len(images) // columns)
    grid = torch.full((rows * 9 + 1, columns * 9 + 1), 0.25)  # light grey lines between tiles
    for i, image in enumerate(images.detach().cpu().clamp(0, 1).view(-1, 8, 8)):
        r, c = divmod(i, columns)
        grid[1 + r * 9 : r * 9 + 9, 1 + c * 9 : c * 9 + 9] = image
    grid = grid.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    plt.imsave(path, grid.numpy(), cmap="gray_r", vmin=0, vmax=1)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Train an autoencoder on scikit-learn's 8x8 digits.")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after this many training batches")
    parser.add_argument("--fast-dev-run", action="store_true", help="one batch of each stage, as a smoke test")
    parser.add_argument("--code-size", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root-dir", default="autoencoder_runs", help="where checkpoints, logs and the PNG go")
    args = parser.parse_args(argv)

    pl.seed_everything(args.seed, verbose=False)
    model = AutoEncoder(code_size=args.code_size)
    data = DigitsDataModule(batch_size=args.batch_size, seed=args.seed)
    trainer = pl.Trainer(max_epochs=args.epochs, max_steps=args.max_steps, fast_dev_run=args.fast_dev_run,
                         default_root_dir=args.root_dir, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    metrics = trainer.test(model, datamodule=data, verbose=False)[0]

    x = torch.stack([data.test_set[i][0] for i in range(64)])
    with torch.no_grad():
        rebuilt = model(x.to(model.device))
    # rows of 16: originals, their reconstructions, the next originals, ...
    pairs = torch.stack([x.view(4, 16, 64), rebuilt.cpu().view(4, 16, 64)], 1).reshape(-1, 64)
    os.makedirs(trainer.log_dir, exist_ok=True)
    png = os.path.join(trainer.log_dir, "reconstructions.png")
    save_grid(pairs, png)
    print(f"test mse: {metrics['test_mse']:.4f}, probe accuracy on the {args.code_size}-number code: "
          f"{metrics['test_probe_acc']:.1%}; reconstructions: {png}")
    return {"metrics": metrics, "png": png, "trainer": trainer, "model": model}


if __name__ == "__main__":
    main()
