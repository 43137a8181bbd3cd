"""Shared pieces for the optimization tests: a tiny regression problem, a module over it, a quiet Trainer,
and the hand-written PyTorch loop the Trainer must match."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as pl


def regression_data(n: int = 64, dim: int = 4, seed: int = 0, dtype=torch.float32) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=dtype)
    w = torch.randn(dim, 1, generator=g, dtype=dtype)
    return TensorDataset(x, x @ w + 0.1 * torch.randn(n, 1, generator=g, dtype=dtype))


def loader(batch_size: int = 8, n: int = 64, **kw) -> DataLoader:
    return DataLoader(regression_data(n, **kw), batch_size=batch_size, shuffle=False)


def make_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


class Regressor(pl.LightningModule):
    """Returns the MSE loss; ``opt`` builds the optimizer from the parameters."""

    def __init__(self, opt=lambda p: torch.optim.SGD(p, lr=0.1), seed: int = 0) -> None:
        super().__init__()
        self.net = make_net(seed)
        self._opt = opt

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return self._opt(self.parameters())


def quiet_trainer(**kw) -> pl.Trainer:
    defaults = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0)
    defaults.update(kw)
    return pl.Trainer(**defaults)


def reference_loop(net: nn.Module, dl: DataLoader, opt_fn, epochs: int = 1, accumulate: int = 1, clip_val=None,
                   clip_algorithm: str = "norm", max_steps: int = -1) -> nn.Module:
    """What the Trainer does, written as plain PyTorch."""
    net = copy.deepcopy(net)
    opt = opt_fn(net.parameters())
    steps = 0
    for _ in range(epochs):
        n = len(dl)
        for i, (x, y) in enumerate(dl):
            if i % accumulate == 0:
                opt.zero_grad()
            loss = nn.functional.mse_loss(net(x), y)
            (loss / accumulate if accumulate > 1 else loss).backward()
            if (i + 1) % accumulate == 0 or i + 1 == n:
                if clip_val:
                    params = [p for p in net.parameters() if p.grad is not None]
                    if clip_algorithm == "value":
                        torch.nn.utils.clip_grad_value_(params, clip_val)
                    else:
                        torch.nn.utils.clip_grad_norm_(params, clip_val)
                opt.step()
                steps += 1
                if steps == max_steps:
                    return net
    return net


def assert_same_weights(a: nn.Module, b: nn.Module, atol: float = 0.0, rtol: float = 0.0) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        if atol == 0 and rtol == 0:
            assert torch.equal(sa[k], sb[k].to(sa[k].dtype)), k
        else:
            torch.testing.assert_close(sa[k].float(), sb[k].float(), atol=atol, rtol=rtol, msg=k)
