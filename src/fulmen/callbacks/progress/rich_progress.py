"""``RichProgressBar``: the progress bar drawn with ``rich`` (optional extra ``fulmen[rich]``)."""

from __future__ import annotations

import time
from typing import Any

from fulmen.callbacks.progress.progress_bar import _POSTFIX_INTERVAL, ProgressBar, _EvalBatchBars, _fmt_value
from fulmen.errors import MisconfigurationException, missing_extra


class RichProgressBar(_EvalBatchBars, ProgressBar):
    """A progress bar drawn with ``rich``: one task per stage with count, time, it/s and the metrics.

    Metrics are read at most a few times a second. When the output is not a terminal, rich draws each
    bar once, when it is done, instead of redrawing.

    Args:
        refresh_rate: Advance the bars every this many batches (0 turns them off).
        leave: Keep each finished epoch's bar on screen.
        console_kwargs: Arguments for ``rich.console.Console``.
        theme: Colours and styles of the bar's parts. None: the default theme.

    Example::

        trainer = fulmen.Trainer(callbacks=[fulmen.callbacks.RichProgressBar(leave=True)])
    """

    def __init__(self, refresh_rate: int = 1, leave: bool = False, theme: Any = None,
                 console_kwargs: dict[str, Any] | None = None) -> None:
        try:
            import rich  # noqa: F401
        except ImportError:
            raise missing_extra("rich", "rich", "RichProgressBar") from None
        if not isinstance(refresh_rate, int) or refresh_rate < 0:
            raise MisconfigurationException(f"RichProgressBar(refresh_rate={refresh_rate!r}): pass an integer >= 0.")
        super().__init__()
        self._refresh_rate, self._leave = refresh_rate, leave
        self._console_kwargs = console_kwargs or {}
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        self._next_postfix = 0.0

    @property
    def refresh_rate(self) -> int:
        return self._refresh_rate

    @property
    def progress(self) -> Any:
        """The ``rich.progress.Progress`` drawing the bars while a stage runs; None before and after."""
        return self._progress

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self._refresh_rate > 0

    def _start(self) -> Any:
        if self._progress is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            from rich.table import Column

            self._progress = Progress(
                TextColumn("[progress.description]{task.description}"), BarColumn(bar_width=20),
                MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[rate]}"),
                # the metrics wrap rather than squeeze the counts when the line is short
                TextColumn("{task.fields[metrics]}", table_column=Column(overflow="fold", ratio=1)),
                console=Console(**self._console_kwargs), auto_refresh=False,
            )
            self._progress.start()
        return self._progress

    def _open(self, key: str, desc: str, total: float, visible: bool = True) -> None:
        progress = self._start()
        old = self._tasks.pop(key, None)
        if old is not None and not (key == "train" and self._leave):
            progress.remove_task(old)
        total = None if total == float("inf") else total
        self._tasks[key] = progress.add_task(desc, total=total, rate="", metrics="", visible=visible)
        self._next_postfix = 0.0

    def _advance(self, key: str, n: int, total: float) -> None:
        task = self._tasks.get(key)
        if task is None or not (n % self._refresh_rate == 0 or n >= total):
            return
        progress = self._progress
        now = time.monotonic()
        fields: dict[str, Any] = {}
        if now >= self._next_postfix or n >= total:  # metrics are read a few times a second at most
            self._next_postfix = now + _POSTFIX_INTERVAL
            fields["metrics"] = self._metrics_text()
            speed = progress.tasks[progress.task_ids.index(task)].speed
            fields["rate"] = f"{speed:.2f}it/s" if speed else ""
            progress.update(task, completed=n, **fields)
            progress.refresh()
        else:
            progress.update(task, completed=n)

    def _metrics_text(self) -> str:
        metrics = self.get_metrics(self.trainer, self.trainer.lightning_module)
        return " ".join(f"{k}: {_fmt_value(v)}" for k, v in metrics.items())

    def _close(self, key: str) -> None:
        task = self._tasks.pop(key, None)
        if task is not None and self._progress is not None:
            self._progress.update(task, visible=False)
            self._progress.refresh()

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._tasks.clear()

    # -- hooks ---------------------------------------------------------------------------------------
    def on_sanity_check_start(self, trainer: Any, pl_module: Any) -> None:
        if self.is_enabled:
            self._open("val", self.sanity_check_description, sum(trainer.num_sanity_val_batches))

    def on_sanity_check_end(self, trainer: Any, pl_module: Any) -> None:
        self._close("val")

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self.is_enabled:
            self._open("train", f"Epoch {trainer.current_epoch}", self.total_train_batches)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.is_enabled:
            self._advance("train", batch_idx + 1, self.total_train_batches)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        task = self._tasks.get("train")
        if task is not None:
            self._progress.update(task, metrics=self._metrics_text())
            self._progress.refresh()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._stop()

    def _eval_batch_start(self, key: str, desc: str, total: float, dataloader_idx: int, several: bool) -> None:
        if self.is_enabled and (self._eval_dataloader_changed(dataloader_idx) or key not in self._tasks):
            self._open(key, f"{desc} DataLoader {dataloader_idx}" if several else desc, total)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._current_eval_dataloader_idx = None

    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self._eval_batch_start("val", self.validation_description, self.total_val_batches_current_dataloader,
                                   dataloader_idx, len(trainer.num_val_batches) > 1)

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
        elif "train" in self._tasks:
            self._progress.update(self._tasks["train"], metrics=self._metrics_text())

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._current_eval_dataloader_idx = None

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        self._stop()

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self._current_eval_dataloader_idx = None

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        self._stop()

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
