"""``EarlyStopping``: stop fit when a monitored metric stops improving (or crosses a threshold)."""

from __future__ import annotations

import logging
from enum import Enum
from typing import Any

import torch
from torch import Tensor

from fulmen._utils import rank_zero_warn
from fulmen.callbacks.callback import Callback
from fulmen.errors import MisconfigurationException, MonitorNotFoundError
from fulmen.trainer.state import TrainerFn

# under "fulmen", named like Lightning's module logger, so that a test or handler reading that name finds it
_log = logging.getLogger("fulmen.callbacks.early_stopping")


class EarlyStoppingReason(Enum):
    """Why ``EarlyStopping`` stopped the run: ``early_stopping.stopping_reason``.

    Example::

        early_stopping = EarlyStopping(monitor="val_loss", patience=3)
        trainer = fulmen.Trainer(callbacks=[early_stopping])
        trainer.fit(model, train_loader, val_loader)
        if early_stopping.stopping_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED:
            print(early_stopping.stopping_reason_message)
    """

    NOT_STOPPED = 0
    STOPPING_THRESHOLD = 1
    DIVERGENCE_THRESHOLD = 2
    PATIENCE_EXHAUSTED = 3
    NON_FINITE_METRIC = 4


class EarlyStopping(Callback):
    """Stop training once ``monitor`` has not improved by more than ``min_delta`` for ``patience`` checks.

    A check runs after each validation (or, with ``check_on_train_epoch_end=True`` or when validation runs
    once per epoch, at the end of each training epoch). It also stops at once when the metric is not finite
    (``check_finite``), better than ``stopping_threshold`` or worse than ``divergence_threshold``. The Trainer
    honours ``min_epochs``/``min_steps`` before stopping. ``strict=False`` skips checks where the metric is missing
    instead of raising.

    Args:
        monitor: Logged metric to watch.
        min_delta: Smallest change that counts as an improvement.
        patience: How many checks in a row without improvement end training.
        verbose: Log each improvement and the reason for stopping.
        mode: "min" or "max": whether a lower or a higher ``monitor`` is better.
        strict: Raise when ``monitor`` was not logged; False skips the check instead.
        check_finite: Stop at once when the metric becomes NaN or infinite.
        stopping_threshold: Stop at once when the metric is better than this value.
        divergence_threshold: Stop at once when the metric is worse than this value.
        check_on_train_epoch_end: Check at the end of each training epoch instead of after validation. None: decided
            from the run.
        log_rank_zero_only: Log the stopping reason on global rank 0 only.

    Example::

        early = EarlyStopping(monitor="val_loss", patience=3, mode="min", min_delta=1e-3)
        trainer = fulmen.Trainer(callbacks=[early], max_epochs=100)
        trainer.fit(model, train_loader, val_loader)
        early.stopped_epoch, early.stopping_reason
    """

    _runs_after_module_epoch_end = True
    mode_dict = {"min": torch.lt, "max": torch.gt}
    order_dict = {"min": "<", "max": ">"}

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: str = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
        log_rank_zero_only: bool = False,
    ) -> None:
        if mode not in self.mode_dict:
            # Lightning's words first: code and tests match on them
            raise MisconfigurationException(
                f"`mode` can be {', '.join(self.mode_dict)}, got {mode}. Use mode='min' or mode='max'."
            )
        self.monitor = monitor
        self.patience = patience
        self.verbose = verbose
        self.mode = mode
        self.strict = strict
        self.check_finite = check_finite
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self.log_rank_zero_only = log_rank_zero_only
        self._check_on_train_epoch_end = check_on_train_epoch_end
        # stored signed: an improvement must beat best_score by min_delta in the mode's direction
        self.min_delta = min_delta if mode == "max" else -min_delta
        self.best_score = torch.tensor(float("inf") if mode == "min" else float("-inf"))
        self.wait_count = 0
        self.stopped_epoch = 0
        self.stopping_reason = EarlyStoppingReason.NOT_STOPPED
        self.stopping_reason_message: str | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    @property
    def monitor_op(self) -> Any:
        return self.mode_dict[self.mode]

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self._check_on_train_epoch_end is None:
            # check where the metric is freshest: at epoch end when validation runs once per epoch
            self._check_on_train_epoch_end = trainer.val_check_interval == 1.0 and trainer.check_val_every_n_epoch == 1

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._check_on_train_epoch_end and not self._skip(trainer):
            self._run_early_stopping_check(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._check_on_train_epoch_end and not self._skip(trainer):
            self._run_early_stopping_check(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {
            "wait_count": self.wait_count, "stopped_epoch": self.stopped_epoch, "best_score": self.best_score,
            "patience": self.patience, "stopping_reason": self.stopping_reason.value,
            "stopping_reason_message": self.stopping_reason_message,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wait_count = state_dict["wait_count"]
        self.stopped_epoch = state_dict["stopped_epoch"]
        self.best_score = state_dict["best_score"]
        self.patience = state_dict["patience"]
        self.stopping_reason = EarlyStoppingReason(state_dict.get("stopping_reason", 0))
        self.stopping_reason_message = state_dict.get("stopping_reason_message")

    # -- the check ----------------------------------------------------------------------------------
    @staticmethod
    def _skip(trainer: Any) -> bool:
        return trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking

    def _validate_condition_metric(self, logs: dict[str, Tensor]) -> bool:
        if logs.get(self.monitor) is not None:
            return True
        # Lightning's words first (code and tests match on them), then how to fix it
        message = (
            f"Early stopping conditioned on metric `{self.monitor}` which is not available. Pass in or modify your "
            f"`EarlyStopping` callback to use any of the following: `{'`, `'.join(logs)}`. Log it with "
            f"`self.log({self.monitor!r}, value)`, or pass strict=False to skip checks where it is missing."
        )
        if self.strict:
            raise MonitorNotFoundError(message)
        if self.verbose:
            rank_zero_warn(message, RuntimeWarning)
        return False

    def _run_early_stopping_check(self, trainer: Any) -> None:
        logs = trainer.callback_metrics
        if trainer.fast_dev_run or not self._validate_condition_metric(logs):
            return
        current = logs[self.monitor].squeeze()
        should_stop, reason = self._evaluate_stopping_criteria(current)
        should_stop = trainer.strategy.reduce_boolean_decision(should_stop, all=False)
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop:
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason_message = reason
        if reason and self.verbose:
            prefix = f"[rank: {trainer.global_rank}] " if trainer.world_size > 1 else ""
            if trainer.is_global_zero or not self.log_rank_zero_only:
                _log.info(prefix + reason)

    def _evaluate_stopping_criteria(self, current: Tensor) -> tuple[bool, str | None]:
        sign = self.order_dict[self.mode]
        if self.check_finite and not torch.isfinite(current):
            self.stopping_reason = EarlyStoppingReason.NON_FINITE_METRIC
            return True, (f"EarlyStopping ends the run: {self.monitor} is {current}, not a finite number (best so "
                          f"far {float(self.best_score):.3f}).")
        if self.stopping_threshold is not None and self.monitor_op(current, self.stopping_threshold):
            self.stopping_reason = EarlyStoppingReason.STOPPING_THRESHOLD
            return True, (f"EarlyStopping ends the run: {self.monitor} = {current} {sign} {self.stopping_threshold}, "
                          "its stopping_threshold.")
        if self.divergence_threshold is not None and self.monitor_op(-current, -self.divergence_threshold):
            self.stopping_reason = EarlyStoppingReason.DIVERGENCE_THRESHOLD
            return True, (f"EarlyStopping ends the run: {self.monitor} = {current} {sign} "
                          f"{self.divergence_threshold}, past its divergence_threshold.")
        if self.monitor_op(current - self.min_delta, self.best_score.to(current.device)):
            if torch.isfinite(self.best_score):
                reason = (f"{self.monitor} improved to {float(current):.3f} (by "
                          f"{float(abs(self.best_score - current)):.3f}; min_delta {abs(self.min_delta)})")
            else:
                reason = f"{self.monitor} improved to {float(current):.3f}"
            self.best_score = current
            self.wait_count = 0
            return False, reason
        self.wait_count += 1
        if self.wait_count >= self.patience:
            self.stopping_reason = EarlyStoppingReason.PATIENCE_EXHAUSTED
            return True, (f"EarlyStopping ends the run: {self.monitor} has not improved in {self.wait_count} checks "
                          f"(best {float(self.best_score):.3f}).")
        return False, None
