"""Calling functions, warning and printing on the main process only (global rank zero).

``rank_zero_only.rank`` is this process's global rank; strategies set it when they start processes.

Example::

    from fulmen.utilities.rank_zero import rank_zero_info, rank_zero_only

    @rank_zero_only
    def save_plot(fig):
        fig.savefig("loss.png")

    rank_zero_info("printed once, not once per process")
"""

from fulmen._utils import rank_zero_info, rank_zero_only, rank_zero_warn
from fulmen._lightning_utils import (LightningDeprecationWarning, WarningCache, rank_prefixed_message,
                                     rank_zero_debug, rank_zero_deprecation)

__all__ = [
    "LightningDeprecationWarning", "WarningCache", "rank_prefixed_message", "rank_zero_debug",
    "rank_zero_deprecation", "rank_zero_info", "rank_zero_only", "rank_zero_warn",
]
