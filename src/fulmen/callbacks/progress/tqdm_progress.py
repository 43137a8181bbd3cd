"""Progress bars: the ``ProgressBar`` base and the default ``TQDMProgressBar``.

A bar reads ``trainer.progress_bar_metrics`` (which turns logged tensors into numbers, a device sync)
only when it redraws, at most a few times a second, never once per step. When the output is not a
terminal (a log file, CI), ``TQDMProgressBar`` prints one compact line per epoch, and between two at
most one every ``TQDMProgressBar.line_interval`` seconds, instead of redrawing.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from fulmen.callbacks.callback import Callback
from fulmen.errors import MisconfigurationException

_POSTFIX_INTERVAL = 0.5  # seconds between two reads of the progress-bar metrics while a bar runs


def get_standard_metrics(trainer: Any) -> dict[str, int | str]:
    """``{"v_num": <version of the first logger>}`` (the last 4 characters of a string version), or ``{}``.

    Example::

        get_standard_metrics(trainer)  # {'v_num': 3}
    """
    logger = trainer.logger
    version = getattr(logger, "version", None) if logger is not None else None
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

    def _eval_dataloader_changed(self, dataloader_idx: int) -> bool:
        changed = dataloader_idx != self._current_eval_dataloader_idx
        self._current_eval_dataloader_idx = dataloader_idx
        return changed

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
    cb = trainer.checkpoint_callback
    ckpt_dir = getattr(cb, "dirpath", None) if cb is not None else None
    if ckpt_dir and os.path.isdir(ckpt_dir):
        parts.append(f"Checkpoints: {ckpt_dir}")
    if trainer.loggers:
        logger = trainer.logger
        log_dir = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
        if log_dir:
            parts.append(f"Logs: {log_dir}")
    return "  ".join(parts)


class _LineBar:
    """tqdm's interface for output that is not a terminal: a line now and then instead of redraws."""

    def __init__(self, desc: str, total: float, interval: float, quiet: bool) -> None:
        self.desc, self.total, self.n, self.interval, self.quiet = desc, total, 0, interval, quiet
        self.postfix = ""
        self.start = self.last_line = time.monotonic()

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def set_postfix(self, metrics: dict[str, Any], refresh: bool = True) -> None:
        self.postfix = ", ".join(f"{k}={_fmt_value(v)}" for k, v in metrics.items())

    def reset(self, total: float | None = None) -> None:
        self.total, self.n = (self.total if total is None else total), 0
        self.start = self.last_line = time.monotonic()

    def update(self, n: int) -> bool:
        self.n += n
        now = time.monotonic()
        if not self.quiet and now - self.last_line >= self.interval and self.n < self.total:
            self.write_line(now)
        return False

    def write_line(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.last_line = now
        elapsed = now - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        finite = self.total not in (None, float("inf")) and self.total > 0
        pct = f"{100 * self.n / self.total:3.0f}% " if finite else ""
        count = f"{self.n}/{int(self.total)}" if finite else f"{self.n}"
        line = f"{self.desc}: {pct}{count} [{_fmt_time(elapsed)}, {rate:.2f}it/s]"
        print(f"{line} {self.postfix}".rstrip(), flush=True)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


class _EvalBatchBars:
    """The test and predict batch hooks both bars share; each bar supplies ``_eval_batch_start`` and ``_advance``."""

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


class TQDMProgressBar(_EvalBatchBars, ProgressBar):
    """The default progress bar: a ``tqdm`` bar per stage with it/s, ``v_num`` and ``prog_bar`` metrics.

    Args:
        refresh_rate: Advance the bar every this many batches (0 turns the bar off).
        process_position: Line offset, to stack several bars (e.g. several trainers in one script).
        leave: Keep each finished epoch's bar on screen.

    When stdout is not a terminal it prints one line per epoch (and for a long epoch one every
    ``line_interval`` seconds) rather than redrawing.

    Example::

        trainer = fulmen.Trainer(callbacks=[fulmen.callbacks.TQDMProgressBar(refresh_rate=10)])
    """

    line_interval = 30.0  # seconds between two progress lines when output is not a terminal

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False) -> None:
        super().__init__()
        if not isinstance(refresh_rate, int) or refresh_rate < 0:
            raise MisconfigurationException(f"TQDMProgressBar(refresh_rate={refresh_rate!r}): pass an integer >= 0.")
        self._refresh_rate = refresh_rate
        self._process_position = process_position
        self._leave = leave
        self._bars: dict[str, Any] = {}
        self._next_postfix = 0.0
        self._tty: bool | None = None

    @property
    def refresh_rate(self) -> int:
        return self._refresh_rate

    @property
    def process_position(self) -> int:
        return self._process_position

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self._refresh_rate > 0

    @property
    def train_progress_bar(self) -> Any:
        return self._bars.get("train")

    @property
    def val_progress_bar(self) -> Any:
        return self._bars.get("val")

    @property
    def test_progress_bar(self) -> Any:
        return self._bars.get("test")

    @property
    def predict_progress_bar(self) -> Any:
        return self._bars.get("predict")

    # -- drawing --------------------------------------------------------------------------------
    def _is_tty(self) -> bool:
        if self._tty is None:
            self._tty = bool(getattr(sys.stdout, "isatty", lambda: False)())
        return self._tty

    def _open(self, key: str, desc: str, total: float, nested: bool) -> Any:
        self._close(key)
        total = None if total in (None, float("inf")) else int(total)
        if self._is_tty():
            from tqdm.auto import tqdm

            bar = tqdm(desc=desc, total=total, position=self._process_position + (1 if nested else 0),
                       # the training bar stays on screen when done (``leave`` only asks for one per epoch)
                       leave=key == "train" or not nested, dynamic_ncols=True, file=sys.stdout,
                       smoothing=0, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, "
                       "{rate_fmt}{postfix}]")
        else:
            # in a log, only the training epochs and stand-alone evaluation get lines; nested bars stay quiet
            bar = _LineBar(desc, float("inf") if total is None else total, self.line_interval, quiet=nested)
        self._bars[key] = bar
        return bar

    def _close(self, key: str) -> None:
        bar = self._bars.pop(key, None)
        if bar is not None:
            bar.close()

    def _advance(self, key: str, n: int, total: float) -> None:
        bar = self._bars.get(key)
        if bar is None or not (n % self._refresh_rate == 0 or n >= total):
            return
        now = time.monotonic()
        if now >= self._next_postfix or n >= total:  # metrics are read a few times a second at most
            self._next_postfix = now + _POSTFIX_INTERVAL
            bar.set_postfix(self.get_metrics(self.trainer, self.trainer.lightning_module), refresh=False)
        bar.update(n - bar.n)

    def _finish_line(self, key: str) -> None:
        bar = self._bars.get(key)
        if isinstance(bar, _LineBar):
            bar.write_line()

    # -- sanity check -----------------------------------------------------------------------------
    def on_sanity_check_start(self, trainer: Any, pl_module: Any) -> None:
        self._current_eval_dataloader_idx = None
        if self.is_enabled and self._is_tty():
            self._open("val", self.sanity_check_description, sum(trainer.num_sanity_val_batches), nested=True)

    def on_sanity_check_end(self, trainer: Any, pl_module: Any) -> None:
        self._close("val")

    # -- training -----------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if not self.is_enabled:
            return
        bar = self._bars.get("train")
        desc = f"Epoch {trainer.current_epoch}"
        total = self.total_train_batches
        if bar is None or self._leave:
            bar = self._open("train", desc, total, nested=False)
        else:
            bar.reset(total=None if total == float("inf") else total)
            bar.set_description(desc)
        self._next_postfix = 0.0

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.is_enabled:
            self._advance("train", batch_idx + 1, self.total_train_batches)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        bar = self._bars.get("train")
        if bar is None:
            return
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        bar.refresh()
        self._finish_line("train")

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._close("train")

    # -- evaluation ---------------------------------------------------------------------------------
    def _eval_start(self, key: str) -> None:
        self._current_eval_dataloader_idx = None

    def _eval_batch_start(self, key: str, desc: str, total: float, dataloader_idx: int, several: bool) -> None:
        if not self.is_enabled or not self._eval_dataloader_changed(dataloader_idx) and key in self._bars:
            return
        nested = key == "val" and self.trainer.state.fn == "fit"
        if several:
            desc = f"{desc} DataLoader {dataloader_idx}"
        self._open(key, desc, total, nested=nested)
        self._next_postfix = 0.0

    def _eval_end(self, key: str) -> None:
        if self.trainer.state.fn != "fit":
            self._finish_line(key)
        self._close(key)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._eval_start("val")

    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking:
            return  # one bar over all sanity batches, opened in on_sanity_check_start
        self._eval_batch_start("val", self.validation_description, self.total_val_batches_current_dataloader,
                               dataloader_idx, len(trainer.num_val_batches) > 1)

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if self.is_enabled:
            total = (sum(trainer.num_sanity_val_batches) if trainer.sanity_checking
                     else self.total_val_batches_current_dataloader)
            n = self._bars["val"].n + 1 if trainer.sanity_checking and "val" in self._bars else batch_idx + 1
            self._advance("val", n, total)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        self._eval_end("val")
        train_bar = self._bars.get("train")
        if train_bar is not None and trainer.state.fn == "fit":
            train_bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=True)

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._eval_start("test")

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        self._eval_end("test")

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self._eval_start("predict")

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        self._eval_end("predict")

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        for key in list(self._bars):
            self._close(key)

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        """Print above the bars without garbling them."""
        if self._is_tty() and self._bars:
            from tqdm.auto import tqdm

            tqdm.write(sep.join(map(str, args)), file=sys.stdout)
        else:
            print(*args, sep=sep, **kwargs)
