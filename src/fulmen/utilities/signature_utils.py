"""Whether a hook's signature takes a given argument: how optional hook arguments are decided once per run.

Example::

    from fulmen.utilities.signature_utils import is_param_in_hook_signature

    is_param_in_hook_signature(model.training_step, "batch_idx")
"""

from __future__ import annotations

import inspect
from typing import Callable

__all__ = ["is_param_in_hook_signature"]


def is_param_in_hook_signature(hook_fx: Callable, param: str, explicit: bool = False, min_args: int | None = None) -> bool:
    """Whether ``hook_fx`` accepts ``param`` by name, through ``*args`` (unless ``explicit``), or has at
    least ``min_args`` positional parameters.

    Example::

        def step(self, batch): ...
        is_param_in_hook_signature(step, "batch_idx")  # False
    """
    parameters = inspect.getfullargspec(hook_fx)
    args = parameters.args[1:] if inspect.ismethod(hook_fx) else parameters.args
    return (
        param in args
        or (not explicit and parameters.varargs is not None)
        or (isinstance(min_args, int) and len(args) >= min_args)
    )
