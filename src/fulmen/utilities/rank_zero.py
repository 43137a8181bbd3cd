"""Calling functions, warning and printing on the main process only (global rank zero).

``rank_zero_only.rank`` is this process's global rank; strategies set it when they start processes.

Example::

    from fulmen.utilities.rank_zero import rank_zero_info, rank_zero_only

    @rank_zero_only
    def save_plot(fig):
        fig.savefig("loss.png")

    rank_zero_info("printed once, not once per process")
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from fulmen.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

__all__ = [
    "LightningDeprecationWarning", "WarningCache", "rank_prefixed_message", "rank_zero_debug",
    "rank_zero_deprecation", "rank_zero_info", "rank_zero_only", "rank_zero_warn",
]

_log = logging.getLogger("fulmen")


class LightningDeprecationWarning(DeprecationWarning):
    """The category of fulmen's deprecation warnings (Lightning's name, so filters written for it work)."""


@rank_zero_only
def rank_zero_debug(message: str, *args: Any, **kwargs: Any) -> None:
    """Log ``message`` at DEBUG level to the ``fulmen`` logger, on rank zero only."""
    _log.debug(message, *args, **kwargs)


@rank_zero_only
def rank_zero_deprecation(message: str, stacklevel: int = 4, **kwargs: Any) -> None:
    """Warn with a :class:`LightningDeprecationWarning`, on rank zero only."""
    warnings.warn(message, kwargs.get("category", LightningDeprecationWarning), stacklevel=stacklevel)


def rank_prefixed_message(message: str, rank: int | None) -> str:
    """``"[rank: 1] message"``; the message unchanged when ``rank`` is None."""
    return message if rank is None else f"[rank: {rank}] {message}"


class WarningCache(set):
    """Warn or print each distinct message once per process, on rank zero.

    Example::

        cache = WarningCache()
        for _ in range(3):
            cache.warn("shown once")
    """

    def warn(self, message: str, stacklevel: int = 5, **kwargs: Any) -> None:
        if message not in self:
            self.add(message)
            rank_zero_warn(message, stacklevel=stacklevel, **kwargs)

    def deprecation(self, message: str, stacklevel: int = 6, **kwargs: Any) -> None:
        if message not in self:
            self.add(message)
            rank_zero_deprecation(message, stacklevel=stacklevel, **kwargs)

    def info(self, message: str, **kwargs: Any) -> None:
        if message not in self:
            self.add(message)
            rank_zero_info(message)
