"""One script, run under every launcher by test_ddp.py: each rank checks what it can see and writes its
findings to ``<out>/rank<N>.json`` (starting a process costs seconds, so one run checks many things).

Usage: python ddp_script.py OUT_DIR [--strategy S] [--devices N] [--num-nodes N] [--raise-on-rank R]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import fulmen as pl
from fulmen.utilities import rank_zero_only

FEATURES, SAMPLES, BATCH, STEPS = 4, 64, 4, 6


def data(seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(SAMPLES, FEATURES, generator=g), torch.randn(SAMPLES, 1, generator=g))


class IndexDataset(Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([float(i)])


class Net(pl.LightningModule):
    def __init__(self, dropout: float = 0.0, raise_on_rank: int = -1) -> None:
        super().__init__()
        torch.manual_seed(1)  # the same initial weights in every process and in the reference run
        self.layer = nn.Linear(FEATURES, 1)
        self.drop = nn.Dropout(dropout)
        self.raise_on_rank = raise_on_rank

    def on_train_start(self) -> None:
        self.wrapper_in_fit = type(self.trainer.strategy.model).__name__

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.drop(x))

    def training_step(self, batch, batch_idx):
        if self.global_step == 2 and self.global_rank == self.raise_on_rank:
            raise ValueError(f"boom on rank {self.global_rank}")
        x, y = batch
        loss = ((self(x) - y) ** 2).mean()
        self.log("train_loss", loss, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        err = (self(x) - y) ** 2
        self.log("val_loss", err.mean(), sync_dist=True)
        self.log("val_sum", err.sum(), sync_dist=True, reduce_fx="sum")
        self.log("val_max", err.max(), sync_dist=True, reduce_fx="max")
        self.log("rank_seen", float(self.global_rank), sync_dist=True, reduce_fx="max")
        self.log("val_local", err.mean())  # not synced: each rank's own value, and a warning

    def predict_step(self, batch, batch_idx):
        return batch * 10

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class GAN(pl.LightningModule):
    """Manual optimization with two optimizers and two backwards per step."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.automatic_optimization = False
        self.gen = nn.Linear(FEATURES, FEATURES)
        self.disc = nn.Linear(FEATURES, 1)

    def training_step(self, batch, batch_idx):
        x, _ = batch
        opt_g, opt_d = self.optimizers()
        fake = self.gen(x)
        d_loss = self.disc(fake.detach()).mean() - self.disc(x).mean()
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        g_loss = -self.disc(self.gen(x)).mean()
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()

    def configure_optimizers(self):
        return torch.optim.SGD(self.gen.parameters(), lr=0.1), torch.optim.SGD(self.disc.parameters(), lr=0.1)


class ManualAccumulation(Net):
    """Manual optimization accumulating two batches: the gradients sync only on the batch that steps."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        stepping = batch_idx % 2 == 1
        x, y = batch
        with opt.toggle_model(sync_grad=stepping):
            self.manual_backward(((self(x) - y) ** 2).mean() / 2)
        if stepping:
            opt.step()
            opt.zero_grad()


class Slow(Net):
    def training_step(self, batch, batch_idx):
        time.sleep(0.05)
        return super().training_step(batch, batch_idx)


class Started(pl.Callback):
    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_start(self, trainer, pl_module):
        with open(os.path.join(self.out, f"started{trainer.global_rank}"), "w") as f:
            f.write(str(os.getpid()))


def counting_hook(state, bucket):
    """A DDP communication hook (DDPStrategy(ddp_comm_hook=...)): counts all-reduces, then does the default one."""
    state["calls"] += 1
    import torch.distributed as dist

    tensor = bucket.buffer().div_(dist.get_world_size())
    return dist.all_reduce(tensor, async_op=True).get_future().then(lambda f: f.value()[0])


def weights(model) -> list:
    return [p.detach().float().flatten().tolist() for p in model.parameters()]


class SaveAt(pl.Callback):
    """Writes a checkpoint after the given global step (mid-epoch)."""

    def __init__(self, step: int, path: str) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


class ProcessFlags(pl.Callback):
    """Where fit starts in a spawned process: what it inherited from the caller (determinism flag, seed)."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_fit_start(self, trainer, pl_module):
        with open(os.path.join(self.out, f"flags{trainer.global_rank}.json"), "w") as f:
            json.dump({"deterministic": torch.are_deterministic_algorithms_enabled(),
                       "initial_seed": torch.initial_seed()}, f)


def trainer(args, **kwargs) -> pl.Trainer:
    kw = dict(accelerator="cpu", devices=args.devices, num_nodes=args.num_nodes, strategy=args.strategy,
              logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    kw.update(kwargs)
    return pl.Trainer(**kw)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--strategy", default="ddp")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--raise-on-rank", type=int, default=-1)
    parser.add_argument("--quick", action="store_true", help="the first fit only")
    parser.add_argument("--hang", action="store_true", help="train slowly for ever, after writing started<rank>")
    args = parser.parse_args()
    torch.set_num_threads(1)
    env_rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    report: dict = {"rank_zero_only_at_start": rank_zero_only.rank, "env_rank": env_rank, "pid": os.getpid()}
    if args.hang:
        trainer(args, max_steps=10**6, callbacks=[Started(args.out)]).fit(Slow(), DataLoader(data(), batch_size=BATCH))
        return

    # 1. DDP, batch BATCH per process, STEPS steps; with logging to a CSV logger and checkpoints
    model = Net(raise_on_rank=args.raise_on_rank)
    spawned = args.strategy.startswith(("ddp_spawn", "ddp_fork"))
    tr = trainer(args, max_steps=STEPS, limit_val_batches=1.0, num_sanity_val_steps=0,
                 logger=pl.loggers.CSVLogger(args.out, name="logs"),
                 callbacks=[pl.callbacks.ModelCheckpoint(dirpath=os.path.join(args.out, "ckpt"), monitor="val_loss"),
                            *([ProcessFlags(args.out)] if spawned else [])],
                 enable_checkpointing=True, val_check_interval=STEPS, **({"deterministic": True} if spawned else {}))
    tr.fit(model, DataLoader(data(), batch_size=BATCH), DataLoader(data(1), batch_size=BATCH))
    report["weights"] = [p.detach().flatten().tolist() for p in model.parameters()]
    report["topology"] = [tr.world_size, tr.global_rank, tr.local_rank, tr.node_rank, tr.num_devices, tr.is_global_zero,
                          str(tr.strategy.root_device)]
    report["rank_zero_only"] = rank_zero_only.rank
    report["global_step"] = tr.global_step
    report["callback_metrics"] = {k: float(v) for k, v in tr.callback_metrics.items()}
    report["strategy"] = type(tr.strategy).__name__
    if args.strategy.startswith("ddp_spawn") or args.strategy.startswith("ddp_fork"):
        report["spawn_best_path"] = tr.checkpoint_callback.best_model_path
        with open(os.path.join(args.out, "rank0.json"), "w") as f:
            json.dump(report, f)
        return
    report["wrapper"] = model.wrapper_in_fit
    report["lightning_module_is_model"] = tr.lightning_module is model
    best = tr.checkpoint_callback.best_model_path
    report["best_path"] = best
    report["ckpt_keys"] = sorted(torch.load(best, weights_only=False)["state_dict"]) if best else []
    if args.quick:
        with open(os.path.join(args.out, f"rank{tr.global_rank}.json"), "w") as f:
            json.dump(report, f)
        return

    # 2. collectives on the strategy and the module
    s = tr.strategy
    rank = tr.global_rank
    # votes started now and read later, with other collectives in between
    votes = [s.start_boolean_decision(rank == 0, all=False), s.start_boolean_decision(rank == 0, all=True),
             s.start_boolean_decision(True, all=True)]
    report["all_gather"] = model.all_gather(torch.tensor([rank, rank * 10])).tolist()
    report["all_gather_dict"] = model.all_gather({"a": torch.tensor(float(rank))})["a"].tolist()
    report["reduce_mean"] = float(s.reduce(torch.tensor(float(rank + 1))))
    report["reduce_sum"] = float(s.reduce(torch.tensor(float(rank + 1)), reduce_op="sum"))
    report["reduce_max"] = float(s.reduce(torch.tensor(float(rank + 1)), reduce_op="max"))
    report["broadcast"] = s.broadcast({"from": rank}, src=1)
    report["decision_all"] = s.reduce_boolean_decision(rank == 0, all=True)
    report["decision_any"] = s.reduce_boolean_decision(rank == 0, all=False)
    report["votes"] = [vote() for vote in votes]
    s.barrier("check")

    # 3. predictions come back in sample order, on every rank
    preds = trainer(args).predict(Net(), DataLoader(IndexDataset(), batch_size=3))
    report["predictions"] = [p.flatten().tolist() for p in preds]

    # 4. exact mid-epoch resume: dropout and shuffling make every rank draw its own random numbers
    ckpt = os.path.join(args.out, "mid.ckpt")
    pl.seed_everything(7)
    full = Net(dropout=0.3)
    trainer(args, max_epochs=2, callbacks=[SaveAt(5, ckpt)]).fit(full, DataLoader(data(), batch_size=BATCH, shuffle=True))
    pl.seed_everything(123)  # the resumed run must not depend on the seed it starts with
    resumed = Net(dropout=0.3)
    trainer(args, max_epochs=2).fit(resumed, DataLoader(data(), batch_size=BATCH, shuffle=True), ckpt_path=ckpt)
    report["resume_bitwise"] = all(torch.equal(a, b) for a, b in zip(full.parameters(), resumed.parameters()))
    report["resume_changed"] = not torch.equal(full.layer.weight, Net().layer.weight)

    # 5. accumulation skips the all-reduce of non-stepping batches; the comm hook sees every all-reduce
    from fulmen.strategies import DDPStrategy

    state = {"calls": 0}
    acc = Net()
    trainer(args, strategy=DDPStrategy(ddp_comm_hook=counting_hook, ddp_comm_state=state), max_steps=2,
            accumulate_grad_batches=2).fit(acc, DataLoader(data(), batch_size=BATCH))
    report["accumulate"] = {"weights": weights(acc), "allreduces": state["calls"]}
    state = {"calls": 0}
    manual = ManualAccumulation()
    trainer(args, strategy=DDPStrategy(ddp_comm_hook=counting_hook, ddp_comm_state=state), max_steps=2).fit(
        manual, DataLoader(data(), batch_size=BATCH))
    report["manual_accumulate"] = {"weights": weights(manual), "allreduces": state["calls"]}
    # manual optimization, two optimizers, two backwards per step
    gan = GAN()
    trainer(args, strategy="ddp_find_unused_parameters_true", max_steps=4).fit(gan, DataLoader(data(), batch_size=BATCH))
    report["gan"] = weights(gan)
    # precision and torch.compile under DDP
    half = Net()
    trainer(args, max_steps=3, precision="bf16-mixed").fit(half, DataLoader(data(), batch_size=BATCH))
    report["bf16"] = weights(half)
    compiled = Net()
    trainer(args, max_steps=STEPS).fit(torch.compile(compiled, backend="eager"), DataLoader(data(), batch_size=BATCH))
    report["compiled"] = weights(compiled)
    # max_time: the processes agree on when the time is up, and stop at the same step
    timed = trainer(args, max_time={"seconds": 1}, max_epochs=10**6)
    timed.fit(Slow(), DataLoader(data(), batch_size=BATCH))
    report["max_time_steps"] = timed.global_step

    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
    sys.stdout.flush()
