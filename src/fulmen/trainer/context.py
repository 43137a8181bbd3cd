"""``RunContext``: what the loops need from the Trainer, resolved once per run; ``EpochPlan``: what one
training epoch will do, decided before its first batch.

The loops take this instead of reaching into the Trainer's private attributes: the objects a run works
with (module, strategy, loop state, metrics, callback hooks) and the few values the loops own while it
runs (when validation last ran, the validation loaders). What users may change while a run goes on
(``trainer.max_epochs``, ``trainer.accumulate_grad_batches`` ...) is read from ``trainer`` where it is used.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from fulmen._utils import rank_zero_info
from fulmen.trainer.optimizers import LRSchedulerConfig
from fulmen.trainer.state import LoopState

if TYPE_CHECKING:
    from fulmen.module import LightningModule
    from fulmen.profilers.profiler import Profiler
    from fulmen.strategies.strategy import Strategy
    from fulmen.trainer.logging import MetricsHub


@dataclass(eq=False)
class RunContext:
    """One run's Trainer, as the loops see it.

    Example (what a search inside fit does to run training epochs of its own)::

        ctx = RunContext.of(trainer)
        loops.train_epoch(ctx)
    """

    trainer: Any  # hooks receive it; its public flags are read where used (not typed: trainer.py imports this)
    module: LightningModule
    strategy: Strategy
    loop: LoopState
    metrics: MetricsHub
    profiler: Profiler
    hooks: dict[str, list[Callable[..., Any]]]  # callbacks' overridden hooks by name: an empty list costs nothing
    monitoring_epoch_end: list[Callable[..., Any]]  # checkpointing, early stopping: after the module's epoch end
    call_hooks: Callable[..., Any]  # callbacks' hook, then the module's
    call_callbacks: Callable[..., None]
    call_module: Callable[..., Any]
    preemption: Any  # trainer/signals.Preemption while fitting, else None
    given_val_loaders: Any
    given_eval_loaders: Any
    verbose: bool
    return_predictions: bool
    # owned by the loops while the run goes on
    start_time: float = 0.0  # time.monotonic() when the run started: max_time counts from here
    last_val_time: float = 0.0  # when validation last ended (a time-based val_check_interval)
    val_loaders: list[Any] | None = None  # set up at the first validation of a fit
    first_epoch: bool = False  # set by fit: until its first training epoch has made its data iterator

    @classmethod
    def of(cls, trainer: Any) -> RunContext:
        return cls(
            trainer=trainer, module=trainer.lightning_module, strategy=trainer.strategy, loop=trainer._loop,
            metrics=trainer._metrics, profiler=trainer.profiler, hooks=trainer._hooks,
            monitoring_epoch_end=trainer._monitoring_epoch_end, call_hooks=trainer._call_hooks,
            call_callbacks=trainer._call_callbacks, call_module=trainer._call_module,
            preemption=trainer._preemption, given_val_loaders=trainer._given_val_loaders,
            given_eval_loaders=trainer._given_eval_loaders, verbose=trainer._verbose,
            return_predictions=trainer._return_predictions,
        )

    def can_stop_early(self) -> bool:
        """Whether ``min_epochs`` and ``min_steps`` let a requested stop happen now."""
        trainer, loop = self.trainer, self.loop
        return (trainer.min_epochs is None or loop.epoch >= trainer.min_epochs) and (
            trainer.min_steps is None or loop.global_step >= trainer.min_steps
        )

    def time_is_up(self) -> bool:
        """Whether ``max_time`` has passed (said on the "fulmen" logger, as Lightning says it)."""
        trainer = self.trainer
        if trainer.max_time is None:
            return False
        up = time.monotonic() - self.start_time >= trainer.max_time
        # every process must stop at the same batch, whatever its own clock says
        if trainer.world_size > 1:
            up = self.strategy.reduce_boolean_decision(up, all=False)
        if up:
            from datetime import timedelta

            elapsed = timedelta(seconds=int(time.monotonic() - self.start_time))
            rank_zero_info(f"max_time ends the run after {elapsed}.")
        return up


class EpochPlan:
    """What one training epoch will do, decided before its first batch (after ``on_train_epoch_start``, where
    callbacks may change the flags): the batch loop reads the answers.

    Validation inside the epoch: a batch count (``val_check_batch``, from ``val_check_interval``, counted in
    the epoch or across epochs when ``check_val_every_n_epoch`` is None) or a clock (``val_check_seconds``),
    in the epochs ``check_val_every_n_epoch`` allows. Schedulers step by their interval and frequency.

    Example::

        plan = EpochPlan(ctx)
        if plan.val_due(batch_idx, loop.total_batches, is_last): ...
    """

    def __init__(self, ctx: RunContext) -> None:
        trainer, automatic, epoch = ctx.trainer, ctx.module.automatic_optimization, ctx.loop.epoch
        every_epoch = trainer.check_val_every_n_epoch
        # batches per accumulation window (manual optimization accumulates in training_step: 1)
        self.accumulate: int = trainer.accumulate_grad_batches if automatic else 1
        self.log_every: int = trainer.log_every_n_steps
        self.validate: bool = trainer._enable_validation and (every_epoch is None or (epoch + 1) % every_epoch == 0)
        self.val_check_batch: float = trainer._val_check_batch
        self.val_check_seconds: float | None = trainer._val_check_seconds
        self.count_across_epochs = every_epoch is None  # the interval counts all the fit's batches
        self.max_steps: int = trainer.max_steps
        self.max_time: float | None = trainer.max_time
        configs: list[LRSchedulerConfig] = trainer.lr_scheduler_configs if automatic else []
        due = [c for c in configs if c.interval == "step" or (epoch + 1) % c.frequency == 0]  # frequency: epochs
        # interval="step": after the optimizer step; ReduceLROnPlateau's after the batch's validation
        self.step_schedulers = [c for c in due if c.interval == "step" and not c.reduce_on_plateau]
        self.plateau_step = [c for c in due if c.interval == "step" and c.reduce_on_plateau]
        # interval="epoch": after the epoch's last batch; ReduceLROnPlateau's after the epoch-end hooks
        self.epoch_schedulers = [c for c in due if c.interval == "epoch" and not c.reduce_on_plateau]
        self.plateau_epoch = [c for c in due if c.interval == "epoch" and c.reduce_on_plateau]

    def val_due(self, batch_idx: int, total_batches: int, is_last: bool) -> bool:
        """Whether the batch interval puts a validation after this batch. A finite interval alone decides
        (the last batch validates only when it falls on it), as in Lightning; a clock is read after the
        batch-end hooks (``val_on_clock``)."""
        if not self.validate or self.val_check_seconds is not None:
            return False
        if math.isinf(self.val_check_batch):
            return is_last
        return (total_batches if self.count_across_epochs else batch_idx + 1) % self.val_check_batch == 0

    def val_on_clock(self, ctx: RunContext) -> bool:
        """A time-based interval: whether that long has passed since the last validation (the epoch's end
        included: only the clock decides, as in Lightning)."""
        return self.validate and time.monotonic() - ctx.last_val_time >= self.val_check_seconds
