"""The program a user writes first, with a loss spike injected: test_spike_detection.py runs it in-process (one
device), as a process it kills after a recovery, and under DDP (2 gloo processes, one launch), and
docs/assets/make_spike_recovery.py draws its loss curve.

The spike is in the data: the batches holding the samples in ``SPIKE_IDS`` multiply the loss by ``factor``
(1000, or NaN). The reference run leaves the skipped batches out of the dataset instead.

Usage: python spike_program.py OUT_DIR {ddp|kill}
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import fulmen as pl
from fulmen.callbacks import Callback, ModelCheckpoint, SpikeDetection

FEATURES, SAMPLES, BATCH, SPIKE_BATCH = 8, 768, 32, 6


class Regression(Dataset):
    """A noisy linear target; each sample gets a random augmentation (drawn in the loader's workers)."""

    def __init__(self, exclude: range = range(0)) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(SAMPLES, FEATURES, generator=g)
        self.y = self.x @ torch.randn(FEATURES, 1, generator=g) / FEATURES ** 0.5
        self.ids = [i for i in range(SAMPLES) if i not in exclude]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: int):
        i = self.ids[k]
        return self.x[i] + 0.01 * torch.randn(FEATURES), self.y[i], torch.tensor(i)


class Net(pl.LightningModule):
    def __init__(self, spike_ids: set[int] = frozenset(), factor: float = 1000.0) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Dropout(0.05), nn.Linear(16, 1))
        self.spike_ids, self.factor = set(spike_ids), factor
        self.trained_ids: list[list[int]] = []  # (epoch, sample ids) of every batch that ran training_step
        self.losses: list[tuple[int, float]] = []  # (batch of the fit, loss), for the picture

    def training_step(self, batch, batch_idx):
        x, y, ids = batch
        loss = ((self.net(x) - y) ** 2).mean()
        if self.spike_ids.intersection(ids.tolist()):
            loss = loss * self.factor
        self.trained_ids.append([self.current_epoch, *ids.tolist()])
        self.losses.append((self.current_epoch * 1000 + batch_idx, float(loss.detach())))
        self.log("train_loss", loss, on_step=True, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y, _ = batch
        self.log("val_loss", ((self.net(x) - y) ** 2).mean(), sync_dist=True)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=0.005)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.9)}


def spike_ids(world_size: int = 1, only_rank: int | None = None) -> set[int]:
    """The samples of batch ``SPIKE_BATCH`` (global batch under DDP; ``only_rank``: that process's share)."""
    first = SPIKE_BATCH * BATCH * world_size
    ids = range(first, first + BATCH * world_size)
    return {i for i in ids if only_rank is None or i % world_size == only_rank}


def excluded(first: int, last: int, world_size: int = 1) -> range:
    """The samples of batches ``first..last`` (global batches under DDP)."""
    return range(first * BATCH * world_size, (last + 1) * BATCH * world_size)


def fit(out: Path, data: Regression, model: Net, spike: SpikeDetection | None, extra: list = (), devices: int = 1,
        ckpt_path: str | None = None, max_epochs: int = 2, strategy: str = "ddp") -> pl.Trainer:
    callbacks = [ModelCheckpoint(dirpath=out / "ckpt", save_last=True), *extra] + ([spike] if spike else [])
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy=strategy if devices > 1 else "auto",
                         max_epochs=max_epochs, callbacks=callbacks, default_root_dir=out, log_every_n_steps=4,
                         limit_val_batches=2, enable_progress_bar=False, enable_model_summary=False)
    loader = DataLoader(data, batch_size=BATCH, num_workers=2)
    val = DataLoader(Regression(), batch_size=32, num_workers=2)
    trainer.fit(model, loader, val, ckpt_path=ckpt_path)
    return trainer


def eval_loss(model: Net) -> float:
    """The loss on the whole dataset, of a plain copy of the (possibly sharded) trained weights."""
    data, plain = Regression(), Net().eval()
    with torch.no_grad():
        for p, w in zip(plain.parameters(), _whole(model)):
            p.copy_(w)
        return float(((plain.net(data.x) - data.y) ** 2).mean())


def _whole(model: Net) -> list[torch.Tensor]:
    return [(p.full_tensor() if hasattr(p, "full_tensor") else p).detach() for p in model.parameters()]


def weights(model: Net) -> list[float]:
    return torch.cat([p.flatten() for p in _whole(model)]).tolist()


class KillAfter(Callback):
    """Saves a checkpoint at the end of a batch of the first epoch, then the process is killed (SIGKILL)."""

    def __init__(self, batch_idx: int, path: Path) -> None:
        self.batch_idx, self.path = batch_idx, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 0 and batch_idx == self.batch_idx:
            trainer.save_checkpoint(self.path)
            os.kill(os.getpid(), signal.SIGKILL)


def report(model: Net, trainer: pl.Trainer, spike: SpikeDetection | None) -> dict:
    return {"eval_loss": eval_loss(model), "weights": weights(model), "global_step": trainer.global_step,
            "skipped": spike.skipped_batches if spike else [], "recoveries": spike.recoveries if spike else 0,
            "trained_ids": model.trained_ids, "spike_recoveries": float(trainer.callback_metrics.get(
                "spike_recoveries", -1))}


def main() -> None:
    out, what = Path(sys.argv[1]), sys.argv[2]
    if what == "kill":  # recovery at batch 6 skips 5..10; killed after batch 7
        spike = SpikeDetection(recover=True, skip_after=4)
        fit(out, Regression(), Net(spike_ids()), spike, [KillAfter(7, out / "killed.ckpt")])
        return
    # ddp: the spike is in rank 1's share only; every rank must roll back together. The same under FSDP (CPU,
    # gloo) in the same processes.
    world, reports = 2, {}
    runs = {"reference": ("ddp", Regression(excluded(SPIKE_BATCH - 1, SPIKE_BATCH, world)), Net(), None),
            "x1000": ("ddp", Regression(), Net(spike_ids(world, only_rank=1), 1000.0), SpikeDetection(recover=True)),
            "nan": ("ddp", Regression(), Net(spike_ids(world, only_rank=1), float("nan")), SpikeDetection(recover=True)),
            "fsdp_x1000": ("fsdp", Regression(), Net(spike_ids(world, only_rank=1), 1000.0),
                           SpikeDetection(recover=True))}
    for name, (strategy, data, model, spike) in runs.items():
        trainer = fit(out / name, data, model, spike, devices=world, strategy=strategy)
        reports[name] = report(model, trainer, spike)
    # DeepSpeed (ZeRO on CPU): Lightning's behaviour stops every rank at the spike; recover=True is refused
    for name, spike in (("deepspeed_stop", SpikeDetection()), ("deepspeed_recover", SpikeDetection(recover=True))):
        try:
            fit(out / name, Regression(), Net(spike_ids(world, only_rank=1)), spike, devices=world, strategy="deepspeed")
            reports[name] = "no error"
        except Exception as err:  # noqa: BLE001 - the report says which
            reports[name] = f"{type(err).__name__}: {err}"
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(reports))


if __name__ == "__main__":
    main()
