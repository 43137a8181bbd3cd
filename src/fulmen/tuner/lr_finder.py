"""Lightning's path to the learning-rate finder's result (``Tuner.lr_find`` returns one); the code lives in
``fulmen.finders``.

Example::

    from fulmen.tuner.lr_finder import _LRFinder

    finder = Tuner(trainer).lr_find(model)
    assert isinstance(finder, _LRFinder)
"""

from fulmen.finders import _LRFinder

__all__ = ["_LRFinder"]
