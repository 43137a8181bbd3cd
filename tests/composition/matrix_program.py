"""The program a user writes first, run by test_matrix.py under one strategy ("row") per launch.

``python matrix_program.py OUT ROW[,ROW...] fit`` runs, in a fresh launch (2 processes, or 1 for the row
``single``), for each row (strategy) in turn:

- ``full``: the standard program, every feature on: ``seed_everything(7)``, a shuffled training loader with 2
  workers and a random augmentation, dropout, AdamW with a per-step StepLR, ``accumulate_grad_batches=2``,
  ``gradient_clip_val=1.0``, validation with the sanity check and ``val_check_interval=0.5``,
  ``EarlyStopping(monitor="val_loss")``, ``ModelCheckpoint(every_n_train_steps=3, save_top_k=-1,
  save_last=True)``; then ``validate``, ``test`` and ``predict`` on the same trainer. A callback copies the
  checkpoint folder as it is after step 7, holding the step-6 checkpoint (mid-epoch 2), as if the run had
  died there.
- ``det``: the same program with its random parts made deterministic (dropout 0, no augmentation, no
  shuffling; workers, sanity check, clipping, accumulation, scheduler stay), so that its weights and logged
  values can be compared across strategies; it adds a torchmetrics metric logged per epoch, two validation
  loaders, an EarlyStopping that stops the run, and ``trainer.test(ckpt_path="best")``.
- ``manual``: manual optimization with two optimizers (deterministic).
- ``bf16``: the deterministic program (one validation loader) under ``precision="bf16-mixed"``.

``python matrix_program.py OUT ROW[,ROW...] resume`` (a new launch) resumes ``full`` from its step-3
checkpoint (mid-epoch 1) and, with ``ckpt_path="last"``, from the copied folder; both must end where ``full`` ended.

Each rank writes ``OUT/<row>/<phase>-rank<N>.json``: weights (whole, gathered where sharded), logged values, eval
results, or the error a combination that cannot work raised (type and message).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import traceback

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import fulmen as pl

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "strategies"))
from sharded_script import full_weights as gathered  # noqa: E402  every parameter whole, whatever the strategy sharded

FEATURES, HIDDEN, TRAIN, VAL = 8, 16, 64, 32
BATCH = 4  # per process; the one-device row uses 2 * BATCH, the same global batch
EPOCHS = 2  # 8 batches per epoch on every row: 4 optimizer steps, validation after batches 4 and 8


def _tensors(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=g)
    return x, x.sum(1, keepdim=True) * 0.3 + 0.1 * torch.randn(n, 1, generator=g)


class Augmented(Dataset):
    """``x + noise * randn(8)`` drawn in ``__getitem__``: in a loader worker, from that worker's random stream."""

    def __init__(self, n: int, seed: int, noise: float) -> None:
        self.x, self.y = _tensors(n, seed)
        self.noise = noise

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        x = self.x[i] + self.noise * torch.randn(FEATURES) if self.noise else self.x[i]
        return x, self.y[i]


class Program(pl.LightningModule):
    def __init__(self, dropout: float = 0.1, val_loaders: int = 1, metric: bool = False) -> None:
        super().__init__()
        torch.manual_seed(1)  # the same initial weights in every process, row and launch
        self.net = nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Dropout(dropout), nn.Linear(HIDDEN, 1))
        self.val_loaders = val_loaders
        if metric:
            from torchmetrics import MeanSquaredError

            self.val_mse = nn.ModuleList(MeanSquaredError() for _ in range(val_loaders))
        else:
            self.val_mse = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        pred = self(x)
        self.log("val_loss", nn.functional.mse_loss(pred, y), sync_dist=True)
        if self.val_mse is not None:
            metric = self.val_mse[dataloader_idx]
            metric.update(pred, y)
            self.log("val_mse", metric, on_epoch=True)  # the metric syncs and resets itself

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", nn.functional.mse_loss(self(x), y), sync_dist=True)

    def predict_step(self, batch, batch_idx):
        return self(batch[0])

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=0.02)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class TwoOptimizers(Program):
    """Manual optimization: each optimizer steps its own half of the network, every other batch."""

    def __init__(self) -> None:
        super().__init__(dropout=0.0)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt_a, opt_b = self.optimizers()
        loss = nn.functional.mse_loss(self(x), y)
        self.manual_backward(loss)
        if (batch_idx + 1) % 2 == 0:  # accumulate over 2 batches, as the automatic program does
            for opt in (opt_a, opt_b):
                self.clip_gradients(opt, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
                opt.step()
                opt.zero_grad()
            self.lr_schedulers().step()
        self.log("train_loss", loss, sync_dist=True)

    def configure_optimizers(self):
        opt_a = torch.optim.AdamW(self.net[0].parameters(), lr=0.02)
        opt_b = torch.optim.SGD(self.net[3].parameters(), lr=0.05)
        return [opt_a, opt_b], [torch.optim.lr_scheduler.StepLR(opt_a, step_size=3, gamma=0.5)]


class CopyAt(pl.Callback):
    """After the checkpoint of ``step`` is on disk, copy the checkpoint folder: what a run killed there leaves."""

    def __init__(self, step: int, src: str, dst: str) -> None:
        self.step, self.src, self.dst = step, src, dst

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != self.step or os.path.exists(self.dst):
            return
        trainer.strategy.barrier("copy")
        if trainer.is_global_zero:
            shutil.copytree(self.src, self.dst)
        trainer.strategy.barrier("copied")


def make_strategy(row: str):
    """The row's strategy: a name Lightning users write, or the strategy object for the FSDP settings."""
    if row.startswith("fsdp"):
        _, sharding, sd = row.split(":")  # fsdp:FULL_SHARD:sharded
        return pl.strategies.FSDPStrategy(sharding_strategy=sharding, state_dict_type=sd,
                                          auto_wrap_policy={nn.Linear})
    return {"single": "auto"}.get(row, row)


def trainer(row: str, out: str, **kwargs) -> pl.Trainer:
    kw = dict(accelerator="cpu", devices=1 if row == "single" else 2, strategy=make_strategy(row),
              max_epochs=EPOCHS, accumulate_grad_batches=2, gradient_clip_val=1.0, val_check_interval=0.5,
              logger=pl.loggers.CSVLogger(out, name="logs"), enable_progress_bar=False, enable_model_summary=False,
              default_root_dir=out)
    kw.update(kwargs)
    return pl.Trainer(**kw)


def loaders(row: str, random: bool, val_loaders: int = 1):
    batch = 2 * BATCH if row == "single" else BATCH
    train = DataLoader(Augmented(TRAIN, 0, 0.05 if random else 0.0), batch_size=batch, shuffle=random,
                       num_workers=2)
    vals = [DataLoader(Augmented(VAL, 1 + i, 0.0), batch_size=batch) for i in range(val_loaders)]
    return train, vals[0] if val_loaders == 1 else vals


def floats(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def _attempt(report: dict, key: str, fn) -> None:
    """Run one part and record what it returned or raised: a combination that cannot work must raise one of
    fulmen's errors early, which the test checks; any other error fails the cell, not the whole launch."""
    from fulmen.errors import FulmenError

    try:
        report[key] = fn()
    except Exception as err:  # noqa: BLE001  (recorded and failed on by the test)
        report[key] = {"error": type(err).__name__, "fulmen": isinstance(err, FulmenError), "message": str(err),
                       "traceback": traceback.format_exc()[-3000:]}


def run_full(row: str, out: str) -> dict:
    pl.seed_everything(7)
    model = Program()
    ckpt_dir = os.path.join(out, "full", "ckpt")
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=3, save_top_k=-1, save_last=True)
    tr = trainer(row, os.path.join(out, "full"), callbacks=[
        pl.callbacks.EarlyStopping(monitor="val_loss"), ckpt, CopyAt(7, ckpt_dir, os.path.join(out, "killed"))])
    train, val = loaders(row, random=True)
    tr.fit(model, train, val)
    report = {"weights": gathered(tr, model), "metrics": floats(tr.callback_metrics), "global_step": tr.global_step,
              "ckpt_files": sorted(os.listdir(ckpt_dir))}
    report["validate"] = tr.validate(model, val, verbose=False)
    report["test"] = tr.test(model, val, verbose=False)
    report["predict"] = [p.flatten().tolist() for p in tr.predict(model, DataLoader(Augmented(VAL, 1, 0.0),
                                                                                    batch_size=BATCH))]
    return report


def run_det(row: str, out: str) -> dict:
    pl.seed_everything(7)
    model = Program(dropout=0.0, val_loaders=2, metric=True)
    # min_delta larger than any improvement: no validation counts as better, so the run stops at the 2nd one
    stop = pl.callbacks.EarlyStopping(monitor="val_loss/dataloader_idx_0", patience=1, min_delta=10.0)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=os.path.join(out, "det", "ckpt"), monitor="val_loss/dataloader_idx_0",
                                        every_n_train_steps=3, save_top_k=1, save_last=True)
    tr = trainer(row, os.path.join(out, "det"), callbacks=[stop, ckpt])
    train, vals = loaders(row, random=False, val_loaders=2)
    tr.fit(model, train, vals)
    report = {"weights": gathered(tr, model), "metrics": floats(tr.callback_metrics), "global_step": tr.global_step,
              "stopped_epoch": stop.stopped_epoch, "best": os.path.basename(ckpt.best_model_path)}
    report["test_best"] = tr.test(model, vals[0], ckpt_path="best", verbose=False)
    return report


def run_manual(row: str, out: str) -> dict:
    model = TwoOptimizers()
    tr = trainer(row, os.path.join(out, "manual"), gradient_clip_val=None, accumulate_grad_batches=1,
                 callbacks=[pl.callbacks.ModelCheckpoint(dirpath=os.path.join(out, "manual", "ckpt"))])
    train, val = loaders(row, random=False)
    tr.fit(model, train, val)
    return {"weights": gathered(tr, model), "metrics": floats(tr.callback_metrics), "global_step": tr.global_step}


def run_bf16(row: str, out: str) -> dict:
    model = Program(dropout=0.0)
    tr = trainer(row, os.path.join(out, "bf16"), precision="bf16-mixed")
    train, val = loaders(row, random=False)
    tr.fit(model, train, val)
    return {"weights": gathered(tr, model), "metrics": floats(tr.callback_metrics), "global_step": tr.global_step}


def run_resume(row: str, out: str) -> dict:
    """The full program again in a new launch, resumed mid-epoch from its step-3 checkpoint and, with
    ``ckpt_path="last"``, from the folder a run killed after step 7 would have left."""
    report: dict = {}
    for key, folder in (("mid", os.path.join(out, "resumed")), ("last", os.path.join(out, "killed"))):
        pl.seed_everything(7)  # the user's script starts with it
        model = Program()
        ckpt = pl.callbacks.ModelCheckpoint(dirpath=folder, every_n_train_steps=3, save_top_k=-1, save_last=True)
        tr = trainer(row, folder, callbacks=[pl.callbacks.EarlyStopping(monitor="val_loss"), ckpt])
        train, val = loaders(row, random=True)

        def fit(tr=tr, model=model, train=train, val=val, key=key) -> dict:
            if key == "mid":
                ckpt_dir = os.path.join(out, "full", "ckpt")
                [path] = [os.path.join(ckpt_dir, f) for f in os.listdir(ckpt_dir) if "step=3" in f]
            else:
                path = "last"
            tr.fit(model, train, val, ckpt_path=path)
            return {"weights": gathered(tr, model), "metrics": floats(tr.callback_metrics),
                    "global_step": tr.global_step}

        _attempt(report, key, fit)
    return report


def main() -> None:
    out, rows, phase = sys.argv[1:4]
    parts = sys.argv[4].split(",") if len(sys.argv) > 4 else ["full", "det", "manual", "bf16"]
    torch.set_num_threads(1)
    for row in rows.split(","):  # several rows share a launch: starting processes costs seconds
        row_out = os.path.join(out, row.replace(":", "-"))
        report: dict = {}
        if phase == "fit":
            for part in parts:
                _attempt(report, part, lambda: globals()[f"run_{part}"](row, row_out))
        else:
            report = run_resume(row, row_out)
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        os.makedirs(row_out, exist_ok=True)
        with open(os.path.join(row_out, f"{phase}-rank{rank}.json"), "w") as f:
            json.dump(report, f)


if __name__ == "__main__":
    main()
    sys.stdout.flush()
