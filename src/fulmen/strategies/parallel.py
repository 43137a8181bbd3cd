"""Lightning's import path for ``ParallelStrategy``; it lives in :mod:`fulmen.strategies.ddp`.

Example::

    from fulmen.strategies.parallel import ParallelStrategy
"""

from fulmen.strategies.ddp import ParallelStrategy

__all__ = ["ParallelStrategy"]
