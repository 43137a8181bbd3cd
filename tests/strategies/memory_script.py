"""Run by test_sharded_memory.py in each of 2 processes: the program a user writes for a model built in
``configure_model`` (validation with the sanity check, the model summary, checkpoints), under several
strategies in turn. Each rank writes ``<out>/<strategy>-rank<N>.json``: the bytes of parameters and optimizer
state it holds after fit, and the largest tensor storage any operation created during fit (setup, sanity
check, training, validation, checkpoint saving), with where it came from.

Usage: python memory_script.py OUT_DIR --strategies ddp,fsdp,...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.data import DataLoader, TensorDataset

import fulmen as pl

HIDDEN, BLOCKS, SAMPLES, BATCH = 256, 4, 64, 8


def params_numel() -> int:
    return BLOCKS * (2 * HIDDEN * 2 * HIDDEN + 3 * HIDDEN)


class Wide(pl.LightningModule):
    def configure_model(self) -> None:
        if hasattr(self, "net"):
            return
        layers: list[nn.Module] = []
        for _ in range(BLOCKS):
            layers += [nn.Linear(HIDDEN, 2 * HIDDEN), nn.GELU(), nn.Linear(2 * HIDDEN, HIDDEN)]
        self.net = nn.Sequential(*layers)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class LargestAllocation(TorchDispatchMode):
    """Remembers the largest storage an operation's output owns (views of an existing buffer count once)."""

    def __init__(self) -> None:
        super().__init__()
        self.nbytes = 0
        self.where = ""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if type(t) is not torch.Tensor or t.device.type == "meta":  # a DTensor's local shard comes through too
                continue
            nbytes = t.untyped_storage().nbytes()
            if nbytes > self.nbytes:
                self.nbytes = nbytes
                frames = [f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in traceback.extract_stack()[:-1]
                          if "_python_dispatch" not in f.filename and "eval_frame" not in f.filename]
                self.where = f"{func} <- " + " <- ".join(reversed(frames[-6:]))
        return out


class Watch(pl.Callback):
    """Watches every operation from the start of set-up (before configure_model) to the end of fit."""

    def setup(self, trainer, pl_module, stage):
        self.mode = LargestAllocation()
        self.mode.__enter__()

    def teardown(self, trainer, pl_module, stage):
        self.mode.__exit__(None, None, None)


def _storages(tensors) -> dict[int, int]:
    found: dict[int, int] = {}
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        local = getattr(t, "_local_tensor", None)  # a DTensor's own shard
        t = local if local is not None else t
        if t.device.type == "meta" or t.numel() == 0:
            continue
        found[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return found


def held_bytes(trainer: pl.Trainer, module: nn.Module) -> int:
    """Parameters (this rank's partition under ZeRO-3) and optimizer state, each storage once."""
    tensors = []
    for p in module.parameters():
        tensors += [p, getattr(p, "ds_tensor", None)]
    opt = trainer.optimizers[0]
    inner = getattr(opt, "optimizer", opt)  # DeepSpeed's ZeRO optimizer wraps the torch one
    for state in inner.state.values():
        tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    tensors += [p for group in inner.param_groups for p in group["params"]]
    for name in ("bit16_groups_flat", "single_partition_of_fp32_groups", "fp16_partitioned_groups_flat",
                 "fp32_partitioned_groups_flat"):  # DeepSpeed's flat copies of the parameters
        tensors += list(getattr(opt, name, None) or [])
    return sum(_storages(tensors).values())


def make_strategy(name: str):
    if name == "fsdp_root":  # the whole model one unit
        return pl.strategies.FSDPStrategy(auto_wrap_policy=set())
    if name == "fsdp_grad_op":  # every unit keeps its parameters gathered from forward to backward
        return pl.strategies.FSDPStrategy(sharding_strategy="SHARD_GRAD_OP")
    return name


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--strategies", default="ddp,fsdp")
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(SAMPLES, HIDDEN, generator=g), torch.randn(SAMPLES, HIDDEN, generator=g))
    for name in args.strategies.split(","):
        pl.seed_everything(0)
        watch = Watch()
        root = os.path.join(args.out, name)
        trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=make_strategy(name), max_steps=4,
                             default_root_dir=root, val_check_interval=2, limit_val_batches=2,
                             callbacks=[watch, pl.callbacks.ModelCheckpoint(dirpath=os.path.join(root, "ckpt"),
                                                                            every_n_train_steps=2)],
                             enable_progress_bar=False)
        model = Wide()
        trainer.fit(model, DataLoader(data, batch_size=BATCH, shuffle=True), DataLoader(data, batch_size=BATCH))
        report = {"held": held_bytes(trainer, model), "largest": watch.mode.nbytes, "where": watch.mode.where,
                  "params_bytes": 4 * params_numel(), "global_step": trainer.global_step,
                  "checkpoints": sorted(os.listdir(os.path.join(root, "ckpt"))),
                  "val_loss": float(trainer.callback_metrics["val_loss"])}
        with open(os.path.join(args.out, f"{name}-rank{trainer.global_rank}.json"), "w") as f:
            json.dump(report, f)


if __name__ == "__main__":
    main()
    sys.stdout.flush()
