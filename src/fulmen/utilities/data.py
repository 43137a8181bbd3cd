"""Questions about batches and loaders: the size of a batch, whether a loader has a length.

Example::

    from fulmen.utilities.data import extract_batch_size

    extract_batch_size({"x": torch.zeros(8, 3)})  # 8
"""

from fulmen._lightning_utils import has_len, has_len_all_ranks, sized_len, suggested_max_num_workers
from fulmen._utils import extract_batch_size

__all__ = ["extract_batch_size", "has_len", "has_len_all_ranks", "sized_len", "suggested_max_num_workers"]
