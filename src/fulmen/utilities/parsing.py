"""Hyperparameter helpers: the attribute dict ``hparams`` is, and whether a value can be pickled.

Example::

    from fulmen.utilities.parsing import AttributeDict, is_picklable

    is_picklable(lambda x: x)  # False
"""

from fulmen._lightning_utils import is_picklable
from fulmen._utils import AttributeDict

__all__ = ["AttributeDict", "is_picklable"]
