"""``RichProgressBar``: the progress bar drawn with ``rich`` (optional extra ``fulmen[rich]``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from fulmen.callbacks.progress.progress_bar import _POSTFIX_INTERVAL, ProgressBar, _BarHooks, _fmt_value
from fulmen.errors import MisconfigurationException, missing_extra


@dataclass
class RichProgressBarTheme:
    """The styles of :class:`RichProgressBar`'s columns: any ``rich`` style (a colour, ``"bold"``, ``"dim italic"``
    ...), plus how the metrics are written (``metrics_format`` for floats, joined by ``metrics_text_delimiter``).

    Example::

        theme = RichProgressBarTheme(progress_bar="green", metrics="bold", metrics_format=".2e")
        trainer = fulmen.Trainer(callbacks=[RichProgressBar(theme=theme)])
    """

    description: Any = ""
    progress_bar: Any = "#6206E0"
    progress_bar_finished: Any = "#6206E0"
    progress_bar_pulse: Any = "#6206E0"
    batch_progress: Any = ""
    time: Any = "dim"
    processing_speed: Any = "dim underline"
    metrics: Any = "italic"
    metrics_text_delimiter: str = " "
    metrics_format: str = ".3f"


class RichProgressBar(_BarHooks, ProgressBar):
    """A progress bar drawn with ``rich``: one task per stage with count, time, it/s and the metrics.

    Metrics are read at most a few times a second. When the output is not a terminal, rich draws each
    bar once, when it is done, instead of redrawing.

    Args:
        refresh_rate: Advance the bars every this many batches (0 turns them off).
        leave: Keep each finished epoch's bar on screen.
        theme: The columns' styles and the metrics' format (:class:`RichProgressBarTheme`).
        console_kwargs: Arguments for ``rich.console.Console``.

    Example::

        trainer = fulmen.Trainer(callbacks=[fulmen.callbacks.RichProgressBar(leave=True)])
    """

    def __init__(self, refresh_rate: int = 1, leave: bool = False, theme: RichProgressBarTheme | None = None,
                 console_kwargs: dict[str, Any] | None = None) -> None:
        try:
            import rich  # noqa: F401
        except ImportError:
            raise missing_extra("rich", "rich", "RichProgressBar") from None
        if not isinstance(refresh_rate, int) or refresh_rate < 0:
            raise MisconfigurationException(f"RichProgressBar(refresh_rate={refresh_rate!r}): pass an integer >= 0.")
        super().__init__()
        self._refresh_rate, self._leave = refresh_rate, leave
        self.theme = RichProgressBarTheme() if theme is None else theme
        self._console_kwargs = console_kwargs or {}
        self._progress: Any = None
        self._bars: dict[str, Any] = {}  # the open bars: stage -> rich task id
        self._next_postfix = 0.0

    @property
    def progress(self) -> Any:
        """The ``rich.progress.Progress`` drawing the bars while a stage runs; None before and after."""
        return self._progress

    # -- the running stages' tasks (``rich.progress.Task``: ``.total``, ``.completed``, ``.description``) ---------
    def _task(self, key: str) -> Any:
        task_id = self._bars.get(key)
        if task_id is None or self._progress is None:
            return None
        return next((task for task in self._progress.tasks if task.id == task_id), None)

    @property
    def train_progress_bar(self) -> Any:
        """The training epoch's task while fit runs, else None."""
        return self._task("train")

    @property
    def val_progress_bar(self) -> Any:
        """The validation task while validation runs (the sanity check's during it), else None."""
        return self._task("val")

    @property
    def val_sanity_check_bar(self) -> Any:
        """The sanity check's task while it runs, else None."""
        trainer = self._trainer
        return self._task("val") if trainer is not None and trainer.sanity_checking else None

    @property
    def test_progress_bar(self) -> Any:
        """The test task while ``trainer.test`` runs, else None."""
        return self._task("test")

    @property
    def predict_progress_bar(self) -> Any:
        """The predict task while ``trainer.predict`` runs, else None."""
        return self._task("predict")

    def _start(self) -> Any:
        if self._progress is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            from rich.table import Column

            theme = self.theme
            self._progress = Progress(
                TextColumn("[progress.description]{task.description}", style=theme.description),
                BarColumn(bar_width=20, complete_style=theme.progress_bar, finished_style=theme.progress_bar_finished,
                          pulse_style=theme.progress_bar_pulse),
                MofNCompleteColumn(table_column=Column(style=theme.batch_progress)),
                TimeElapsedColumn(table_column=Column(style=theme.time)),
                TextColumn("{task.fields[rate]}", style=theme.processing_speed),
                # the metrics wrap rather than squeeze the counts when the line is short
                TextColumn("{task.fields[metrics]}", style=theme.metrics,
                           table_column=Column(overflow="fold", ratio=1)),
                console=Console(**self._console_kwargs), auto_refresh=False,
            )
            self._progress.start()
        return self._progress

    def _open(self, key: str, desc: str, total: float, nested: bool = False) -> None:
        # a nested bar (validation during fit) is one more task of the same Progress, drawn like the others
        progress = self._start()
        old = self._bars.pop(key, None)
        if old is not None and not (key == "train" and self._leave):
            progress.remove_task(old)
        total = None if total == float("inf") else total
        self._bars[key] = progress.add_task(desc, total=total, rate="", metrics="")
        self._next_postfix = 0.0

    def _advance(self, key: str, n: int, total: float) -> None:
        task = self._bars.get(key)
        if task is None or not (n % self._refresh_rate == 0 or n >= total):
            return
        progress = self._progress
        now = time.monotonic()
        if now >= self._next_postfix or n >= total:  # metrics are read a few times a second at most
            self._next_postfix = now + _POSTFIX_INTERVAL
            metrics = self._metrics_text()
            speed = progress.tasks[progress.task_ids.index(task)].speed
            progress.update(task, completed=n, metrics=metrics, rate=f"{speed:.2f}it/s" if speed else "")
            progress.refresh()
        else:
            progress.update(task, completed=n)

    def _metrics_text(self) -> str:
        metrics = self.get_metrics(self.trainer, self.trainer.lightning_module)
        fmt = self.theme.metrics_format
        return self.theme.metrics_text_delimiter.join(
            f"{k}: {format(v, fmt) if isinstance(v, float) else _fmt_value(v)}" for k, v in metrics.items())

    def _close(self, key: str) -> None:
        task = self._bars.pop(key, None)
        if task is not None and self._progress is not None:
            self._progress.update(task, visible=False)
            self._progress.refresh()

    def _eval_end(self, key: str) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._bars.clear()

    # -- hooks ---------------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self.is_enabled:
            self._open("train", f"Epoch {trainer.current_epoch}", self.total_train_batches)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        task = self._bars.get("train")
        if task is not None:
            self._progress.update(task, metrics=self._metrics_text())
            self._progress.refresh()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._stop()

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if self.is_enabled:
            self._advance("val", batch_idx + 1, self.total_val_batches_current_dataloader)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        self._close("val")
        if trainer.state.fn != "fit":
            self._stop()
        elif "train" in self._bars:
            self._progress.update(self._bars["train"], metrics=self._metrics_text())

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._stop()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._stop()
        super().teardown(trainer, pl_module, stage)

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        """Print above the bars without garbling them."""
        if self._progress is not None:
            self._progress.console.print(*args, sep=sep)
        else:
            print(*args, sep=sep, **kwargs)
