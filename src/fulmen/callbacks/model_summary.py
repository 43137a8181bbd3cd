"""``ModelSummary`` and ``RichModelSummary``: print the model's layer table when fit starts."""

from __future__ import annotations

from typing import Any

from fulmen.callbacks.callback import Callback
from fulmen.errors import MisconfigurationException, missing_extra


def _lightning_args(summary: Any) -> tuple[list[tuple[str, list[str]]], int, int, float, dict[str, int], int]:
    """``summarize``'s arguments from a summary object (``fulmen.summary.Summary`` or a ``ModelSummary``)."""
    from fulmen.summary import ModelSummary as SummaryObject
    from fulmen.summary import Summary

    if isinstance(summary, Summary):  # fulmen's own summary, as earlier fulmen code passes it
        summary = SummaryObject._wrap(summary)
    return (summary._get_summary_data(), summary.total_parameters, summary.trainable_parameters, summary.model_size,
            summary.total_training_modes, summary.total_flops)


class ModelSummary(Callback):
    """Print a table of the model's layers (parameters, train/eval mode, FLOPs, and input/output sizes when
    the module has an ``example_input_array``) and the parameter totals, at the start of fit, on rank zero.

    Override ``summarize`` (Lightning's signature) to show the table elsewhere.

    Args:
        max_depth: How many levels of submodules to list (-1: all, 0: print nothing).
        **summarize_kwargs: Passed on to ``summarize``.

    Example::

        class LoggedSummary(ModelSummary):
            @staticmethod
            def summarize(summary_data, total_parameters, trainable_parameters, model_size,
                          total_training_modes, total_flops, **kwargs):
                logging.getLogger(__name__).info("%d parameters", total_parameters)

        trainer = fulmen.Trainer(callbacks=[ModelSummary(max_depth=2)])
    """

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        if not isinstance(max_depth, int) or max_depth < -1:
            raise MisconfigurationException(f"ModelSummary(max_depth={max_depth!r}): pass an integer >= -1.")
        self._max_depth = max_depth
        self._summarize_kwargs = summarize_kwargs

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self._max_depth == 0 or not trainer.is_global_zero:
            return
        data, total, trainable, size, modes, flops = _lightning_args(self._summary(trainer, pl_module))
        self.summarize(data, total, trainable, size, modes, total_flops=flops, **self._summarize_kwargs)

    def _summary(self, trainer: Any, pl_module: Any) -> Any:
        """The ``ModelSummary`` object of ``pl_module`` (see :class:`fulmen.summary.ModelSummary`)."""
        from fulmen.summary import ModelSummary as SummaryObject

        return SummaryObject(pl_module, max_depth=self._max_depth)

    @staticmethod
    def summarize(summary_data: Any, total_parameters: int | None = None, trainable_parameters: int | None = None,
                  model_size: float | None = None, total_training_modes: dict[str, int] | None = None,
                  total_flops: int = 0, **summarize_kwargs: Any) -> None:
        """Print the table: ``summary_data`` holds its columns as ``(header, cells)``, the rest the totals.

        A summary object (``fulmen.summary.summarize(...)``) may be passed alone instead.
        """
        from fulmen.summary import format_summary_table

        if total_parameters is None:
            summary_data, total_parameters, trainable_parameters, model_size, total_training_modes, total_flops = (
                _lightning_args(summary_data))
        print(format_summary_table(total_parameters, trainable_parameters, model_size, total_training_modes,
                                   total_flops, *summary_data))


class RichModelSummary(ModelSummary):
    """``ModelSummary`` drawn as a ``rich`` table (needs the ``rich`` extra).

    Args:
        max_depth: How many levels of submodules to list (-1: all, 0: print nothing).
        **summarize_kwargs: ``header_style`` (default ``"bold magenta"``) is the rich style of the header row.

    Example::

        trainer = fulmen.Trainer(callbacks=[fulmen.callbacks.RichModelSummary(max_depth=-1)])
    """

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        try:
            import rich  # noqa: F401
        except ImportError:
            raise missing_extra("rich", "rich", "RichModelSummary") from None
        super().__init__(max_depth, **summarize_kwargs)

    @staticmethod
    def summarize(summary_data: Any, total_parameters: int | None = None, trainable_parameters: int | None = None,
                  model_size: float | None = None, total_training_modes: dict[str, int] | None = None,
                  total_flops: int = 0, **summarize_kwargs: Any) -> None:
        from rich import get_console
        from rich.table import Table

        from fulmen.summary import summary_totals

        if total_parameters is None:
            summary_data, total_parameters, trainable_parameters, model_size, total_training_modes, total_flops = (
                _lightning_args(summary_data))
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for i, (header, _) in enumerate(summary_data):
            table.add_column(header, justify="right" if header in ("Params", "FLOPs") else "left",
                             style="cyan" if i == 0 else None)
        rows = max((len(cells) for _, cells in summary_data), default=0)
        for i in range(rows):
            table.add_row(*(cells[i].strip() for _, cells in summary_data))
        console = get_console()
        console.print(table)
        grid = Table.grid(padding=(0, 1))
        grid.add_column(justify="left", style="bold")
        grid.add_column()
        for value, label in summary_totals(total_parameters, trainable_parameters, model_size, total_training_modes,
                                           total_flops):
            grid.add_row(value.strip(), label)
        console.print(grid)
