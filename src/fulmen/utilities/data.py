"""Questions about batches and loaders: the size of a batch, whether a loader has a length.

Example::

    from fulmen.utilities.data import extract_batch_size

    extract_batch_size({"x": torch.zeros(8, 3)})  # 8
"""

from __future__ import annotations

import os
from typing import Any

from fulmen.utilities import extract_batch_size

__all__ = ["extract_batch_size", "has_len", "sized_len", "suggested_max_num_workers"]


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


def suggested_max_num_workers(local_world_size: int) -> int:
    """An upper bound for ``DataLoader(num_workers=...)``: the CPUs this process may use, shared among the
    ``local_world_size`` processes of this machine, minus one for each main process (at least 1).

    Example::

        DataLoader(data, num_workers=suggested_max_num_workers(local_world_size=trainer.num_devices))
    """
    if local_world_size < 1:
        from fulmen.errors import MisconfigurationException

        raise MisconfigurationException(f"`local_world_size` should be >= 1, got {local_world_size}.")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // local_world_size - 1)
