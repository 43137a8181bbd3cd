"""``GradientAccumulationScheduler``: change ``accumulate_grad_batches`` as epochs go by."""

from __future__ import annotations

from typing import Any

from fulmen._utils import is_overridden, rank_zero_warn
from fulmen.callbacks.callback import Callback
from fulmen.errors import MisconfigurationException


class GradientAccumulationScheduler(Callback):
    """Accumulate gradients over a number of batches that depends on the epoch.

    ``scheduling`` maps the first epoch (from 0) of each phase to its accumulation factor; before the first
    key the factor is 1.

    Args:
        scheduling: First epoch of each phase (from 0) -> how many batches to accumulate from that epoch on.

    Example::

        # epochs 0-3: every batch steps; 4-7: every 2 batches; 8 on: every 4
        fulmen.Trainer(callbacks=[GradientAccumulationScheduler({4: 2, 8: 4})])
    """

    def __init__(self, scheduling: dict[int, int]) -> None:
        if not scheduling:
            raise MisconfigurationException("GradientAccumulationScheduler needs a schedule, e.g. {4: 2, 8: 4}.")
        for epoch, factor in scheduling.items():
            if not isinstance(epoch, int) or epoch < 0:
                raise MisconfigurationException(
                    f"GradientAccumulationScheduler: epoch key {epoch!r} must be an integer >= 0 (epochs count from 0)."
                )
            if not isinstance(factor, int) or factor < 1:
                raise MisconfigurationException(
                    f"GradientAccumulationScheduler: factor {factor!r} for epoch {epoch} must be an integer >= 1."
                )
        self.scheduling = dict(sorted({0: 1, **scheduling}.items()))  # before the first phase: no accumulation
        self.epochs = sorted(self.scheduling)

    def going_to_accumulate_grad_batches(self) -> bool:
        """Whether any phase accumulates over more than one batch."""
        return any(v > 1 for v in self.scheduling.values())

    def get_accumulate_grad_batches(self, epoch: int) -> int:
        """The factor for ``epoch``."""
        return self.scheduling[max(e for e in self.epochs if e <= epoch)]

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not pl_module.automatic_optimization:
            raise MisconfigurationException(
                "GradientAccumulationScheduler works with automatic optimization only; with manual optimization "
                "accumulate in training_step yourself."
            )
        from fulmen.module import LightningModule

        overridden = [h for h in ("optimizer_step", "optimizer_zero_grad") if is_overridden(h, pl_module, LightningModule)]
        if overridden and any(factor > 1 for factor in self.scheduling.values()):
            rank_zero_warn(
                "When using `Trainer(accumulate_grad_batches != 1)` and overriding `LightningModule.optimizer_{step,"
                "zero_grad}`, the hooks will not be called on every batch (rather, they are called on every "
                f"optimization step). {type(pl_module).__name__} overrides {', '.join(overridden)}."
            )
        if trainer.accumulate_grad_batches != 1:
            raise MisconfigurationException(
                f"Trainer(accumulate_grad_batches={trainer.accumulate_grad_batches}) and a GradientAccumulationScheduler "
                "both set accumulation; keep only the scheduler."
            )

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        trainer.accumulate_grad_batches = self.get_accumulate_grad_batches(trainer.current_epoch)
