"""``ProgressBar``: the base of progress bars (batch totals, metrics to show, on/off).

A bar reads ``trainer.progress_bar_metrics`` (which turns logged tensors into numbers, a device sync)
only when it redraws, at most a few times a second, never once per step. When the output is not a
terminal (a log file, CI), ``TQDMProgressBar`` prints one compact line per epoch, and between two at
most one every ``TQDMProgressBar.line_interval`` seconds, instead of redrawing.
"""

from __future__ import annotations

import os
from typing import Any

from fulmen.callbacks.callback import Callback
from fulmen.errors import MisconfigurationException

_POSTFIX_INTERVAL = 0.5  # seconds between two reads of the progress-bar metrics while a bar runs


def get_standard_metrics(trainer: Any) -> dict[str, int | str]:
    """``{"v_num": <version of the first logger>}`` (the last 4 characters of a string version), or ``{}``.

    Example::

        get_standard_metrics(trainer)  # {'v_num': 3}
    """
    version = getattr(trainer.logger, "version", None)
    if version is None:
        return {}
    return {"v_num": version[-4:] if isinstance(version, str) else version}


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _fmt_time(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ProgressBar(Callback):
    """Base class of progress bars: batch totals of the running stage, the metrics to show, on/off.

    Subclass it to draw progress your own way; the Trainer uses at most one progress bar.

    Example::

        class DotBar(fulmen.callbacks.ProgressBar):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if self.is_enabled:
                    print(".", end="", flush=True)

        trainer = fulmen.Trainer(callbacks=[DotBar()])
    """

    sanity_check_description = "Sanity Checking"
    train_description = "Training"
    validation_description = "Validation"
    test_description = "Testing"
    predict_description = "Predicting"

    def __init__(self) -> None:
        self._trainer: Any = None
        self._current_eval_dataloader_idx: int | None = None
        self._enabled = True

    @property
    def trainer(self) -> Any:
        if self._trainer is None:
            raise MisconfigurationException(
                f"{type(self).__name__} is not attached to a Trainer yet; pass it in `Trainer(callbacks=[...])`."
            )
        return self._trainer

    # -- totals -------------------------------------------------------------------------------------
    @property
    def total_train_batches(self) -> int | float:
        """Training batches in an epoch (``inf`` for a loader without length)."""
        return self.trainer.num_training_batches

    @property
    def total_val_batches_current_dataloader(self) -> int | float:
        trainer = self.trainer
        batches = trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches
        return _at(batches, self._current_eval_dataloader_idx)

    @property
    def total_test_batches_current_dataloader(self) -> int | float:
        return _at(self.trainer.num_test_batches, self._current_eval_dataloader_idx)

    @property
    def total_predict_batches_current_dataloader(self) -> int | float:
        return _at(self.trainer.num_predict_batches, self._current_eval_dataloader_idx)

    @property
    def total_val_batches(self) -> int | float:
        """Validation batches of one validation run during fit (0 when validation is off)."""
        trainer = self.trainer
        return sum(trainer.num_val_batches) if trainer.state.fn == "fit" and trainer.enable_validation else 0

    # -- on/off --------------------------------------------------------------------------------------
    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self.is_enabled

    def disable(self) -> None:
        """Stop drawing (the Trainer calls it on every process but the first)."""
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        """Print without breaking the bar's drawing."""
        print(*args, sep=sep, **kwargs)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._trainer = trainer
        if not trainer.is_global_zero:
            self.disable()

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, int | float | str]:
        """What the bar shows: ``v_num`` and everything logged with ``prog_bar=True``. Override to change it.

        Example::

            def get_metrics(self, trainer, pl_module):
                items = super().get_metrics(trainer, pl_module)
                items.pop("v_num", None)
                return items
        """
        return {**get_standard_metrics(trainer), **trainer.progress_bar_metrics}

    def has_dataloader_changed(self, dataloader_idx: int) -> bool:
        """Whether an evaluation batch comes from another loader than the previous one (and remember it).

        Example (a bar that starts a new line per loader)::

            def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
                if self.has_dataloader_changed(dataloader_idx):
                    self.print(f"loader {dataloader_idx}")
        """
        changed = dataloader_idx != self._current_eval_dataloader_idx
        self._current_eval_dataloader_idx = dataloader_idx
        return changed

    def reset_dataloader_idx_tracker(self) -> None:
        """Forget the last evaluation loader, so the next batch counts as a change (called when a stage starts)."""
        self._current_eval_dataloader_idx = None

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit" and self.is_enabled and trainer.is_global_zero:
            line = _where_outputs_went(trainer)
            if line:
                self.print(line)


def _at(batches: Any, idx: int | None) -> int | float:
    if not batches:
        return 0
    return batches[idx or 0] if isinstance(batches, (list, tuple)) else batches


def _where_outputs_went(trainer: Any) -> str:
    """``Checkpoints: <dir>  Logs: <dir>`` for what this fit wrote; empty when it wrote neither."""
    parts = []
    ckpt_dir = getattr(trainer.checkpoint_callback, "dirpath", None)
    if ckpt_dir and os.path.isdir(ckpt_dir):
        parts.append(f"Checkpoints: {ckpt_dir}")
    log_dir = getattr(trainer.logger, "log_dir", None) or getattr(trainer.logger, "save_dir", None)
    if log_dir:
        parts.append(f"Logs: {log_dir}")
    return "  ".join(parts)


class _BarHooks:
    """What both bars share; each bar keeps its open bars in ``_bars`` (by stage) and supplies ``_open``,
    ``_advance``, ``_close`` and ``_eval_end``."""

    @property
    def refresh_rate(self) -> int:
        return self._refresh_rate

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self._refresh_rate > 0

    def on_sanity_check_end(self, trainer: Any, pl_module: Any) -> None:
        self._close("val")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.is_enabled:
            self._advance("train", batch_idx + 1, self.total_train_batches)

    def _eval_batch_start(self, key: str, desc: str, total: float, dataloader_idx: int, several: bool) -> None:
        if self.is_enabled and (self.has_dataloader_changed(dataloader_idx) or key not in self._bars):
            nested = key == "val" and self.trainer.state.fn == "fit"
            self._open(key, f"{desc} DataLoader {dataloader_idx}" if several else desc, total, nested)
            self._next_postfix = 0.0

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self.reset_dataloader_idx_tracker()

    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking:
            # one bar over all sanity batches, opened at the first (the batch counts are known by then); in a log
            # it stays quiet, but callbacks can read it
            if self.is_enabled and "val" not in self._bars:
                self._open("val", self.sanity_check_description, sum(trainer.num_sanity_val_batches), nested=True)
        else:
            self._eval_batch_start("val", self.validation_description, self.total_val_batches_current_dataloader,
                                   dataloader_idx, len(trainer.num_val_batches) > 1)

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self.reset_dataloader_idx_tracker()

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        self._eval_end("test")

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self.reset_dataloader_idx_tracker()

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        self._eval_end("predict")

    def on_test_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        self._eval_batch_start("test", self.test_description, self.total_test_batches_current_dataloader,
                               dataloader_idx, len(trainer.num_test_batches) > 1)

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        if self.is_enabled:
            self._advance("test", batch_idx + 1, self.total_test_batches_current_dataloader)

    def on_predict_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                               dataloader_idx: int = 0) -> None:
        self._eval_batch_start("predict", self.predict_description, self.total_predict_batches_current_dataloader,
                               dataloader_idx, len(trainer.num_predict_batches) > 1)

    def on_predict_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        if self.is_enabled:
            self._advance("predict", batch_idx + 1, self.total_predict_batches_current_dataloader)
