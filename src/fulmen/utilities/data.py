"""Questions about batches and loaders: the size of a batch, whether a loader has a length.

Example::

    from fulmen.utilities.data import extract_batch_size

    extract_batch_size({"x": torch.zeros(8, 3)})  # 8
"""

from __future__ import annotations

from typing import Any

from fulmen.utilities import extract_batch_size

__all__ = ["extract_batch_size", "has_len", "sized_len"]


def sized_len(dataloader: Any) -> int | None:
    """``len(dataloader)``, or None when it has no length (an iterable dataset, a generator)."""
    try:
        return len(dataloader)
    except (TypeError, NotImplementedError):
        return None


def has_len(dataloader: Any) -> bool:
    """Whether ``dataloader`` has a length (a zero length counts, and warns as in Lightning)."""
    n = sized_len(dataloader)
    if n == 0:
        from fulmen.utilities import rank_zero_warn

        rank_zero_warn(f"`{type(dataloader).__name__}` returned 0 length. Please make sure this was your intention.")
    return n is not None
