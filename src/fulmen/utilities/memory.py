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

from __future__ import annotations

import gc
from typing import Any

import torch

__all__ = [
    "garbage_collection_cuda", "is_cuda_out_of_memory", "is_cudnn_snafu", "is_oom_error", "is_out_of_cpu_memory",
    "recursive_detach",
]


def recursive_detach(in_dict: Any, to_cpu: bool = False) -> Any:
    """Every tensor in a nested collection detached from the graph (and moved to the CPU with ``to_cpu``)."""
    from fulmen.utilities import apply_to_collection

    def detach(t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        return t.cpu() if to_cpu else t

    return apply_to_collection(in_dict, torch.Tensor, detach)


def is_cuda_out_of_memory(exception: BaseException) -> bool:
    """A CUDA allocation failed."""
    if isinstance(exception, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exception, RuntimeError) and len(exception.args) == 1 and "CUDA" in str(
        exception.args[0]) and "out of memory" in str(exception.args[0])


def is_cudnn_snafu(exception: BaseException) -> bool:
    """cuDNN's way of reporting that it ran out of memory."""
    return isinstance(exception, RuntimeError) and len(exception.args) == 1 and (
        "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED." in str(exception.args[0]))


def is_out_of_cpu_memory(exception: BaseException) -> bool:
    """The CPU allocator failed."""
    return isinstance(exception, RuntimeError) and len(exception.args) == 1 and (
        "DefaultCPUAllocator: can't allocate memory" in str(exception.args[0]))


def is_oom_error(exception: BaseException) -> bool:
    """Any of the out-of-memory errors above."""
    return is_cuda_out_of_memory(exception) or is_cudnn_snafu(exception) or is_out_of_cpu_memory(exception)


def garbage_collection_cuda() -> None:
    """Collect Python garbage and release the CUDA cache, so that a retry starts with free memory."""
    gc.collect()
    if torch.cuda.is_available():
        try:
            torch.cuda.empty_cache()
        except RuntimeError as err:  # empty_cache itself can run out of memory
            if not is_oom_error(err):
                raise
