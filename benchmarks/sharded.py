"""Per-process memory and step time of DDP, FSDP and DeepSpeed ZeRO-2/3 on 2 processes (CPU, gloo).

    python benchmarks/sharded.py [--hidden 1024] [--blocks 6] [--steps 6] [--strategies ddp,fsdp,...]

The model (``--blocks`` MLP blocks of width ``--hidden``; about 25M parameters by default, so parameters plus
Adam state are ~300 MB) is built in ``configure_model``: on the meta device under FSDP, partitioned as it is
created under ZeRO-3, whole in every process under DDP and ZeRO-2. Each process reports:

- ``model+optim``: the bytes of every distinct tensor storage that holds parameters (its own shard under
  FSDP/ZeRO-3) or optimizer state (including DeepSpeed's flat float32 copies), after training;
- ``grads``: the bytes of the gradients still held (DeepSpeed frees its partitioned ones after each step);
- ``peak RSS``: the process's maximum resident memory, and how much it grew during ``fit`` (model included);
- ``step``: the median wall time of an optimizer step (batch 8 per process), after the first two.

The ratio column compares ``model+optim`` with DDP's. On a CUDA machine, pass ``--accelerator gpu`` to read
``torch.cuda.max_memory_allocated`` as well.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
import fulmen as pl  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Wide(pl.LightningModule):
    def __init__(self, hidden: int, blocks: int) -> None:
        super().__init__()
        self.hidden, self.blocks = hidden, blocks

    def configure_model(self) -> None:
        if hasattr(self, "net"):
            return
        layers = []
        for _ in range(self.blocks):
            layers += [nn.Linear(self.hidden, 2 * self.hidden), nn.GELU(), nn.Linear(2 * self.hidden, self.hidden)]
        self.net = nn.Sequential(*layers)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-4)


def _storages(tensors) -> dict[int, int]:
    """data_ptr -> bytes of each distinct storage behind ``tensors`` (views of one buffer count once)."""
    found: dict[int, int] = {}
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        local = getattr(t, "_local_tensor", None)  # a DTensor's own shard
        t = local if local is not None else t
        if t.device.type == "meta" or t.numel() == 0:
            continue
        storage = t.untyped_storage()
        found[storage.data_ptr()] = storage.nbytes()
    return found


def _tensors_in(obj, depth: int = 0):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth < 4 and isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors_in(v, depth + 1)
    elif depth < 4 and isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors_in(v, depth + 1)


def held_memory(trainer: pl.Trainer, module: nn.Module) -> tuple[int, int]:
    """(parameter + optimizer-state bytes, gradient bytes) this process holds."""
    params = []
    for p in module.parameters():
        params.append(p)
        params.append(getattr(p, "ds_tensor", None))  # ZeRO-3: the partition behind an emptied parameter
    held = _storages(params)
    opt = trainer.optimizers[0]
    inner = getattr(opt, "optimizer", opt)  # DeepSpeed's ZeRO optimizer wraps the torch one
    held.update(_storages(t for state in inner.state.values() for t in _tensors_in(state)))
    held.update(_storages(t for g in inner.param_groups for t in g["params"]))
    for name in ("bit16_groups_flat", "single_partition_of_fp32_groups", "fp16_partitioned_groups_flat",
                 "fp32_partitioned_groups_flat"):  # DeepSpeed's flat copies of the parameters
        held.update(_storages(_tensors_in(getattr(opt, name, None))))
    grads = _storages(p.grad for p in module.parameters() if p.grad is not None)
    for name in ("averaged_gradients", "grads_in_partition", "fp32_partitioned_groups_flat_grad"):
        grads.update(_storages(_tensors_in(getattr(opt, name, None))))
    grads = {k: v for k, v in grads.items() if k not in held}
    return sum(held.values()), sum(grads.values())


class Probe(pl.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self.start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self.start)
        self.held, self.grads = held_memory(trainer, pl_module)
        self.loss = float(outputs["loss"])


def _plain_model(args: argparse.Namespace) -> nn.Module:
    with torch.device("meta"):
        model = Wide(args.hidden, args.blocks)
        model.configure_model()
    return model


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    pl.seed_everything(0)
    g = torch.Generator().manual_seed(0)
    n = 8 * 2 * (args.steps + 1)
    data = TensorDataset(torch.randn(n, args.hidden, generator=g), torch.randn(n, args.hidden, generator=g))
    probe = Probe()
    module = Wide(args.hidden, args.blocks)
    strategy: object = args.strategy
    if strategy == "fsdp+wrap":  # each Linear its own FSDP unit: gathered one at a time instead of all at once
        strategy = pl.strategies.FSDPStrategy(auto_wrap_policy={nn.Linear})
    trainer = pl.Trainer(accelerator=args.accelerator, devices=2, strategy=strategy, max_steps=args.steps,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[probe])
    probe.rss_at_start = rss_mb()  # before the model exists (configure_model runs inside fit)
    trainer.fit(module, DataLoader(data, batch_size=8))
    report = {"strategy": args.strategy, "rank": trainer.global_rank, "held": probe.held, "grads": probe.grads,
              "peak_rss_mb": peak_rss_mb(), "rss_at_fit_start_mb": probe.rss_at_start,
              "step_s": statistics.median(probe.times[2:]) if len(probe.times) > 2 else probe.times[-1],
              "loss": probe.loss, "params": sum(p.numel() for p in _plain_model(args).parameters())}
    if torch.cuda.is_available() and args.accelerator != "cpu":
        report["cuda_max_allocated"] = torch.cuda.max_memory_allocated()
    with open(os.path.join(args.out, f"{args.strategy}-{trainer.global_rank}.json"), "w") as f:
        json.dump(report, f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strategies", default="ddp,fsdp,fsdp+wrap,deepspeed_stage_2,deepspeed_stage_3",
                        help="fsdp+wrap: FSDPStrategy(auto_wrap_policy={nn.Linear})")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--strategy", help=argparse.SUPPRESS)  # set in the worker processes
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.strategy:
        worker(args)
        return
    out = tempfile.mkdtemp(prefix="fulmen-sharded-bench-")
    rows = []
    for strategy in args.strategies.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), "--strategy", strategy, "--out", out, "--hidden",
               str(args.hidden), "--blocks", str(args.blocks), "--steps", str(args.steps), "--accelerator",
               args.accelerator]
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
        subprocess.run(cmd, check=True, env=env)
        reports = [json.load(open(os.path.join(out, f"{strategy}-{r}.json"))) for r in (0, 1)]
        rows.append(reports)
    params = rows[0][0]["params"]
    print(f"\n{params / 1e6:.1f}M parameters (float32: {params * 4 / 2**20:.0f} MB; with Adam state: "
          f"{params * 12 / 2**20:.0f} MB), 2 processes, batch 8 per process, {args.accelerator}")
    base = max(r["held"] for r in rows[0])
    header = f"{'strategy':<20}{'model+optim MB':>16}{'vs ' + rows[0][0]['strategy']:>9}{'grads MB':>10}" \
             f"{'peak RSS MB':>13}{'RSS growth':>12}{'step s':>9}{'loss':>9}"
    print(header)
    print("-" * len(header))
    for reports in rows:
        held = max(r["held"] for r in reports)
        grads = max(r["grads"] for r in reports)
        peak = max(r["peak_rss_mb"] for r in reports)
        growth = max(r["peak_rss_mb"] - r["rss_at_fit_start_mb"] for r in reports)
        step = max(r["step_s"] for r in reports)
        print(f"{reports[0]['strategy']:<20}{held / 2**20:>16.0f}{held / base:>9.2f}{grads / 2**20:>10.0f}"
              f"{peak:>13.0f}{growth:>12.0f}{step:>9.3f}{reports[0]['loss']:>9.4f}")
    print("(per process: the larger of the two processes' figures)")


if __name__ == "__main__":
    main()
