"""A GAN that learns to draw scikit-learn's 8x8 digits, with manual optimization and two optimizers.

    python examples/gan/train.py                # a minute or two on a laptop CPU
    python examples/gan/train.py --fast-dev-run

``training_step`` alternates the two players by hand: ``self.optimizers()`` gives the generator's and the
discriminator's optimizers, ``self.toggle_optimizer`` freezes the other player's weights during each update,
and ``self.manual_backward`` runs the backward passes. After every epoch, ``samples.png`` in the run directory
shows the generator's drawings for a fixed set of noise vectors; ``nn_distance`` (logged each epoch) is the mean
distance from a generated digit to its nearest real one, which falls as the drawings become digit-like.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as pl


class GAN(pl.LightningModule):
    """Generator: noise (``latent_size``) -> 64 pixels in [0, 1]. Discriminator: 64 pixels -> real/fake logit."""

    def __init__(self, latent_size: int = 16, hidden: int = 128, lr: float = 2e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = nn.Sequential(
            nn.Linear(latent_size, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, 64), nn.Sigmoid(),
        )
        self.discriminator = nn.Sequential(
            nn.Linear(64, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1),
        )
        self.register_buffer("fixed_noise", torch.randn(64, latent_size, generator=torch.Generator().manual_seed(0)))
        self.register_buffer("reference", torch.empty(0, 64), persistent=False)  # real digits for nn_distance

    def forward(self, noise):
        """Images (batch, 64) drawn from ``noise`` (batch, latent_size)."""
        return self.generator(noise)

    def training_step(self, batch, batch_idx):
        real = batch[0]
        gen_opt, disc_opt = self.optimizers()
        noise = torch.randn(len(real), self.hparams.latent_size, device=self.device)
        ones, zeros = torch.ones(len(real), 1, device=self.device), torch.zeros(len(real), 1, device=self.device)

        # The discriminator learns to tell real digits (1) from the generator's (0).
        self.toggle_optimizer(disc_opt)
        fake = self.generator(noise).detach()
        disc_loss = (F.binary_cross_entropy_with_logits(self.discriminator(real), ones * 0.9)  # one-sided smoothing
                     + F.binary_cross_entropy_with_logits(self.discriminator(fake), zeros)) / 2
        self.manual_backward(disc_loss)
        disc_opt.step()
        disc_opt.zero_grad()
        self.untoggle_optimizer(disc_opt)

        # The generator learns to make the discriminator answer "real".
        self.toggle_optimizer(gen_opt)
        gen_loss = F.binary_cross_entropy_with_logits(self.discriminator(self.generator(noise)), ones)
        self.manual_backward(gen_loss)
        gen_opt.step()
        gen_opt.zero_grad()
        self.untoggle_optimizer(gen_opt)

        self.log_dict({"g_loss": gen_loss, "d_loss": disc_loss}, prog_bar=True)

    @torch.no_grad()
    def nn_distance(self, images: torch.Tensor) -> torch.Tensor:
        """Mean Euclidean distance from each image to its nearest real digit in ``self.reference``."""
        return torch.cdist(images, self.reference).min(1).values.mean()

    def on_train_epoch_end(self) -> None:
        samples = self(self.fixed_noise)
        self.log("nn_distance", self.nn_distance(samples))
        save_grid(samples, os.path.join(self.trainer.log_dir, "samples.png"))

    def configure_optimizers(self):
        betas = (0.5, 0.999)  # less momentum than Adam's default: the target moves as the other player learns
        gen = torch.optim.Adam(self.generator.parameters(), lr=self.hparams.lr, betas=betas)
        disc = torch.optim.Adam(self.discriminator.parameters(), lr=self.hparams.lr, betas=betas)
        return gen, disc


class DigitsDataModule(pl.LightningDataModule):
    """All 1797 digits, pixels in [0, 1] (a GAN has no use for a test split)."""

    def __init__(self, batch_size: int = 64) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        try:
            from sklearn.datasets import load_digits
        except ImportError as err:
            raise ImportError("This example reads scikit-learn's bundled digits: pip install scikit-learn") from err
        x, _ = load_digits(return_X_y=True)
        self.images = torch.tensor(x / 16.0, dtype=torch.float32)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.images), batch_size=self.hparams.batch_size, shuffle=True, drop_last=True)


def save_grid(images: torch.Tensor, path: str, columns: int = 16, scale: int = 4) -> None:
    """Write (n, 64) pixel rows in [0, 1] as a grid of 8x8 tiles (grey lines between), each pixel ``scale`` wide."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("Saving the image grid needs matplotlib: pip install matplotlib") from err
    rows = -(-len(images) // columns)
    grid = torch.full((rows * 9 + 1, columns * 9 + 1), 0.25)
    for i, image in enumerate(images.detach().cpu().clamp(0, 1).view(-1, 8, 8)):
        r, c = divmod(i, columns)
        grid[1 + r * 9 : r * 9 + 9, 1 + c * 9 : c * 9 + 9] = image
    grid = grid.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    plt.imsave(path, grid.numpy(), cmap="gray_r", vmin=0, vmax=1)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Train a GAN on scikit-learn's 8x8 digits.")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after this many training batches")
    parser.add_argument("--fast-dev-run", action="store_true", help="one batch, as a smoke test")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root-dir", default="gan_runs", help="where checkpoints, logs and samples.png go")
    args = parser.parse_args(argv)

    pl.seed_everything(args.seed, verbose=False)
    model = GAN()
    data = DigitsDataModule(batch_size=args.batch_size)
    data.setup("fit")
    model.reference = data.images
    untrained = float(model.nn_distance(model(model.fixed_noise).detach()))
    trainer = pl.Trainer(max_epochs=args.epochs, max_steps=args.max_steps, fast_dev_run=args.fast_dev_run,
                         default_root_dir=args.root_dir, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    trained = float(model.nn_distance(model(model.fixed_noise).detach()))
    png = os.path.join(trainer.log_dir, "samples.png")
    print(f"distance from a sample to the nearest real digit: {untrained:.2f} untrained, {trained:.2f} now; "
          f"samples: {png}")
    return {"nn_distance_untrained": untrained, "nn_distance": trained, "png": png, "trainer": trainer, "model": model}


if __name__ == "__main__":
    main()
