"""Run by test_model_parallel.py as ``python model_parallel_script.py OUT``: a tensor-parallel MLP on 2 gloo
processes (the Trainer starts the second), trained, checkpointed, resumed; rank 0 writes ``OUT/report.json``.
The test runs the same module in one process for reference (there ``device_mesh`` is None: no parallelism)."""

from __future__ import annotations

import json
import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as pl

EPOCHS, BATCH = 2, 8


def data(seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(48, 8, generator=g), torch.randn(48, 4, generator=g))


def loaders() -> tuple[DataLoader, DataLoader]:
    return DataLoader(data(0), batch_size=BATCH), DataLoader(data(1), batch_size=BATCH)


class MLP(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)  # the same initial weights in every process and in the reference run
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

    def configure_model(self) -> None:
        from torch.distributed.tensor import DTensor
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        if self.device_mesh is None or isinstance(self.net[0].weight, DTensor):  # one process, or done already
            return
        parallelize_module(self.net, self.device_mesh["tensor_parallel"], {"0": ColwiseParallel(), "2": RowwiseParallel()})

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)


def full_weights(model: nn.Module) -> dict[str, list[float]]:
    """Every parameter whole (gathering a DTensor is collective: every rank calls this)."""
    out = {}
    for n, p in model.named_parameters():
        p = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[n] = p.detach().flatten().tolist()
    return out


def trainer(**kwargs) -> pl.Trainer:
    from fulmen.strategies import ModelParallelStrategy

    kw = dict(accelerator="cpu", devices=2, strategy=ModelParallelStrategy(), max_epochs=EPOCHS, logger=False,
              enable_progress_bar=False, enable_model_summary=False)
    kw.update(kwargs)
    return pl.Trainer(**kw)


def main(out: str) -> None:
    torch.set_num_threads(1)
    report: dict = {}
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=os.path.join(out, "ckpt"), save_top_k=-1, filename="{epoch}")
    tr = trainer(callbacks=[ckpt])
    model = MLP()
    tr.fit(model, *loaders())
    w0 = model.net[0].weight
    report["param_type"] = type(w0).__name__
    report["local_shape"] = list(w0.to_local().shape)
    report["mesh"] = list(tr.strategy.device_mesh.mesh_dim_names)
    report["weights"] = full_weights(model)
    report["val_loss"] = float(tr.callback_metrics["val_loss"])
    first = os.path.join(out, "ckpt", "epoch=0.ckpt")
    report["ckpt_is_dir"] = os.path.isdir(first)

    # resume from the end of epoch 0 in a fresh trainer and module: the same weights as the uninterrupted run
    resumed = MLP()
    tr2 = trainer(enable_checkpointing=False)
    tr2.fit(resumed, *loaders(), ckpt_path=first)
    report["resumed_weights"] = full_weights(resumed)
    report["resumed_step"] = tr2.global_step

    # one file gathered on rank 0, then read back and scattered over the slices by a validation
    tr2.strategy._save_distributed_checkpoint = False
    single = os.path.join(out, "single.ckpt")
    tr2.save_checkpoint(single)
    report["single_is_file"] = os.path.isfile(single)
    fresh = MLP()
    report["validate_single"] = trainer().validate(fresh, loaders()[1], ckpt_path=single, verbose=False)
    report["validate_dir"] = trainer().validate(MLP(), loaders()[1], ckpt_path=first, verbose=False)
    if tr.global_rank == 0:
        with open(os.path.join(out, "report.json"), "w") as f:
            json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1])
    sys.stdout.flush()
