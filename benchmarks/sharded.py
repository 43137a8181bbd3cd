"""Per-process peak memory, held memory and step time of DDP, FSDP and DeepSpeed ZeRO-2/3 on 2 processes (CPU, gloo).

    python benchmarks/sharded.py --params 150M [--steps 4] [--strategies ddp,fsdp,...] [--checkpoint]
    python benchmarks/sharded.py [--hidden 1024] [--blocks 6]          # the same model family, by shape
    python benchmarks/sharded.py --json docs/assets/sharded_memory.json  # also write the figures (the docs' source)

The model (MLP blocks ``Linear(h, 2h) -> GELU -> Linear(2h, h)`` in an ``nn.Sequential``) is built the way
the docs say to build a model for sharded training: in ``configure_model``, which runs on the meta device
under FSDP, partitioned as it is created under ZeRO-3, and whole in every process under DDP and ZeRO-2. The
program is the one a user writes: Adam, a validation loader (with the sanity check), the model summary.
``--params 150M`` picks ``--hidden 2048`` and the number of blocks that gives about that many parameters.

Each process reports, from the kernel's high-water mark (``VmHWM``, reset between phases through
``/proc/self/clear_refs``; ``ru_maxrss`` for the whole process):

- ``base``: resident memory after the imports (torch, fulmen, DeepSpeed where used) and the data, before
  ``fit``; subtract it to see what training itself costs;
- ``setup peak``: the peak while the model is built and sharded and the optimizer (engine) created;
- ``train peak``: the peak during the training steps (optimizer states appear at the first one) and the
  validation runs between them;
- ``save peak``: with ``--checkpoint``, the peak while ``trainer.save_checkpoint`` writes one after fit;
- ``process peak``: the largest of these and ``ru_maxrss`` (which the resets lower too);
- ``train/ddp``, ``peak/ddp``: the train peak and the process peak over DDP's;
- ``model+optim``: the bytes of every distinct storage that holds parameters (its own shard under
  FSDP/ZeRO-3) or optimizer state (DeepSpeed's flat float32 copies included), after training;
- ``step``: the median wall time of an optimizer step (batch 8 per process), after the first.

Rows: ``ddp``; ``fsdp`` (FSDPStrategy's default wrapping: each element of the model's ``nn.Sequential``
its own unit); ``fsdp+root`` (``auto_wrap_policy=set()``: the whole model one unit, gathered whole for each
step); ``fsdp+block`` (``auto_wrap_policy={nn.Linear}``); ``fsdp+sharded`` (``state_dict_type="sharded"``:
with ``--checkpoint``, each process writes its shard instead of rank 0 gathering the whole model and optimizer
state); ``deepspeed_stage_2``; ``deepspeed_stage_3``. The
processes of one row run before the next row starts, so rows never share the machine's memory. On a CUDA
machine, ``--accelerator gpu`` adds ``torch.cuda.max_memory_allocated``.
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

ROWS = {"ddp": "ddp", "fsdp": "fsdp", "fsdp+root": "FSDPStrategy(auto_wrap_policy=set())",
        "fsdp+block": "FSDPStrategy(auto_wrap_policy={nn.Linear})",
        "fsdp+sharded": "FSDPStrategy(state_dict_type='sharded')", "deepspeed_stage_2": "deepspeed_stage_2",
        "deepspeed_stage_3": "deepspeed_stage_3"}
BATCH = 8


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_mb() -> float:
    return _status_mb("VmRSS")


def reset_peak() -> None:
    """Start a new high-water mark at the current resident size (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_mb() -> float:
    return _status_mb("VmHWM")


def process_peak_mb() -> float:
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

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y), sync_dist=True)

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


def held_memory(trainer: pl.Trainer, module: nn.Module) -> int:
    """Parameter + optimizer-state bytes this process holds."""
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
    return sum(held.values())


class Probe(pl.Callback):
    """Per-phase peaks (the high-water mark is reset at each boundary) and optimizer-step times."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.peaks: dict[str, float] = {}
        self.start = 0.0

    def setup(self, trainer, pl_module, stage):
        reset_peak()  # configure_model, sharding and the optimizer (engine) follow

    def on_train_start(self, trainer, pl_module):
        self.peaks["setup"] = peak_mb()
        reset_peak()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self.start)

    def on_train_end(self, trainer, pl_module):
        self.peaks["train"] = peak_mb()
        self.held = held_memory(trainer, pl_module)


def _shape(args: argparse.Namespace) -> tuple[int, int]:
    if args.params is None:
        return args.hidden, args.blocks
    text = args.params.upper()
    scale = {"K": 1e3, "M": 1e6, "B": 1e9}.get(text[-1], 1)
    wanted = float(text.rstrip("KMB")) * scale
    hidden = 2048
    return hidden, max(1, round(wanted / (4 * hidden * hidden + 3 * hidden)))


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    hidden, blocks = _shape(args)
    strategy: object = args.strategy
    if strategy == "fsdp+root":
        strategy = pl.strategies.FSDPStrategy(auto_wrap_policy=set())
    elif strategy == "fsdp+block":
        strategy = pl.strategies.FSDPStrategy(auto_wrap_policy={nn.Linear})
    elif strategy == "fsdp+sharded":
        strategy = pl.strategies.FSDPStrategy(state_dict_type="sharded")
    elif strategy.startswith("deepspeed"):
        from fulmen.strategies.deepspeed import import_deepspeed

        import_deepspeed("the benchmark")  # its import is part of the base, not of fit
    pl.seed_everything(0)
    g = torch.Generator().manual_seed(0)
    n = BATCH * 2 * (args.steps + 1)
    data = TensorDataset(torch.randn(n, hidden, generator=g), torch.randn(n, hidden, generator=g))
    probe = Probe()
    trainer = pl.Trainer(accelerator=args.accelerator, devices=2, strategy=strategy, max_steps=args.steps,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[probe],
                         limit_val_batches=1, val_check_interval=max(1, args.steps // 2))
    module = Wide(hidden, blocks)
    base = rss_mb()  # imports and data; the model does not exist yet (configure_model runs inside fit)
    trainer.fit(module, DataLoader(data, batch_size=BATCH), DataLoader(data, batch_size=BATCH))
    probe.peaks["after"] = peak_mb()  # the end of fit (teardown)
    if args.checkpoint:
        reset_peak()
        path = os.path.join(args.out, f"{args.strategy}.ckpt")
        trainer.save_checkpoint(path)
        probe.peaks["save"] = peak_mb()
    report = {"strategy": args.strategy, "rank": trainer.global_rank, "held": probe.held, "base_mb": base,
              "peaks_mb": probe.peaks, "process_peak_mb": max(process_peak_mb(), *probe.peaks.values()),
              "step_s": statistics.median(probe.times[1:] or probe.times),
              "params": sum(p.numel() for p in _meta_model(hidden, blocks).parameters()), "shape": [hidden, blocks]}
    if torch.cuda.is_available() and args.accelerator != "cpu":
        report["cuda_max_allocated"] = torch.cuda.max_memory_allocated()
    with open(os.path.join(args.out, f"{args.strategy}-{trainer.global_rank}.json"), "w") as f:
        json.dump(report, f)


def _meta_model(hidden: int, blocks: int) -> nn.Module:
    with torch.device("meta"):
        model = Wide(hidden, blocks)
        model.configure_model()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strategies", default=",".join(ROWS), help="; ".join(f"{k}: {v}" for k, v in ROWS.items()))
    parser.add_argument("--params", help="model size, e.g. 150M (sets --blocks with --hidden 2048)")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--checkpoint", action="store_true", help="also save a checkpoint after fit, and its peak")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--json", help="also write every process's report and the run's settings to this file")
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
               args.accelerator] + (["--params", args.params] if args.params else []) + (
               ["--checkpoint"] if args.checkpoint else [])
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
        started = time.perf_counter()
        subprocess.run(cmd, check=True, env=env)
        reports = [json.load(open(os.path.join(out, f"{strategy}-{r}.json"))) for r in (0, 1)]
        rows.append(reports)
        print(f"{strategy}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    params = rows[0][0]["params"]
    hidden, blocks = rows[0][0]["shape"]
    print(f"\n{params / 1e6:.1f}M parameters ({blocks} blocks of width {hidden}; float32: {params * 4 / 2**20:.0f} MB, "
          f"with gradients and Adam state: {params * 16 / 2**20:.0f} MB), 2 processes, batch {BATCH} per process, "
          f"{args.steps} steps, {args.accelerator}, load {os.getloadavg()[0]:.2f}")
    ref = next((r for r in rows if r[0]["strategy"] == "ddp"), rows[0])
    ref_train = max(r["peaks_mb"]["train"] for r in ref)
    ref_peak = max(r["process_peak_mb"] for r in ref)
    ref_held = max(r["held"] for r in ref)
    cols = ["base", "setup", "train"] + (["save"] if args.checkpoint else []) + ["process peak", "train/ddp",
                                                                                  "peak/ddp", "model+optim", "/ddp",
                                                                                  "step s"]
    header = f"{'strategy':<19}" + "".join(f"{c:>13}" for c in cols)
    print(header)
    print("-" * len(header))
    for reports in rows:
        def most(key, phase=None):
            return max(r["peaks_mb"][phase] if phase else r[key] for r in reports)

        train, peak, held = most(None, "train"), most("process_peak_mb"), most("held")
        figures = [most("base_mb"), most(None, "setup"), train] + ([most(None, "save")] if args.checkpoint else [])
        figures += [peak]
        print(f"{reports[0]['strategy']:<19}" + "".join(f"{v:>13.0f}" for v in figures)
              + f"{train / ref_train:>13.2f}{peak / ref_peak:>13.2f}{held / 2**20:>13.0f}{held / ref_held:>13.2f}"
              + f"{most('step_s'):>13.2f}")
    print(f"(MB per process, the larger of the two processes' figures; 'base' is resident before fit and inside every "
          f"peak; ratios are to {ref[0]['strategy']})")
    if args.json:
        import platform

        with open(args.json, "w") as f:
            json.dump({"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores visible; "
                                  f"Python {platform.python_version()}, torch {torch.__version__}",
                       "params": params, "shape": [hidden, blocks], "steps": args.steps, "batch": BATCH,
                       "accelerator": args.accelerator, "processes": 2, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
