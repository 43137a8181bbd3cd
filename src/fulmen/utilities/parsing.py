"""Hyperparameter helpers: the attribute dict ``hparams`` is, and whether a value can be pickled.

Example::

    from fulmen.utilities.parsing import AttributeDict, is_picklable

    is_picklable(lambda x: x)  # False
"""

from __future__ import annotations

import pickle
from typing import Any

from fulmen.utilities import AttributeDict

__all__ = ["AttributeDict", "is_picklable"]


def is_picklable(obj: Any) -> bool:
    """Whether ``pickle.dumps(obj)`` succeeds (what a checkpoint's hyperparameters need).

    Example::

        is_picklable({"lr": 0.1}), is_picklable(open(__file__))  # (True, False)
    """
    try:
        pickle.dumps(obj)
    except (pickle.PickleError, AttributeError, RuntimeError, TypeError):
        return False
    return True
