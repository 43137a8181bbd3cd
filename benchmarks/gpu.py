#!/usr/bin/env python3
"""fulmen's Trainer against a hand-written PyTorch loop on a GPT-2-small-sized model in bf16-mixed, on GPUs.

The model: 12 layers, 768 wide, 12 heads, sequence 512, GPT-2's vocabulary (about 124M parameters with tied
embeddings), AdamW, autocast to bfloat16. Both sides train the same initial weights on the same random tokens
through the same DataLoader settings; each run is a fresh process. The first ``--warmup`` steps (CUDA context,
autotuning, allocator growth) are left out of the clock, and the clock is read after ``torch.cuda.synchronize()``
only, at the start of the first timed batch and at the end of the last one (both after the batch was fetched,
on both sides). It prints ms/step and the last loss for each run (the same loss on both sides shows they trained
the same thing), the median per variant and fulmen/raw.

With more than one GPU it also runs DDP over all of them: torchrun with a raw DistributedDataParallel loop
against ``Trainer(strategy="ddp")``, the same batch per GPU.

    python benchmarks/gpu.py                 # on GPUs (scripts/gpu_check.sh runs it)
    python benchmarks/gpu.py --tiny          # a 2-layer toy on CPU (or GPU): checks this script's logic
    python benchmarks/gpu.py --rounds 3 --steps 100
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F

SIZES = {  # layers, width, heads, sequence, vocabulary, batch per device
    "gpt2-small": dict(layers=12, width=768, heads=12, seq=512, vocab=50257, batch=8),
    "tiny": dict(layers=2, width=64, heads=2, seq=32, vocab=256, batch=4),
}


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(approximate="tanh"), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c)
        x = x + self.proj(y)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, layers: int, width: int, heads: int, seq: int, vocab: int, **_) -> None:
        super().__init__()
        torch.manual_seed(0)  # the same initial weights on both sides and on every rank
        self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(seq, width)
        self.blocks = nn.Sequential(*[Block(width, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.tok.weight  # tied, as in GPT-2
        for p in self.parameters():  # GPT-2's initial scale, so the loss starts near log(vocab)
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """The next-token loss of a batch of token rows."""
        x, y = tokens[:, :-1], tokens[:, 1:]
        h = self.tok(x) + self.pos(torch.arange(x.shape[1], device=x.device))
        logits = self.head(self.ln(self.blocks(h)))
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.reshape(-1))


def make_loader(size: dict, steps: int, world: int = 1, sampler_rank: int | None = None, pin: bool = False):
    """``steps`` batches per process of random tokens; with ``sampler_rank``, that rank's DistributedSampler
    (the raw DDP loop; fulmen adds the same sampler itself)."""
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(size["vocab"], (steps * size["batch"] * world, size["seq"] + 1), generator=g)
    data = TensorDataset(tokens)
    sampler = None if sampler_rank is None else DistributedSampler(data, world, sampler_rank, shuffle=False)
    return DataLoader(data, batch_size=size["batch"], sampler=sampler, pin_memory=pin, num_workers=2)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- the children: one measurement each, printed as one JSON line (rank 0) --------------------------------


def raw(args: argparse.Namespace, size: dict, ddp: bool) -> dict | None:
    import torch.distributed as dist

    rank, world, local = 0, 1, 0
    if ddp:  # started by torchrun
        rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if ddp:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    model = GPT(**size).to(device)
    net = nn.parallel.DistributedDataParallel(model, device_ids=[local] if device.type == "cuda" else None) \
        if ddp else model
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    loader = make_loader(size, args.warmup + args.steps, world, rank if ddp else None, pin=device.type == "cuda")
    t0 = loss = None
    for i, (tokens,) in enumerate(loader):
        if i == args.warmup:
            sync(device)
            t0 = time.perf_counter()
        tokens = tokens.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = net(tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    seconds = time.perf_counter() - t0
    result = dict(ms=1000 * seconds / args.steps, loss=float(loss), rank=rank)
    if ddp:
        dist.destroy_process_group()
    return result if rank == 0 else None


def fulmen_run(args: argparse.Namespace, size: dict, ddp: bool) -> dict | None:
    import fulmen as pl

    class Lit(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.gpt = GPT(**size)

        def forward(self, tokens):
            return self.gpt(tokens)

        def training_step(self, batch, batch_idx):
            return self(batch[0])

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=3e-4)

    class Clock(pl.Callback):
        """Reads the clock where the raw loop does: after fetching the first timed batch, after the last step."""

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == args.warmup:
                sync(pl_module.device)
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == args.warmup + args.steps - 1:
                sync(pl_module.device)
                self.seconds = time.perf_counter() - self.t0
                self.loss = float(outputs["loss"] if isinstance(outputs, dict) else outputs)

    cuda = torch.cuda.is_available()
    world = (torch.cuda.device_count() if cuda else 2) if ddp else 1
    clock = Clock()
    trainer = pl.Trainer(accelerator="cuda" if cuda else "cpu", devices=world, strategy="ddp" if ddp else "auto",
                         precision="bf16-mixed", max_steps=args.warmup + args.steps, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[clock])
    trainer.fit(Lit(), make_loader(size, args.warmup + args.steps, world, pin=cuda))
    if trainer.global_rank != 0:
        return None
    return dict(ms=1000 * clock.seconds / args.steps, loss=clock.loss, rank=0)


# ---- the parent: runs the children in turn and prints the figures ---------------------------------------


def child(args: argparse.Namespace, variant: str, world: int) -> dict:
    me = [os.path.abspath(__file__), "--child", variant, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    me += ["--tiny"] if args.tiny else []
    if variant == "raw-ddp":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}", *me]
    else:
        cmd = [sys.executable, *me]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONWARNINGS="ignore")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        sys.exit(f"{variant} failed (exit {out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(lines[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a 2-layer toy: checks this script on CPU")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default 60; --tiny 10)")
    ap.add_argument("--warmup", type=int, default=None, help="steps left out of the clock (default 10; --tiny 3)")
    ap.add_argument("--rounds", type=int, default=2, help="runs per variant, alternating")
    ap.add_argument("--no-ddp", action="store_true")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per run")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.steps = args.steps or (10 if args.tiny else 60)
    args.warmup = args.warmup or (3 if args.tiny else 10)
    size = SIZES["tiny" if args.tiny else "gpt2-small"]

    if args.child:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        ddp = args.child.endswith("-ddp")
        result = (raw if args.child.startswith("raw") else fulmen_run)(args, size, ddp)
        if result is not None:
            print(json.dumps(result), flush=True)
        return 0

    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        sys.exit("No CUDA GPU here: this benchmark times GPUs. Use --tiny to check the script itself on CPU.")
    gpus = torch.cuda.device_count() if cuda else 0
    where = torch.cuda.get_device_name(0) if cuda else "CPU"
    params = sum(p.numel() for p in GPT(**size).parameters())
    print(f"device: {where} x{max(gpus, 1)}  model: {size['layers']} layers, {size['width']} wide, {size['heads']} "
          f"heads, seq {size['seq']}, {params / 1e6:.1f}M parameters  batch {size['batch']}/device  bf16-mixed  "
          f"{args.warmup} warm-up + {args.steps} timed steps, {args.rounds} rounds", flush=True)
    groups = [("raw", "fulmen", 1)]
    world = gpus if cuda else 2  # --tiny on CPU: 2 gloo processes, to check the DDP path of this script
    if world > 1 and not args.no_ddp:
        groups.append(("raw-ddp", "fulmen-ddp", world))
    for base, ours, n in groups:
        times: dict[str, list[float]] = {base: [], ours: []}
        for r in range(args.rounds):
            for variant in (base, ours) if r % 2 == 0 else (ours, base):
                res = child(args, variant, n)
                times[variant].append(res["ms"])
                print(f"  round {r + 1} {variant:<10} {res['ms']:9.2f} ms/step  last loss {res['loss']:.4f}",
                      flush=True)
        a, b = statistics.median(times[base]), statistics.median(times[ours])
        label = f"{n} GPU(s)" if cuda else f"{n} CPU process(es)"
        tokens = size["batch"] * size["seq"] * n
        print(f"{label}: raw {a:.2f} ms/step, fulmen {b:.2f} ms/step, fulmen/raw {b / a:.3f}  "
              f"({tokens / (b / 1000):,.0f} tokens/s with fulmen)", flush=True)
        assert math.isfinite(a) and math.isfinite(b)
    return 0


if __name__ == "__main__":
    sys.exit(main())
