"""Run by test_sharded.py in each of 2 processes: FSDP or DeepSpeed fits, checkpoints and resumes, and each
rank writes what it found to ``<out>/<strategy>-rank<N>.json`` (starting processes costs seconds, so one
launch checks many things).

Every fit is the one a user writes first: the sanity check runs and validation comes during training (after
every optimizer step), so training always follows an evaluation pass (that order once broke FSDP and ZeRO-3:
evaluation under inference_mode left inference tensors where the next training step wrote or saved them).

Usage: python sharded_script.py OUT_DIR --strategies fsdp[,deepspeed_stage_1,...] [--state-dict-type sharded]
       [--accelerator cuda]  (2 GPUs: nccl, pinned loader memory; test_gpu.py)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as pl

FEATURES, SAMPLES, BATCH, STEPS, ACCUMULATE = 4, 64, 4, 3, 2
ACCELERATOR = "cpu"  # --accelerator


def data(seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(SAMPLES, FEATURES, generator=g), torch.randn(SAMPLES, 1, generator=g))


class Block(nn.Module):
    calls = 0  # forward passes, recomputations under activation checkpointing included

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(FEATURES, FEATURES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Block.calls += 1
        return torch.relu(self.linear(x))


class Net(pl.LightningModule):
    """Two sharded units (the Block and the root) and a parameter the step uses directly, not via forward."""

    def __init__(self, dropout: float = 0.0, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(1)  # the same initial weights in every process and in the reference run
        self.block = Block()
        self.head = nn.Linear(FEATURES, 1)
        self.drop = nn.Dropout(dropout)
        self.scale = nn.Parameter(torch.full((1,), 1.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.block(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = ((self(x) * self.scale - y) ** 2).mean()
        self.log("train_loss", loss, sync_dist=True)
        return loss

    pinned: list = []  # on GPUs: whether each training batch arrived in pinned memory

    def on_before_batch_transfer(self, batch, dataloader_idx):
        if torch.cuda.is_available() and self.trainer.training:
            Net.pinned.append(batch[0].is_pinned())
        return batch

    validated_at: list = []  # (sanity check?, global step) of every validation batch

    def validation_step(self, batch, batch_idx):
        Net.validated_at.append((self.trainer.sanity_checking, self.trainer.global_step))
        x, y = batch
        self.log("val_loss", ((self(x) * self.scale - y) ** 2).mean(), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class ManualNet(Net):
    """The same training with manual optimization: manual_backward, clip_gradients, step, zero_grad."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        x, y = batch
        loss = ((self(x) * self.scale - y) ** 2).mean()
        self.manual_backward(loss)
        self.clip_gradients(opt, gradient_clip_val=0.5, gradient_clip_algorithm="norm")
        opt.step()
        opt.zero_grad()
        return loss


class SGDNet(Net):
    """Plain SGD: its step saves no state, so an inference tensor left by evaluation is met in backward instead."""

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", ((self(x) * self.scale - y) ** 2).mean(), sync_dist=True)

    def predict_step(self, batch, batch_idx):
        return self(batch[0]) * self.scale

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class BNNet(Net):
    """Batch norm first: with sync_batchnorm, 2 processes of batch B normalize as one of batch 2B."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(FEATURES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.bn(x))


class MetaNet(Net):
    """The layers are built in configure_model, which a sharded strategy runs on the meta device."""

    def __init__(self) -> None:
        super().__init__()
        del self.block, self.head

    def configure_model(self) -> None:
        if not hasattr(self, "block"):
            self.block = nn.Sequential(nn.Linear(FEATURES, 64), nn.ReLU())
            self.head = nn.Linear(64, 1)
            self.built_on = str(self.block[0].weight.device)


class SaveAt(pl.Callback):
    """Writes a checkpoint after the given global step (mid-epoch)."""

    def __init__(self, step: int, path: str) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and not os.path.exists(self.path):
            trainer.save_checkpoint(self.path)


def make_strategy(name: str, state_dict_type: str, variant: str = ""):
    if name == "fsdp" and variant in ("", "manual", "meta", "sgd"):
        return pl.strategies.FSDPStrategy(auto_wrap_policy={Block}, state_dict_type=state_dict_type)
    if name == "fsdp" and variant == "ckpt":  # activation checkpointing, parameters kept from forward to backward
        return pl.strategies.FSDPStrategy(auto_wrap_policy={Block}, activation_checkpointing_policy={Block},
                                          sharding_strategy="SHARD_GRAD_OP")
    if name == "fsdp" and variant in ("no_shard", "hybrid"):  # replicated; sharded within a node (a 1x2 mesh)
        return pl.strategies.FSDPStrategy(sharding_strategy=variant.upper() if variant == "no_shard" else
                                          "HYBRID_SHARD", device_mesh=(1, 2) if variant == "hybrid" else None)
    if name.startswith("deepspeed") and variant == "manual":  # clipping in manual optimization: the config's
        return pl.strategies.DeepSpeedStrategy(config={"zero_optimization": {"stage": 2}, "gradient_clipping": 0.5})
    return name


def full_weights(trainer: pl.Trainer, model: nn.Module) -> dict[str, list[float]]:
    """Every parameter whole, on every rank, whatever the strategy sharded."""
    engine = getattr(trainer.strategy, "deepspeed_engine", None)
    if engine is not None and trainer.strategy.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            return {n: p.detach().float().flatten().tolist() for n, p in model.named_parameters()}
    out = {}
    for n, p in model.named_parameters():
        p = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[n] = p.detach().float().flatten().tolist()
    return out


def trainer(strategy, **kwargs) -> pl.Trainer:
    kw = dict(accelerator=ACCELERATOR, devices=2, strategy=strategy, logger=False, enable_progress_bar=False,
              enable_model_summary=False, enable_checkpointing=False)
    kw.update(kwargs)
    return pl.Trainer(**kw)


def validate_before_fit(tr: pl.Trainer, model: pl.LightningModule, batch: int) -> list[dict]:
    """The untrained model's metrics, as users often check first: the strategy's first forward happens here, so
    whatever it allocates then (FSDP's gathered parameters) must still be trainable in the fit that follows."""
    return tr.validate(model, DataLoader(data(1), batch_size=batch), verbose=False)


def evaluate_then_fit_again(tr: pl.Trainer, model: pl.LightningModule, batch: int) -> dict:
    """After a fit: validate, test and predict on the same trainer, then fit STEPS more steps. The evaluations
    must leave the parameters (and whatever a strategy keeps of them) trainable. test_sharded.py runs the same
    in one process for reference."""
    eval_loader = DataLoader(data(1), batch_size=batch)
    report = {
        "validate": tr.validate(model, eval_loader, verbose=False),
        "test": tr.test(model, eval_loader, verbose=False),
        "predict": [p.detach().flatten().tolist() for p in tr.predict(model, eval_loader)],
        "grad_enabled_after_eval": torch.is_grad_enabled(),
    }
    tr.max_steps = 2 * STEPS
    tr.fit(model, DataLoader(data(), batch_size=batch), DataLoader(data(1), batch_size=batch))
    report["second_fit_steps"] = tr.global_step
    report["second_fit_weights"] = full_weights(tr, model)
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--strategies", default="fsdp")
    parser.add_argument("--state-dict-type", default="sharded")
    parser.add_argument("--full-checks", default="", help="the strategy that also checkpoints and resumes")
    parser.add_argument("--accelerator", default="cpu")
    args = parser.parse_args()
    global ACCELERATOR
    ACCELERATOR = args.accelerator
    cuda = ACCELERATOR == "cuda"
    torch.set_num_threads(1)
    for run in args.strategies.split(","):
        # "name[@precision][+manual|+meta]"
        spec, _, variant = run.partition("+")
        name, _, precision = spec.partition("@")
        report: dict = {}
        out = os.path.join(args.out, run)
        # 1. a few steps, with gradient accumulation and clipping by norm: the same weights as DDP
        model = {"manual": ManualNet, "meta": MetaNet, "sgd": SGDNet, "bn": BNNet}.get(variant, Net)()
        Block.calls, Net.validated_at, Net.pinned = 0, [], []
        ckpt = pl.callbacks.ModelCheckpoint(dirpath=os.path.join(out, "ckpt"), monitor="train_loss", save_top_k=1,
                                            save_last=True, every_n_train_steps=1)
        full_checks = run == args.full_checks
        accumulate = 1 if variant == "manual" else ACCUMULATE
        tr = trainer(make_strategy(name, args.state_dict_type, variant), max_steps=STEPS, limit_val_batches=2,
                     accumulate_grad_batches=accumulate, gradient_clip_val=None if variant == "manual" else 0.5,
                     precision=precision or None, val_check_interval=accumulate,
                     callbacks=[ckpt] if full_checks else None, enable_checkpointing=full_checks,
                     sync_batchnorm=variant == "bn")
        if variant == "sgd":
            report["validate_before_fit"] = validate_before_fit(tr, model, BATCH)
            Block.calls, Net.validated_at = 0, []
        tr.fit(model, DataLoader(data(), batch_size=BATCH, pin_memory=cuda), DataLoader(data(1), batch_size=BATCH))
        rank = tr.global_rank
        report["weights"] = full_weights(tr, model)
        report["built_on"] = getattr(model, "built_on", None)
        report["block_calls"] = Block.calls
        report["global_step"] = tr.global_step
        report["strategy"] = type(tr.strategy).__name__
        report["callback_metrics"] = {k: float(v) for k, v in tr.callback_metrics.items()}
        report["validated_at"] = list(Net.validated_at)
        report["pinned"] = list(Net.pinned)
        report["backend"] = getattr(tr.strategy, "process_group_backend", None)
        report["device"] = str(next(model.parameters()).device.type)
        report["buffers"] = {n: b.detach().float().flatten().tolist() for n, b in model.named_buffers()
                             if b.is_floating_point()}
        if variant == "sgd":
            report.update(evaluate_then_fit_again(tr, model, BATCH))
        if full_checks:
            report["best"] = ckpt.best_model_path
            report["last"] = ckpt.last_model_path
            report["ckpt_dir"] = sorted(os.listdir(os.path.join(out, "ckpt")))
            # validate from the best checkpoint in both processes
            report["validate"] = tr.validate(model, DataLoader(data(1), batch_size=BATCH), ckpt_path="best",
                                             verbose=False)
            tr.save_checkpoint(os.path.join(out, "after_fit.ckpt"))  # the engine/shards are still there
            report["after_fit_kind"] = pl.strategies.sharded_checkpoint.kind(os.path.join(out, "after_fit.ckpt"))
            if name == "fsdp":  # a single full file too, gathered on rank 0, read back by both processes
                tr.strategy.state_dict_type = "full"
                tr.save_checkpoint(os.path.join(out, "full.ckpt"))
                report["validate_full"] = tr.validate(model, DataLoader(data(1), batch_size=BATCH),
                                                      ckpt_path=os.path.join(out, "full.ckpt"), verbose=False)
                tr.strategy.state_dict_type = args.state_dict_type

            # 2. exact mid-epoch resume (dropout, shuffling): saved by 2 processes, loaded by 2
            mid = os.path.join(out, "mid.ckpt")
            pl.seed_everything(7)
            full = Net(dropout=0.3)
            t_full = trainer(make_strategy(name, args.state_dict_type), max_epochs=2, callbacks=[SaveAt(5, mid)])
            t_full.fit(full, DataLoader(data(), batch_size=BATCH, shuffle=True))
            pl.seed_everything(123)  # the resumed run must not depend on the seed it starts with
            resumed = Net(dropout=0.3)
            t_res = trainer(make_strategy(name, args.state_dict_type), max_epochs=2)
            t_res.fit(resumed, DataLoader(data(), batch_size=BATCH, shuffle=True), ckpt_path=mid)
            a, b = full_weights(t_full, full), full_weights(t_res, resumed)
            report["resume_bitwise"] = a == b
            report["resume_steps"] = [t_full.global_step, t_res.global_step]
            initial = {n: p.detach().flatten().tolist() for n, p in Net(dropout=0.3).named_parameters()}
            report["resume_changed"] = a != initial
            report["mid_is_dir"] = os.path.isdir(mid)
        with open(os.path.join(args.out, f"{run}-rank{rank}.json"), "w") as f:
            json.dump(report, f)


if __name__ == "__main__":
    main()
    sys.stdout.flush()
