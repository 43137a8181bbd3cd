"""Recognising out-of-memory errors and freeing cached memory, as the batch-size finder does.

Example::

    from fulmen.utilities.memory import garbage_collection_cuda, is_oom_error

    try:
        model(big_batch)
    except RuntimeError as err:
        if not is_oom_error(err):
            raise
        garbage_collection_cuda()
"""

from fulmen._lightning_utils import (garbage_collection_cuda, is_cuda_out_of_memory, is_cudnn_snafu, is_oom_error,
                                     is_out_of_cpu_memory, recursive_detach)

__all__ = [
    "garbage_collection_cuda", "is_cuda_out_of_memory", "is_cudnn_snafu", "is_oom_error", "is_out_of_cpu_memory",
    "recursive_detach",
]
