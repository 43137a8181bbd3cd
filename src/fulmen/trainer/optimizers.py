"""Turning what ``configure_optimizers`` returns into optimizers and scheduler configs, and the
``LightningOptimizer`` wrapper that routes ``step()`` through the strategy (precision, counting)."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterator

import torch
from torch.optim import Optimizer

from fulmen._utils import rank_zero_warn
from fulmen.errors import MisconfigurationException


@dataclass
class LRSchedulerConfig:
    """One scheduler and when to step it: every ``frequency`` epochs or optimizer steps (``interval``).

    Example (the dict form ``configure_optimizers`` may return)::

        {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "monitor": "val_loss"}}
    """

    scheduler: Any
    name: str | None = None
    interval: str = "epoch"
    frequency: int = 1
    reduce_on_plateau: bool = False
    monitor: str | None = None
    strict: bool = True
    opt_idx: int | None = None


_SCHED_KEYS = {f.name for f in fields(LRSchedulerConfig)}
_HELP = (
    "Return an optimizer; a list of them; `([optimizers], [schedulers])`; a dict "
    "`{'optimizer': opt, 'lr_scheduler': sched_or_config, 'monitor': 'val_loss'}`; or a list of such dicts."
)


def _is_optimizer(obj: Any) -> bool:
    return isinstance(obj, Optimizer) or isinstance(getattr(obj, "optimizer", None), Optimizer) and hasattr(obj, "step")


def _scheduler_config(item: Any, monitor: str | None) -> LRSchedulerConfig:
    if isinstance(item, dict):
        if "scheduler" not in item:
            raise MisconfigurationException(
                f"A learning-rate scheduler config needs a 'scheduler' key; got keys {sorted(item)}. "
                "Write {'scheduler': sched, 'interval': 'epoch'}."
            )
        if unknown := set(item) - _SCHED_KEYS:
            raise MisconfigurationException(
                f"Unknown key(s) {sorted(unknown)} in the lr_scheduler config; allowed are {sorted(_SCHED_KEYS - {'opt_idx', 'reduce_on_plateau'})}."
            )
        cfg = LRSchedulerConfig(**{"monitor": monitor, **item})
    else:
        cfg = LRSchedulerConfig(scheduler=item, monitor=monitor)
    if cfg.interval not in ("step", "epoch"):
        raise MisconfigurationException(
            f"lr_scheduler interval={cfg.interval!r} is not known; use 'step' (every optimizer step) or 'epoch'."
        )
    if not isinstance(cfg.frequency, int) or cfg.frequency < 1:
        raise MisconfigurationException(f"lr_scheduler frequency must be a positive integer, got {cfg.frequency!r}.")
    cfg.reduce_on_plateau = isinstance(cfg.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    if cfg.reduce_on_plateau and cfg.monitor is None:
        raise MisconfigurationException(
            "A ReduceLROnPlateau scheduler needs the metric to watch. Return "
            "{'optimizer': opt, 'lr_scheduler': sched, 'monitor': 'val_loss'} from configure_optimizers."
        )
    if not hasattr(cfg.scheduler, "step"):
        raise MisconfigurationException(f"{type(cfg.scheduler).__name__} has no `step()`, so it is not a scheduler.")
    return cfg


def parse_optimizers(returned: Any) -> tuple[list[Optimizer], list[LRSchedulerConfig]]:
    """Split ``configure_optimizers``' return value into optimizers and scheduler configs.

    Example::

        opts, scheds = parse_optimizers(([opt], [torch.optim.lr_scheduler.StepLR(opt, 10)]))
    """
    if returned is None:
        rank_zero_warn("`configure_optimizers` returned None: this fit runs without an optimizer.")
        return [], []
    configs: list[LRSchedulerConfig] = []
    if _is_optimizer(returned):
        optimizers = [returned]
    elif isinstance(returned, dict):
        optimizers, configs = _from_dicts([returned])
    elif isinstance(returned, (list, tuple)) and returned and all(isinstance(x, dict) for x in returned):
        optimizers, configs = _from_dicts(list(returned))
    elif (isinstance(returned, (list, tuple)) and len(returned) == 2 and isinstance(returned[0], (list, tuple))
          and isinstance(returned[1], (list, tuple))):
        optimizers = list(returned[0])
        configs = [_scheduler_config(s, None) for s in returned[1]]
    elif isinstance(returned, (list, tuple)) and returned and all(_is_optimizer(x) for x in returned):
        optimizers = list(returned)
    else:
        raise MisconfigurationException(
            f"configure_optimizers returned {type(returned).__name__} {returned!r:.200}, which is not usable. " + _HELP
        )
    if bad := [o for o in optimizers if not _is_optimizer(o)]:
        raise MisconfigurationException(
            f"configure_optimizers returned {type(bad[0]).__name__}, which is not a torch.optim.Optimizer. " + _HELP
        )
    for cfg in configs:
        owner = getattr(cfg.scheduler, "optimizer", None)
        if cfg.opt_idx is None and owner is not None:
            cfg.opt_idx = next((i for i, o in enumerate(optimizers) if o is owner), None)
    return optimizers, configs


def step_scheduler(trainer: Any, cfg: LRSchedulerConfig) -> None:
    """Step one scheduler through ``LightningModule.lr_scheduler_step`` (ReduceLROnPlateau: with its metric)."""
    metric = None
    if cfg.reduce_on_plateau:
        available = trainer.callback_metrics
        metric = available.get(cfg.monitor)
        if metric is None:
            if cfg.strict:
                raise MisconfigurationException(
                    f"ReduceLROnPlateau watches '{cfg.monitor}', which was not logged. Logged keys: {sorted(available)}. "
                    "Log it with self.log, change 'monitor', or set 'strict': False to skip the step."
                )
            rank_zero_warn(f"ReduceLROnPlateau watches '{cfg.monitor}', which was not logged; skipping its step.")
            return
    with trainer._metrics.hook("lr_scheduler_step"):
        trainer.lightning_module.lr_scheduler_step(cfg.scheduler, metric)


def _from_dicts(items: list[dict]) -> tuple[list[Optimizer], list[LRSchedulerConfig]]:
    optimizers, configs = [], []
    for item in items:
        unknown = set(item) - {"optimizer", "lr_scheduler", "monitor"}
        if "optimizer" not in item or unknown:
            raise MisconfigurationException(
                f"configure_optimizers returned a dict with keys {sorted(item)}; it needs 'optimizer' and may have "
                "'lr_scheduler' and 'monitor'. " + _HELP
            )
        optimizers.append(item["optimizer"])
        if item.get("lr_scheduler") is not None:
            configs.append(_scheduler_config(item["lr_scheduler"], item.get("monitor")))
    return optimizers, configs


def setup_optimizers(trainer: Any, module: Any) -> None:
    """Call ``configure_optimizers`` and hand the optimizers to the strategy; fail early on flags that
    automatic optimization needs when the module steps by hand."""
    if not module.automatic_optimization:
        for what, flag, value, default, instead in (
            ("accumulation", "accumulate_grad_batches", trainer.accumulate_grad_batches, 1,
             "step every N batches in training_step"),
            ("clipping", "gradient_clip_val", trainer.gradient_clip_val, None,
             "call self.clip_gradients(opt, ...) before opt.step()"),
        ):
            if value not in (default, 0):
                raise MisconfigurationException(
                    f"`Trainer({flag}={value!r})` asks for automatic gradient {what}, but {type(module).__name__} "
                    f"sets automatic_optimization=False and steps its optimizers itself: drop the flag and "
                    f"{instead}, or switch back to automatic optimization."
                )
    trainer._metrics.current = None
    optimizers, configs = parse_optimizers(trainer._call_module("configure_optimizers"))
    if len(optimizers) > 1 and module.automatic_optimization:
        raise MisconfigurationException(
            f"configure_optimizers returned {len(optimizers)} optimizers. Several optimizers need manual "
            "optimization: set `self.automatic_optimization = False` in __init__ and step them in training_step "
            "(`opt_g, opt_d = self.optimizers()`)."
        )
    trainer.optimizers = trainer.strategy.setup_optimizers(optimizers)
    trainer.lr_scheduler_configs = configs
    trainer._lightning_optimizers = [LightningOptimizer(o, trainer) for o in trainer.optimizers]


class LightningOptimizer:
    """An optimizer whose ``step()`` goes through the Trainer: precision scaling, the
    ``on_before_optimizer_step`` hooks, gradient clipping, and step counting. Everything else
    (``param_groups``, ``state``, ``zero_grad`` ...) is the wrapped optimizer's own.

    Constructed by itself (``LightningOptimizer(optimizer)``, no Trainer), ``step()`` is the optimizer's own.

    Example (manual optimization)::

        opt = self.optimizers()
        self.manual_backward(loss)
        opt.step()
        opt.zero_grad()
    """

    def __init__(self, optimizer: Optimizer, trainer: Any = None) -> None:
        object.__setattr__(self, "_optimizer", optimizer)  # this class's setattr goes to the optimizer
        object.__setattr__(self, "_trainer", trainer)
        self._set_step_hooks(None, None)

    @property
    def optimizer(self) -> Optimizer:
        return self._optimizer

    def __getattr__(self, name: str) -> Any:
        if name == "_optimizer":  # asked before __init__/__setstate__ filled __dict__ (copy, pickle)
            raise AttributeError(name)
        return getattr(self._optimizer, name)

    def __getstate__(self) -> dict[str, Any]:
        # the step hooks are closures over this run's loop, rebuilt by the next run; they do not pickle
        return {**self.__dict__, "_on_before_step": None, "_on_after_step": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._optimizer, name, value)

    def __repr__(self) -> str:
        return f"LightningOptimizer({self._optimizer!r})"

    def _set_step_hooks(self, before: Callable[[], None] | None, after: Callable[[], None] | None) -> None:
        """What the loop runs around ``step()``: ``before`` between the closure and the optimizer step (the
        hooks, clipping), ``after`` once it is taken (counting the step). Set once per epoch."""
        object.__setattr__(self, "_on_before_step", before)
        object.__setattr__(self, "_on_after_step", after)

    def step(self, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        """Take an optimizer step through the Trainer's strategy; ``closure`` recomputes the loss (LBFGS)."""
        trainer = self._trainer
        if trainer is None:  # standalone: nothing to route through
            return self._optimizer.step(closure, **kwargs) if closure is not None else self._optimizer.step(**kwargs)
        out = trainer.strategy.optimizer_step(self._optimizer, closure, trainer.lightning_module,
                                              self._on_before_step, **kwargs)
        if self._on_after_step is not None:
            self._on_after_step()
        return out

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._optimizer.zero_grad(set_to_none=set_to_none)

    @contextmanager
    def toggle_model(self, sync_grad: bool = True) -> Iterator[None]:
        """Context in which only this optimizer's parameters get gradients. With ``sync_grad=False`` the backward
        run inside it also skips the gradient sync between processes: accumulate in manual optimization and sync
        only on the batch that steps.

        Example::

            def training_step(self, batch, batch_idx):
                opt = self.optimizers()
                stepping = (batch_idx + 1) % 2 == 0
                with opt.toggle_model(sync_grad=stepping):
                    self.manual_backward(self.loss(batch) / 2)
                if stepping:
                    opt.step()
                    opt.zero_grad()
        """
        module = self._trainer.lightning_module
        no_sync = None if sync_grad else self._trainer.strategy.no_backward_sync()
        with no_sync() if no_sync is not None else nullcontext():
            module.toggle_optimizer(self)
            try:
                yield
            finally:
                module.untoggle_optimizer(self)
