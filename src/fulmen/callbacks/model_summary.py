"""``ModelSummary`` and ``RichModelSummary``: print the model's layer table when fit starts."""

from __future__ import annotations

from typing import Any

from fulmen.callbacks.callback import Callback
from fulmen.errors import MisconfigurationException, missing_extra


class ModelSummary(Callback):
    """Print a table of the model's layers (parameters, train/eval mode, sizes and FLOPs when the module
    has an ``example_input_array``) and the parameter totals, at the start of fit, on rank zero.

    Args:
        max_depth: How many levels of submodules to list (-1: all, 0: print nothing).

    Example::

        trainer = fulmen.Trainer(callbacks=[fulmen.callbacks.ModelSummary(max_depth=2)])
    """

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        if not isinstance(max_depth, int) or max_depth < -1:
            raise MisconfigurationException(f"ModelSummary(max_depth={max_depth!r}): pass an integer >= -1.")
        self._max_depth = max_depth
        self._summarize_kwargs = summarize_kwargs

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self._max_depth == 0 or not trainer.is_global_zero:
            return
        from fulmen.summary import summarize

        self.summarize(summarize(pl_module, max_depth=self._max_depth), **self._summarize_kwargs)

    def summarize(self, summary: Any, **kwargs: Any) -> None:
        """Show ``summary`` (a ``fulmen.summary.Summary``); override to show it elsewhere."""
        print(summary)


class RichModelSummary(ModelSummary):
    """``ModelSummary`` drawn as a ``rich`` table (needs the ``rich`` extra).

    Args:
        max_depth: How many levels of submodules to list (-1: all, 0: print nothing).
        header_style, title_style: rich styles of the header row and the column titles.

    Example::

        trainer = fulmen.Trainer(callbacks=[fulmen.callbacks.RichModelSummary(max_depth=-1)])
    """

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        try:
            import rich  # noqa: F401
        except ImportError:
            raise missing_extra("rich", "rich", "RichModelSummary") from None
        super().__init__(max_depth, **summarize_kwargs)

    def summarize(self, summary: Any, header_style: str = "bold magenta", **kwargs: Any) -> None:
        from rich import get_console
        from rich.table import Table

        headers, rows = summary.rows()
        table = Table(header_style=header_style)
        for i, header in enumerate(headers):
            table.add_column(header, justify="right" if header in ("Params", "FLOPs") else "left",
                             style="cyan" if i == 0 else None)
        for row in rows:
            table.add_row(*row)
        console = get_console()
        console.print(table)
        grid = Table.grid(padding=(0, 1))
        grid.add_column(justify="left", style="bold")
        grid.add_column()
        for value, label in summary.totals():
            grid.add_row(value, label)
        console.print(grid)
