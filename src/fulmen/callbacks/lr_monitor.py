"""``LearningRateMonitor``: log each optimizer's learning rate (and optionally momentum, weight decay)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from fulmen._utils import rank_zero_warn
from fulmen.callbacks.callback import Callback
from fulmen.errors import MisconfigurationException
from fulmen.trainer.state import logging_due


class LearningRateMonitor(Callback):
    """Send the learning rates to the loggers as ``lr-<Optimizer>`` (``/pg1``, ``/pg2``... per parameter group,
    ``-1``, ``-2``... for further optimizers of one type, or the scheduler's ``name``).

    With ``logging_interval=None`` a scheduler's rate is logged when it steps ("step" or "epoch" interval),
    and optimizers without a scheduler at both; ``"step"`` or ``"epoch"`` forces one. ``log_momentum`` adds
    ``<name>-momentum`` (``betas[0]`` for Adam-like optimizers), ``log_weight_decay`` adds ``<name>-weight_decay``.
    ``lrs`` keeps every rate logged; ``last_momentum_values`` and ``last_weight_decay_values`` the latest others.

    Args:
        logging_interval: "step", "epoch", or None to follow each scheduler's own interval.
        log_momentum: Also log each group's momentum (Adam's ``betas[0]``).
        log_weight_decay: Also log each group's weight decay.

    Example::

        trainer = fulmen.Trainer(callbacks=[LearningRateMonitor(logging_interval="step")], logger=CSVLogger("logs"))
    """

    def __init__(self, logging_interval: str | None = None, log_momentum: bool = False,
                 log_weight_decay: bool = False) -> None:
        if logging_interval not in (None, "step", "epoch"):
            raise MisconfigurationException(
                f"LearningRateMonitor(logging_interval={logging_interval!r}): use 'step', 'epoch' or None."
            )
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay
        self.lrs: dict[str, list[float]] = {}
        #: the latest momentum / weight decay logged per name (``<name>-momentum``), None before the first
        self.last_momentum_values: dict[str, float | None] = {}
        self.last_weight_decay_values: dict[str, float | None] = {}

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.loggers:
            raise MisconfigurationException(
                "LearningRateMonitor has nothing to log to: the Trainer has logger=False. Pass a logger, e.g. "
                "Trainer(logger=CSVLogger('logs')), or drop the callback."
            )
        if self.log_momentum and any(
            "momentum" not in o.defaults and "betas" not in o.defaults for o in trainer.optimizers
        ):  # Lightning's warning, word for word: scripts filter on it
            rank_zero_warn("You have set log_momentum=True, but some optimizers do not have momentum. This will log a "
                           "value 0 for the momentum.")
        names = self._names(trainer)[0]
        self.lrs = {name: [] for name in names}
        self.last_momentum_values = {f"{name}-momentum": None for name in names}
        self.last_weight_decay_values = {f"{name}-weight_decay": None for name in names}

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.logging_interval == "epoch":
            return
        if logging_due(trainer._loop.batches_stepped + 1, trainer.log_every_n_steps) or trainer.should_stop:
            self._log(trainer, "step" if self.logging_interval is None else "any")

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self.logging_interval != "step":
            self._log(trainer, "epoch" if self.logging_interval is None else "any")

    # -- helpers ----------------------------------------------------------------------------------------
    def _names(self, trainer: Any) -> tuple[list[str], list[tuple[Any, list[str], str | None]]]:
        """Every logged name, and per optimizer: (optimizer, names per param group, scheduler interval)."""
        counts: Counter = Counter()
        entries: list[tuple[Any, list[str], str | None]] = []
        for cfg in trainer.lr_scheduler_configs:
            opt = cfg.scheduler.optimizer
            if cfg.name is None:
                counts[type(opt)] += 1
            base = cfg.name or f"lr-{type(opt).__name__}"
            entries.append((opt, self._group_names(opt, base, counts, cfg.name is None), cfg.interval))
        for opt in trainer.optimizers:
            if any(opt is cfg.scheduler.optimizer for cfg in trainer.lr_scheduler_configs):
                continue
            counts[type(opt)] += 1
            entries.append((opt, self._group_names(opt, f"lr-{type(opt).__name__}", counts, True), None))
        return [n for _, names, _ in entries for n in names], entries

    @staticmethod
    def _group_names(opt: Any, base: str, counts: Counter, numbered: bool) -> list[str]:
        if numbered and counts[type(opt)] > 1:
            base = f"{base}-{counts[type(opt)] - 1}"
        groups = opt.param_groups
        names = [g.get("name") for g in groups]
        given = [n for n in names if n is not None]
        if len(given) != len(set(given)):
            raise MisconfigurationException(
                f"{type(opt).__name__} has parameter groups with the same 'name' ({given}); give each a unique name."
            )
        if len(groups) == 1:
            return [f"{base}/{names[0]}" if names[0] else base]
        return [f"{base}/{n or f'pg{i + 1}'}" for i, n in enumerate(names)]

    def _log(self, trainer: Any, interval: str) -> None:
        stats: dict[str, float] = {}
        for opt, names, sched_interval in self._names(trainer)[1]:
            if sched_interval is not None and interval not in (sched_interval, "any"):
                continue
            betas = "betas" in opt.defaults
            for group, name in zip(opt.param_groups, names):
                stats[name] = float(group["lr"])
                self.lrs.setdefault(name, []).append(stats[name])
                if self.log_momentum:
                    stats[f"{name}-momentum"] = float(group["betas"][0] if betas else group.get("momentum", 0))
                    self.last_momentum_values[f"{name}-momentum"] = stats[f"{name}-momentum"]
                if self.log_weight_decay:
                    stats[f"{name}-weight_decay"] = float(group.get("weight_decay", 0))
                    self.last_weight_decay_values[f"{name}-weight_decay"] = stats[f"{name}-weight_decay"]
        if not stats:
            return
        device = trainer.strategy.root_device
        trainer.callback_metrics.update({k: torch.tensor(v, device=device) for k, v in stats.items()})
        for logger in trainer.loggers:
            logger.log_metrics(stats, step=trainer._loop.batches_stepped)
