"""Lightning's path ``profilers.base``: the pass-through profiler ``Trainer(profiler=None)`` uses.

Example::

    from fulmen.profilers.base import PassThroughProfiler
"""

from fulmen.profilers.profiler import PassThroughProfiler

__all__ = ["PassThroughProfiler"]
