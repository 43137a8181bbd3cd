"""``TQDMProgressBar``, the default progress bar, drawn with ``tqdm``.

When the output is not a terminal (a log file, CI) it prints one compact line per epoch, and between
two at most one every ``TQDMProgressBar.line_interval`` seconds, instead of redrawing.
"""

from __future__ import annotations

import math
import sys
import time
from functools import lru_cache
from typing import Any

from fulmen.callbacks.progress.progress_bar import (
    _POSTFIX_INTERVAL,
    ProgressBar,
    _BarHooks,
    _fmt_time,
    _fmt_value,
)
from fulmen.errors import MisconfigurationException

_PAD_SIZE = 5  # a float in the bar's postfix is padded to this many characters, so the line does not jitter
_BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_INIT_METHODS = {"train": "init_train_tqdm", "val": "init_validation_tqdm", "test": "init_test_tqdm",
                 "predict": "init_predict_tqdm"}


def convert_inf(x: int | float | None) -> int | float | None:
    """``None`` for an infinite or NaN total (tqdm's "unknown"), else ``x``.

    Example::

        convert_inf(float("inf")), convert_inf(12)  # (None, 12)
    """
    if x is None or math.isinf(x) or math.isnan(x):
        return None
    return x


@lru_cache(maxsize=None)
def _tqdm_class() -> type:
    """Build :class:`Tqdm` on first use, so tqdm is imported only when a bar is drawn."""
    from tqdm.auto import tqdm

    class Tqdm(tqdm):
        """``tqdm`` whose postfix numbers keep a fixed width: floats are padded to 5 characters.

        Example::

            Tqdm.format_num(1.0), Tqdm.format_num(0.5), Tqdm.format_num(3)  # ('1.000', '0.500', '3')
        """

        @staticmethod
        def format_num(n: int | float | str) -> str:
            padded = isinstance(n, (float, str))
            text = n if isinstance(n, str) else tqdm.format_num(n)
            if padded and "e" not in text:
                if "." not in text and len(text) < _PAD_SIZE:
                    try:
                        float(text)
                    except ValueError:
                        return text
                    text += "."
                text += "0" * (_PAD_SIZE - len(text))
            return text

    Tqdm.__module__ = __name__
    return Tqdm


def __getattr__(name: str) -> Any:
    if name == "Tqdm":
        return _tqdm_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _LineBar:
    """tqdm's interface for output that is not a terminal: a line now and then instead of redraws."""

    def __init__(self, desc: str, total: float, interval: float, quiet: bool, leave: bool) -> None:
        self.desc, self.total, self.n, self.interval, self.quiet = desc, total, 0, interval, quiet
        self.leave, self.disable = leave, False  # read like tqdm's: kept after the stage, closed once it ends
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
        self.disable = True


def _bar_property(key: str) -> property:
    """A stage's bar: the open one, else the last one closed; assigning one replaces the open bar."""

    def get(self: TQDMProgressBar) -> Any:
        bar = self._bars.get(key)
        return self._closed.get(key) if bar is None else bar

    def set(self: TQDMProgressBar, bar: Any) -> None:
        self._bars[key] = bar

    return property(get, set)


class TQDMProgressBar(_BarHooks, ProgressBar):
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
    BAR_FORMAT = _BAR_FORMAT  # tqdm's ``bar_format`` of every bar; override it in a subclass to change the layout

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False) -> None:
        super().__init__()
        if not isinstance(refresh_rate, int) or refresh_rate < 0:
            raise MisconfigurationException(f"TQDMProgressBar(refresh_rate={refresh_rate!r}): pass an integer >= 0.")
        self._refresh_rate = refresh_rate
        self._process_position = process_position
        self._leave = leave
        self._bars: dict[str, Any] = {}  # the bars open now
        self._closed: dict[str, Any] = {}  # each stage's last bar after it closed: still readable, as in Lightning
        self._next_postfix = 0.0
        self._tty: bool | None = None

    @property
    def process_position(self) -> int:
        return self._process_position

    # -- the bars (Lightning's attributes: read them, or replace a bar from a hook) --------------------
    # While a stage runs its bar is open; once the stage ends it is closed but still there, so that `.total`,
    # `.n` and `.leave` can be read after `trainer.fit`/`test` too. The sanity check draws on the val bar.
    train_progress_bar = _bar_property("train")
    val_progress_bar = _bar_property("val")
    test_progress_bar = _bar_property("test")
    predict_progress_bar = _bar_property("predict")

    # Override these to change how a bar looks (its description and total are set when it opens):
    #     def init_validation_tqdm(self):
    #         bar = super().init_validation_tqdm()
    #         bar.disable = True
    #         return bar
    def _tqdm(self, desc: str, position: int, leave: bool, **kwargs: Any) -> Any:
        return _tqdm_class()(desc=desc, position=position, disable=self.is_disabled, leave=leave,
                             dynamic_ncols=True, file=sys.stdout, bar_format=self.BAR_FORMAT, **kwargs)

    def init_sanity_tqdm(self) -> Any:
        """The bar of the sanity check (under the training bar, removed when done)."""
        return self._tqdm(self.sanity_check_description, self._process_position + 1, leave=False)

    def init_train_tqdm(self) -> Any:
        """The training bar (it stays on screen when fit ends)."""
        return self._tqdm(self.train_description, self._process_position, leave=True, smoothing=0)

    def init_validation_tqdm(self) -> Any:
        """The validation bar: under the training bar during fit, on its own in ``trainer.validate``."""
        in_fit = self._trainer is not None and self._trainer.state.fn == "fit"
        return self._tqdm(self.validation_description, self._process_position + in_fit, leave=not in_fit)

    def init_test_tqdm(self) -> Any:
        """The bar of ``trainer.test``."""
        return self._tqdm(self.test_description, self._process_position, leave=True)

    def init_predict_tqdm(self) -> Any:
        """The bar of ``trainer.predict``."""
        return self._tqdm(self.predict_description, self._process_position, leave=True)

    # -- drawing --------------------------------------------------------------------------------
    def _is_tty(self) -> bool:
        if self._tty is None:
            self._tty = bool(getattr(sys.stdout, "isatty", lambda: False)())
        return self._tty

    def _open(self, key: str, desc: str, total: float, nested: bool) -> None:
        self._close(key)
        total = None if total in (None, float("inf")) else int(total)
        method = "init_sanity_tqdm" if key == "val" and self.trainer.sanity_checking else _INIT_METHODS[key]
        # a terminal gets tqdm bars; so does any bar whose init_*_tqdm a subclass customised
        if self._is_tty() or getattr(type(self), method) is not getattr(TQDMProgressBar, method):
            bar = getattr(self, method)()
            bar.reset(total=total)
            bar.set_description(desc, refresh=False)
        else:
            # in a log, only the training epochs and stand-alone evaluation get lines; nested bars stay quiet
            bar = _LineBar(desc, float("inf") if total is None else total, self.line_interval, quiet=nested,
                           leave=not nested)
        self._bars[key] = bar

    def _close(self, key: str) -> None:
        bar = self._bars.pop(key, None)
        if bar is not None:
            bar.close()
            self._closed[key] = bar

    def _advance(self, key: str, n: int, total: float) -> None:
        bar = self._bars.get(key)
        if bar is None or not (n % self._refresh_rate == 0 or n >= total):
            return
        if isinstance(bar, _LineBar) and bar.quiet:  # prints nothing: count, but read no metrics
            bar.update(n - bar.n)
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
        self.reset_dataloader_idx_tracker()

    # -- training -----------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if not self.is_enabled:
            return
        bar = self._bars.get("train")
        desc = f"Epoch {trainer.current_epoch}"
        total = self.total_train_batches
        if bar is None or self._leave:
            self._open("train", desc, total, nested=False)
        else:
            bar.reset(total=None if total == float("inf") else total)
            bar.set_description(desc)
        self._next_postfix = 0.0

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
    def _eval_end(self, key: str) -> None:
        if self.trainer.state.fn != "fit":
            self._finish_line(key)
        self._close(key)

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
