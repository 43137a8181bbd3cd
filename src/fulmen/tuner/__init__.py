"""Tuning before training: ``Tuner.lr_find`` and ``Tuner.scale_batch_size`` (the code is in ``tuning.py``).

Example::

    from fulmen.tuner import Tuner

    Tuner(trainer).lr_find(model)
"""

from fulmen.finders import _search  # noqa: F401  (the search tests import it from here)
from fulmen.tuner.tuning import Tuner

__all__ = ["Tuner"]
