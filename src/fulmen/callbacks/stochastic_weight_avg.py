"""``StochasticWeightAveraging``: average the weights of the last epochs under a constant/annealed SWA rate."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import SWALR

from fulmen._utils import rank_zero_warn
from fulmen.callbacks.callback import Callback
from fulmen.callbacks.weight_averaging import _copy_without_trainer
from fulmen.errors import MisconfigurationException
from fulmen.trainer.optimizers import LRSchedulerConfig


def _running_mean(averaged: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
    return averaged + (current - averaged) / (num_averaged + 1)


class StochasticWeightAveraging(Callback):
    """Stochastic Weight Averaging (Izmailov et al., 2018) over epochs ``swa_epoch_start`` .. the last one.

    From ``swa_epoch_start`` (an epoch, or a fraction of ``max_epochs``) the scheduler is replaced by
    ``SWALR``, annealing to ``swa_lrs`` over ``annealing_epochs``, and at every epoch start the weights are
    folded into a running average (``avg_fn``). When fit ends the module gets the averaged weights, and
    BatchNorm statistics are recomputed for them with one pass of ``forward`` over the training data.

    Args:
        swa_lrs: Learning rate(s) SWA anneals to: one for every parameter group, or one per group.
        swa_epoch_start: Epoch at which averaging starts, or a fraction of ``max_epochs``.
        annealing_epochs: Epochs over which the rate moves to ``swa_lrs``.
        annealing_strategy: "cos" or "linear" annealing.
        avg_fn: How the running average folds in new weights. None: the plain mean.
        device: Where the averaged copy lives (None: with the model).

    Example::

        fulmen.Trainer(max_epochs=20, callbacks=[StochasticWeightAveraging(swa_lrs=1e-2, swa_epoch_start=0.75)])
    """

    def __init__(self, swa_lrs: float | list[float], swa_epoch_start: int | float = 0.8, annealing_epochs: int = 10,
                 annealing_strategy: str = "cos", avg_fn: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
                 device: torch.device | str | None = torch.device("cpu")) -> None:
        start_ok = (isinstance(swa_epoch_start, int) and swa_epoch_start >= 1) or (
            isinstance(swa_epoch_start, float) and 0 <= swa_epoch_start <= 1)
        if not start_ok:
            raise MisconfigurationException(
                f"StochasticWeightAveraging(swa_epoch_start={swa_epoch_start!r}): pass an epoch >= 1 or a fraction of "
                "max_epochs in [0, 1]."
            )
        lrs_ok = (isinstance(swa_lrs, (int, float)) and swa_lrs > 0) or (
            isinstance(swa_lrs, list) and swa_lrs and all(isinstance(lr, (int, float)) and lr > 0 for lr in swa_lrs))
        if not lrs_ok:
            raise MisconfigurationException(
                f"StochasticWeightAveraging(swa_lrs={swa_lrs!r}): pass a positive rate, or a list of them (one per "
                "parameter group)."
            )
        if annealing_strategy not in ("cos", "linear"):
            raise MisconfigurationException(
                f"StochasticWeightAveraging(annealing_strategy={annealing_strategy!r}): use 'cos' or 'linear'."
            )
        self._swa_epoch_start = swa_epoch_start
        self._swa_lrs = swa_lrs
        self._annealing_epochs = annealing_epochs
        self._annealing_strategy = annealing_strategy
        self._avg_fn = avg_fn or _running_mean
        self._device = device
        self._average_model: nn.Module | None = None
        self._initialized = False
        self._swa_scheduler: Any = None
        self._scheduler_state: dict | None = None
        self._init_n_averaged = 0
        self._latest_update_epoch = -1
        self.n_averaged: Tensor | None = None
        self._max_epochs = 0

    @property
    def swa_start(self) -> int:
        return max(self._swa_epoch_start - 1, 0)  # 0-based

    @property
    def swa_end(self) -> int:
        return self._max_epochs - 1

    @staticmethod
    def pl_module_contains_batch_norm(pl_module: nn.Module) -> bool:
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in pl_module.modules())

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit" and self._average_model is None:
            self._average_model = _copy_without_trainer(pl_module)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if len(trainer.optimizers) != 1:
            raise MisconfigurationException("StochasticWeightAveraging works with one optimizer; configure_optimizers "
                                            f"returned {len(trainer.optimizers)}.")
        if len(trainer.lr_scheduler_configs) > 1:
            raise MisconfigurationException("StochasticWeightAveraging replaces at most one scheduler; "
                                            f"configure_optimizers returned {len(trainer.lr_scheduler_configs)}.")
        if trainer.max_epochs in (None, -1):
            raise MisconfigurationException("StochasticWeightAveraging needs Trainer(max_epochs=...) to know when to start.")
        self._max_epochs = trainer.max_epochs
        if isinstance(self._swa_epoch_start, float):
            self._swa_epoch_start = int(trainer.max_epochs * self._swa_epoch_start)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        epoch = trainer.current_epoch
        if not self._initialized and self.swa_start <= epoch <= self.swa_end:
            self._start_averaging(trainer, pl_module)
        if self.swa_start <= epoch <= self.swa_end and epoch > self._latest_update_epoch:
            self.update_parameters(self._average_model, pl_module, self.n_averaged, self._avg_fn)
            self._latest_update_epoch = epoch

    def _start_averaging(self, trainer: Any, pl_module: Any) -> None:
        self._initialized = True
        self._average_model = self._average_model.to(self._device or pl_module.device)
        optimizer = trainer.optimizers[0]
        lrs = self._swa_lrs if isinstance(self._swa_lrs, list) else [float(self._swa_lrs)] * len(optimizer.param_groups)
        if len(lrs) != len(optimizer.param_groups):
            raise MisconfigurationException(
                f"StochasticWeightAveraging got {len(lrs)} swa_lrs for {len(optimizer.param_groups)} parameter groups; "
                "pass one rate per group, or a single rate."
            )
        for lr, group in zip(lrs, optimizer.param_groups):
            group["initial_lr"] = lr
        self._swa_scheduler = SWALR(optimizer, swa_lr=lrs, anneal_epochs=self._annealing_epochs,
                                    anneal_strategy=self._annealing_strategy,
                                    last_epoch=trainer.max_epochs if self._annealing_strategy == "cos" else -1)
        if self._scheduler_state is not None:
            self._swa_scheduler.load_state_dict(self._scheduler_state)
        elif trainer.current_epoch != self.swa_start:
            rank_zero_warn("SWA resumes without a saved SWALR state; the annealing restarts from here.")
        config = LRSchedulerConfig(self._swa_scheduler)
        if trainer.lr_scheduler_configs:
            trainer.lr_scheduler_configs[0] = config
        else:
            trainer.lr_scheduler_configs.append(config)
        if self.n_averaged is None:
            self.n_averaged = torch.tensor(self._init_n_averaged, dtype=torch.long, device=pl_module.device)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._initialized or self._latest_update_epoch != self.swa_end:
            return  # stopped before the last SWA epoch: keep the trained weights
        self.transfer_weights(self._average_model, pl_module)
        if self.pl_module_contains_batch_norm(pl_module):
            self._update_batch_norm(trainer, pl_module)

    @staticmethod
    def update_parameters(average_model: nn.Module, model: nn.Module, n_averaged: Tensor,
                          avg_fn: Callable[[Tensor, Tensor, Tensor], Tensor]) -> None:
        """Fold ``model``'s parameters into ``average_model``'s (the first call copies them)."""
        for p_avg, p in zip(average_model.parameters(), model.parameters()):
            target = p_avg.detach()
            current = p.detach().to(target.device)
            target.copy_(current if n_averaged == 0 else avg_fn(target, current, n_averaged.to(target.device)))
        n_averaged += 1

    @staticmethod
    def transfer_weights(src: nn.Module, dst: nn.Module) -> None:
        """Copy ``src``'s parameters into ``dst``."""
        for p_src, p_dst in zip(src.parameters(), dst.parameters()):
            p_dst.detach().copy_(p_src.to(p_dst.device))

    @torch.no_grad()
    def _update_batch_norm(self, trainer: Any, pl_module: Any) -> None:
        """Recompute BatchNorm running statistics for the averaged weights: a cumulative average over one pass."""
        norms = [m for m in pl_module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = {m: m.momentum for m in norms}
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        was_training = pl_module.training
        pl_module.train()
        move = trainer.strategy.batch_to_device
        for i, batch in enumerate(trainer._train_iterable):
            if i >= trainer.num_training_batches:
                break
            batch = move(batch)
            pl_module(batch[0] if isinstance(batch, (list, tuple)) else batch)
        for m in norms:
            m.momentum = momenta[m]
        pl_module.train(was_training)

    def state_dict(self) -> dict[str, Any]:
        return {
            "n_averaged": 0 if self.n_averaged is None else int(self.n_averaged),
            "latest_update_epoch": self._latest_update_epoch,
            "scheduler_state": None if self._swa_scheduler is None else self._swa_scheduler.state_dict(),
            "average_model_state": None if self._average_model is None else self._average_model.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._init_n_averaged = state_dict["n_averaged"]
        self._latest_update_epoch = state_dict["latest_update_epoch"]
        self._scheduler_state = state_dict["scheduler_state"]
        if state_dict.get("average_model_state") is not None and self._average_model is not None:
            self._average_model.load_state_dict(state_dict["average_model_state"])
