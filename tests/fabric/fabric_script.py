"""Fabric programs in the style of Lightning's published examples, run in 2 processes by test_fabric_distributed.py.

One launch checks many things (starting processes costs seconds): each rank writes its findings to
``<out>/<part>_rank<N>.pt``.

Usage: python fabric_script.py OUT_DIR train     # ddp/fsdp/deepspeed vs a raw loop, a GPT on FSDP, resume part 1
       python fabric_script.py OUT_DIR resume    # resume part 2: a new run continues from part 1's checkpoint
       fulmen run --devices 2 --accelerator cpu --strategy ddp fabric_script.py OUT_DIR cli
                                                 # a program written for `fabric run`: no launch(), Fabric()'s
                                                 # settings come from the command line
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import fulmen.fabric as L

FEATURES, SAMPLES, BATCH, STEPS = 4, 32, 4, 4


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(SAMPLES, FEATURES, generator=g), torch.randn(SAMPLES, 1, generator=g))


def mlp() -> nn.Module:
    torch.manual_seed(1)  # the same initial weights in every process and in the raw reference loop
    return nn.Sequential(nn.Linear(FEATURES, 8), nn.Tanh(), nn.Linear(8, 1))


def raw_reference() -> dict[str, torch.Tensor]:
    """Plain PyTorch, one process, the two ranks' batches combined."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in DataLoader(data(), batch_size=2 * BATCH):
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_with(strategy: str) -> tuple[dict[str, torch.Tensor], Any]:
    """The raw loop converted in five changes; the same program under each strategy."""
    fabric = L.Fabric(accelerator="cpu", devices=2, strategy=strategy)
    fabric.launch()
    model = mlp()
    model, opt = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    loader = fabric.setup_dataloaders(DataLoader(data(), batch_size=BATCH))
    for x, y in loader:
        loss = nn.functional.mse_loss(model(x), y)
        fabric.backward(loss)
        opt.step()
        opt.zero_grad()
    path = os.path.join(OUT, f"{strategy}.ckpt")
    fabric.save(path, {"model": model, "optimizer": opt})
    fresh = mlp()
    fresh_model, fresh_opt = fabric.setup(fresh, torch.optim.SGD(fresh.parameters(), lr=0.1))
    fabric.load(path, {"model": fresh_model, "optimizer": fresh_opt})
    return _full(fabric, model), _full(fabric, fresh_model)


def _full(fabric: L.Fabric, model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole weights on every rank (FSDP holds shards)."""
    out = {}
    for k, v in model.module.state_dict().items():
        out[k] = (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
    return out


# -- tensor parallelism, as Lightning's examples/fabric/tensor_parallel writes it ---------------------------
def parallelize(model: nn.Module, device_mesh: Any) -> nn.Module:
    """The program's own parallelization: the first layer split by output features, the last by input features."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    parallelize_module(model, device_mesh["tensor_parallel"], {"0": ColwiseParallel(), "2": RowwiseParallel()})
    return model


def tp_reference() -> dict[str, torch.Tensor]:
    """One process: both tensor-parallel ranks read every batch, so the reference reads them once."""
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    for x, y in DataLoader(data(), batch_size=BATCH):
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def tensor_parallel() -> dict[str, Any]:
    from torch.distributed.tensor import DTensor

    from fulmen.fabric.strategies import ModelParallelStrategy

    fabric = L.Fabric(accelerator="cpu", devices=2, strategy=ModelParallelStrategy(parallelize_fn=parallelize))
    fabric.launch()
    mesh = fabric.strategy.device_mesh
    model = mlp()
    model = fabric.setup(model)
    optimizer = fabric.setup_optimizers(torch.optim.AdamW(model.parameters(), lr=0.05))
    loader = fabric.setup_dataloaders(DataLoader(data(), batch_size=BATCH))
    for x, y in loader:
        loss = nn.functional.mse_loss(model(x), y)
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
    trained = _full(fabric, model)
    path = os.path.join(OUT, "tp.ckpt")
    fabric.save(path, {"model": model, "optimizer": optimizer, "step": len(loader)})
    fresh = fabric.setup(mlp())
    fresh_opt = fabric.setup_optimizers(torch.optim.AdamW(fresh.parameters(), lr=0.05))
    state = {"model": fresh, "optimizer": fresh_opt, "step": 0}
    fabric.load(path, state)
    loaded = _full(fabric, fresh)
    # one more step from the saved and from the loaded state: the optimizer's moments came back too
    x, y = next(iter(loader))
    for m, o in ((model, optimizer), (fresh, fresh_opt)):
        fabric.backward(nn.functional.mse_loss(m(x), y))
        o.step()
    weight = model.module[0].weight
    return {"mesh": list(mesh.mesh_dim_names), "dtensor": isinstance(weight, DTensor),
            "local_shape": list(weight.to_local().shape), "batches": len(loader), "step": state["step"],
            "is_dir": os.path.isdir(path), "trained": trained, "loaded": loaded,
            "next_step": (_full(fabric, model), _full(fabric, fresh))}


# -- a small GPT pretraining loop: init_module(empty_init=True) + FSDP, as LitGPT / lit-llama do ---------
class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, 2, d // 2).permute(2, 0, 3, 1, 4)
        att = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int = 32, dim: int = 16, layers: int = 2) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(layers))
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def gpt_pretraining() -> dict[str, Any]:
    from fulmen.fabric.strategies import FSDPStrategy

    fabric = L.Fabric(accelerator="cpu", devices=2, strategy=FSDPStrategy(auto_wrap_policy={Block}))
    fabric.launch()
    fabric.seed_everything(3)
    with fabric.init_module(empty_init=True):
        model = GPT()
    meta = all(p.is_meta for p in model.parameters())
    model = fabric.setup_module(model)
    optimizer = fabric.setup_optimizers(torch.optim.AdamW(model.parameters(), lr=3e-3))
    text = torch.arange(64) % 32  # a repeating "corpus": next token = this token + 1
    losses = []
    for it in range(30):
        starts = torch.randint(0, 48, (4,))
        batch = torch.stack([text[s:s + 9] for s in starts.tolist()])
        x, y = fabric.to_device((batch[:, :-1], batch[:, 1:]))
        logits = model(x)
        loss = nn.functional.cross_entropy(logits.reshape(-1, 32), y.reshape(-1))
        fabric.backward(loss)
        norm = fabric.clip_gradients(model, optimizer, max_norm=1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(fabric.all_reduce(loss.detach()).item())
    return {"meta": meta, "first": losses[0], "last": losses[-1], "norm": float(norm),
            "same_loss_everywhere": fabric.all_gather(torch.tensor(losses[-1])).tolist()}


# -- exact resume with loader workers and random augmentation ------------------------------------------
class Noisy(Dataset):
    """Random augmentation in the workers: the batches depend on each worker's random stream."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.full((FEATURES,), float(i)) / 24 + 0.1 * torch.randn(FEATURES)
        return x, torch.tensor([float(i % 3)])


def resume_program(fabric: L.Fabric, stop_at: int | None, ckpt: str, resume: bool) -> tuple[list, dict]:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Dropout(0.1), nn.Linear(FEATURES, 1))
    model, opt = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.05))
    loader = fabric.setup_dataloaders(DataLoader(Noisy(), batch_size=2, shuffle=True, num_workers=2))
    state = {"model": model, "optimizer": opt, "loader": loader, "epoch": 0, "step": 0}
    if resume:
        fabric.load(ckpt, state)
    seen = []
    for epoch in range(state["epoch"], 2):
        for x, y in loader:
            loss = nn.functional.mse_loss(model(x), y)
            fabric.backward(loss)
            opt.step()
            opt.zero_grad()
            seen.append(x.sum().item())
            state.update(epoch=epoch, step=state["step"] + 1)
            if state["step"] == stop_at:
                fabric.save(ckpt, state)
        state["epoch"] = epoch + 1
    return seen, {k: v.detach().clone() for k, v in model.module.state_dict().items()}


def cli_program() -> dict[str, Any]:
    """In the style of Lightning's decoupled RL example: the player and the trainer ranks exchange data with
    broadcast/all_gather, and train one policy; nothing about the hardware is written in the program."""
    fabric = L.Fabric()
    model = mlp()
    model, opt = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    x = fabric.broadcast(torch.randn(BATCH, FEATURES) if fabric.global_rank == 0 else None)  # the "player" acts
    rewards = fabric.all_gather(model(x).detach().sum())
    fabric.backward(nn.functional.mse_loss(model(x), torch.zeros(BATCH, 1)))
    opt.step()
    return {"world_size": fabric.world_size, "strategy": type(fabric.strategy).__name__,
            "rewards": rewards.tolist(), "weights": _full(fabric, model)}


if __name__ == "__main__":
    OUT, part = sys.argv[1], sys.argv[2]
    if part == "cli":
        found = cli_program()
        torch.save(found, os.path.join(OUT, f"cli_rank{int(os.environ['RANK'])}.pt"))
        sys.exit(0)
    fabric = L.Fabric(accelerator="cpu", devices=2, strategy="ddp")
    fabric.launch()
    rank = fabric.global_rank
    ckpt = os.path.join(OUT, "resume.ckpt")
    found: dict[str, Any] = {}
    if part == "train":
        found["reference"] = raw_reference()
        for strategy in sys.argv[3].split(","):
            found[strategy] = train_with(strategy)
        found["gpt"] = gpt_pretraining()
        found["tp_reference"], found["tp"] = tp_reference(), tensor_parallel()
        found["uninterrupted"] = resume_program(fabric, stop_at=9, ckpt=ckpt, resume=False)
    else:
        found["resumed"] = resume_program(fabric, stop_at=None, ckpt=ckpt, resume=True)
    torch.save(found, os.path.join(OUT, f"{part}_rank{rank}.pt"))
