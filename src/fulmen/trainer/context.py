"""``RunContext``: what the loops need from the Trainer, resolved once per run.

The loops take this instead of reaching into the Trainer's private attributes: the objects a run works
with (module, strategy, loop state, metrics, callback hooks) and the few values the loops own while it
runs (when validation last ran, the validation loaders). What users may change while a run goes on
(``trainer.max_epochs``, ``trainer.accumulate_grad_batches`` ...) is read from ``trainer`` where it is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

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

    trainer: Any  # the Trainer: hooks receive it; its public flags are read where used (trainer.py imports this)
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
    first_epoch: bool = True  # until the fit's first training epoch has made its data iterator

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
