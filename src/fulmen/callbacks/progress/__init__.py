"""Progress bars: the ``ProgressBar`` base, the default ``TQDMProgressBar`` and ``RichProgressBar``.

Example::

    from fulmen.callbacks.progress import RichProgressBar, TQDMProgressBar

    trainer = fulmen.Trainer(callbacks=[TQDMProgressBar(refresh_rate=10)])
"""

from fulmen.callbacks.progress.progress_bar import ProgressBar
from fulmen.callbacks.progress.tqdm_progress import TQDMProgressBar

__all__ = ["ProgressBar", "RichProgressBar", "TQDMProgressBar"]


def __getattr__(name: str):
    # rich's bar loads on first use, like the rich package it draws with
    if name == "RichProgressBar":
        from fulmen.callbacks.progress.rich_progress import RichProgressBar

        return RichProgressBar
    raise AttributeError(f"module 'fulmen.callbacks.progress' has no attribute {name!r}")
