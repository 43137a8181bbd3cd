"""The issue-18 standard program, runnable on fulmen or on PyTorch Lightning, to compare their numbers.

    python tests/data/parity_program.py OUT --lib fulmen|lightning [--devices 2] [--workers 2] [--seed-workers]

``--devices 2`` runs ``strategy="ddp"`` on 2 CPU processes (gloo). Every rank writes ``OUT/rank<N>.json``:
the sample indices, augmentation noise and dropout masks each training batch saw, the local training loss per
batch, the logged metrics after every optimizer step and every validation, the final weights (as lists of
floats, so the file compares bitwise and needs no torch to read), and the results of validate/test/predict.

``tests/data/make_parity_lightning.py`` runs it on Lightning and keeps the numbers in
``tests/data/parity_lightning.json``; ``tests/trainer/test_lightning_parity.py`` runs it on fulmen and compares.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import struct
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--lib", choices=("fulmen", "lightning"), default="fulmen")
parser.add_argument("--devices", type=int, default=1)
parser.add_argument("--strategy", default="ddp", help="with --devices 2: ddp or ddp_spawn (spawn: only the main "
                    "process reports, without what the batches were)")
parser.add_argument("--workers", type=int, default=0)
parser.add_argument("--seed-workers", action="store_true", help="seed_everything(7, workers=True)")
parser.add_argument("--epochs", type=int, default=2)
args = parser.parse_args()

if args.lib == "fulmen":
    import fulmen as pl
    from fulmen.callbacks import Callback, EarlyStopping, ModelCheckpoint
else:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint

FEATURES, SAMPLES, VAL_SAMPLES, BATCH = 8, 66, 25, 4  # odd shares: DistributedSampler pads


def exact(t: torch.Tensor) -> list[str]:
    """Float32 values as hex of their bits: equal strings mean bitwise-equal numbers."""
    return [struct.pack(">f", v).hex() for v in t.detach().float().flatten().tolist()]


def dropout_mask(before: torch.Tensor, after: torch.Tensor) -> list[str]:
    """Per sample, which units dropout kept (1) or dropped (0); '-' where the input was 0 and nothing shows."""
    return ["".join("-" if b == 0 else "1" if a != 0 else "0" for b, a in zip(row_b.tolist(), row_a.tolist()))
            for row_b, row_a in zip(before, after)]


class Noisy(Dataset):
    """Fixed inputs and targets; training adds fresh noise on every read (the random augmentation)."""

    def __init__(self, n: int, seed: int, augment: bool) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, FEATURES, generator=g)
        self.y = self.x.sum(1, keepdim=True).sin() + 0.1 * torch.randn(n, 1, generator=g)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        noise = 0.05 * torch.randn(FEATURES) if self.augment else torch.zeros(FEATURES)
        return self.x[i] + noise, self.y[i], torch.tensor(i), noise


class Model(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Dropout(0.25), nn.Linear(16, 1))
        self.seen: list[dict] = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y, idx, noise = batch
        hidden = self.net[1](self.net[0](x))
        dropped = self.net[2](hidden)
        loss = nn.functional.mse_loss(self.net[3](dropped), y)
        self.seen.append({"epoch": self.current_epoch, "batch": batch_idx, "idx": idx.tolist(),
                          "noise": exact(noise.sum(1)), "mask": dropout_mask(hidden, dropped),
                          "loss": exact(loss)})
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y, _, _ = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y), sync_dist=True)

    def test_step(self, batch, batch_idx):
        x, y, _, _ = batch
        self.log("test_loss", nn.functional.mse_loss(self(x), y), sync_dist=True)

    def predict_step(self, batch, batch_idx):
        x, _, idx, _ = batch
        return idx, self(x)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=0.02)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.7)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def rng_fingerprint() -> str:
    """A digest of torch's, Python's and NumPy's global generator states (reading them draws nothing)."""
    h = hashlib.sha1(bytes(torch.random.get_rng_state().tolist()))
    h.update(repr(random.getstate()).encode())
    try:
        import numpy as np
    except ImportError:
        return h.hexdigest()[:12]
    h.update(repr(np.random.get_state()[1].tolist()).encode())
    return h.hexdigest()[:12]


class Record(Callback):
    """The logged metrics after every optimizer step (on the step's last batch) and every validation, and the
    random generators' states where each stage starts."""

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.vals: list[dict] = []
        self.rng: list[list[str]] = []

    def on_fit_start(self, trainer, pl_module):
        self.rng.append(["fit", rng_fingerprint()])

    def on_validation_start(self, trainer, pl_module):
        if not trainer.training and not trainer.sanity_checking and trainer.state.fn == "validate":
            self.rng.append(["validate", rng_fingerprint()])

    def on_test_start(self, trainer, pl_module):
        self.rng.append(["test", rng_fingerprint()])

    def on_predict_start(self, trainer, pl_module):
        self.rng.append(["predict", rng_fingerprint()])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            self.steps.append({"step": trainer.global_step, **metrics(trainer.logged_metrics)})

    def on_validation_end(self, trainer, pl_module):
        self.vals.append({"step": trainer.global_step, "sanity": trainer.sanity_checking,
                          **metrics(trainer.callback_metrics)})


def metrics(d: dict) -> dict:
    return {k: exact(torch.as_tensor(v))[0] for k, v in sorted(d.items())}


def main() -> None:
    pl.seed_everything(7, workers=args.seed_workers)
    seeded = rng_fingerprint()
    model = Model()
    train = DataLoader(Noisy(SAMPLES, 0, augment=True), batch_size=BATCH, shuffle=True, num_workers=args.workers,
                       persistent_workers=args.workers > 0)
    val = DataLoader(Noisy(VAL_SAMPLES, 1, augment=False), batch_size=BATCH, num_workers=args.workers)
    record = Record()
    ckpt_dir = os.path.join(args.out, "ckpt")
    trainer = pl.Trainer(
        accelerator="cpu", devices=args.devices, strategy=args.strategy if args.devices > 1 else "auto",
        max_epochs=args.epochs, accumulate_grad_batches=2, gradient_clip_val=1.0, val_check_interval=0.5,
        callbacks=[EarlyStopping(monitor="val_loss"), record,
                   ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=3, save_top_k=-1, save_last=True)],
        default_root_dir=args.out, logger=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model, train, val)
    fit_val_loss = float(trainer.callback_metrics["val_loss"])
    validated = trainer.validate(model, val, verbose=False)
    tested = trainer.test(model, val, verbose=False)
    predicted = trainer.predict(model, val)
    rank = trainer.global_rank
    out = {
        "lib": args.lib, "world": trainer.world_size, "rank": rank, "workers": args.workers,
        "seed_workers": args.seed_workers, "global_step": trainer.global_step,
        "seen": model.seen, "steps": record.steps, "vals": record.vals,
        "rng": [[stage, "as seeded" if fp == seeded else fp] for stage, fp in record.rng],
        "weights": {k: exact(v) for k, v in model.state_dict().items()},
        "validate": {k: exact(torch.as_tensor(v))[0] for k, v in validated[0].items()},
        "test": {k: exact(torch.as_tensor(v))[0] for k, v in tested[0].items()},
        "predict": [[i.tolist(), exact(p)] for i, p in predicted or []],  # None: Lightning under ddp_spawn
        "val_loss": fit_val_loss,
        "checkpoints": sorted(os.listdir(ckpt_dir)) if os.path.isdir(ckpt_dir) else [],
    }
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump(out, f, indent=0)


if __name__ == "__main__":
    main()
