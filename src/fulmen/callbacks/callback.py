"""The ``Callback`` base class: every hook the Trainer calls, each a no-op until overridden.

The Trainer looks once per run at which hooks a callback overrides and calls only those, so a
callback costs nothing in the loop for the hooks it leaves alone.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.optim import Optimizer


class Callback:
    """Code that runs at fixed points of training, kept out of the LightningModule.

    Example::

        class PrintLoss(fulmen.Callback):
            def on_train_epoch_end(self, trainer, pl_module):
                print(trainer.current_epoch, trainer.callback_metrics.get("train_loss"))

        trainer = fulmen.Trainer(callbacks=[PrintLoss()])
    """

    @property
    def state_key(self) -> str:
        """The key of this callback's entry in a checkpoint; unique per class and distinguishing arguments."""
        return self.__class__.__qualname__

    def _generate_state_key(self, **kwargs: Any) -> str:
        """A state key that tells apart several instances of one class, e.g. two ModelCheckpoints."""
        return f"{self.__class__.__qualname__}{repr(kwargs)}"

    # -- set-up and tear-down -------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """At the start of fit, validate, test or predict, after the module's ``prepare_data``."""

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """At the end of fit, validate, test or predict."""

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """When fit begins, after set-up and before the sanity check."""

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        """When fit ends."""

    def on_sanity_check_start(self, trainer: Any, pl_module: Any) -> None:
        """Before the validation batches run as a sanity check at the start of fit."""

    def on_sanity_check_end(self, trainer: Any, pl_module: Any) -> None:
        """After the sanity check."""

    # -- training -------------------------------------------------------------------------------
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """When the training loop begins."""

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """When the training loop ends."""

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        """At the start of each training epoch."""

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """At the end of each training epoch, after the epoch's validation if any."""

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        """Before ``training_step``, with the batch already on the device."""

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """After the optimizer step of a batch; ``outputs`` is what ``training_step`` returned."""

    # -- evaluation and prediction --------------------------------------------------------------
    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        """When a validation run begins."""

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        """When a validation run ends."""

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        """At the start of a validation epoch."""

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """At the end of a validation epoch."""

    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        """Before ``validation_step``."""

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        """After ``validation_step``."""

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        """When a test run begins."""

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        """When a test run ends."""

    def on_test_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        """At the start of the test epoch."""

    def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """At the end of the test epoch."""

    def on_test_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        """Before ``test_step``."""

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        """After ``test_step``."""

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        """When a predict run begins."""

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        """When a predict run ends."""

    def on_predict_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        """At the start of the predict epoch."""

    def on_predict_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """At the end of the predict epoch."""

    def on_predict_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                               dataloader_idx: int = 0) -> None:
        """Before ``predict_step``."""

    def on_predict_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        """After ``predict_step``; ``outputs`` is the prediction."""

    # -- optimization ---------------------------------------------------------------------------
    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Tensor) -> None:
        """Before ``loss.backward()``."""

    def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
        """After ``loss.backward()``, before the optimizer step."""

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Optimizer) -> None:
        """Before ``optimizer.step()``, with gradients unscaled when mixed precision scales them."""

    def on_before_zero_grad(self, trainer: Any, pl_module: Any, optimizer: Optimizer) -> None:
        """Before ``optimizer.zero_grad()``."""

    # -- errors and state -----------------------------------------------------------------------
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """When fit, validate, test or predict raises, including KeyboardInterrupt."""

    def state_dict(self) -> dict[str, Any]:
        """What this callback needs to resume; saved in checkpoints under ``state_key``."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        """When a checkpoint is written; may add to ``checkpoint``."""

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        """When a checkpoint is restored, before ``load_state_dict``."""


CALLBACK_HOOKS = tuple(
    name for name, value in vars(Callback).items() if callable(value) and not name.startswith("_")
    and name not in ("state_dict", "load_state_dict")
)
