"""The pass-through profiler: what ``Trainer(profiler=None)`` uses.

Example::

    from fulmen.profilers.base import PassThroughProfiler
"""

from __future__ import annotations

from fulmen.profilers.profiler import Profiler

__all__ = ["PassThroughProfiler"]


class PassThroughProfiler(Profiler):
    """What ``Trainer(profiler=None)`` uses: ``profile()`` works in user code and records nothing."""

    active = False

    def start(self, action_name: str) -> None:
        pass

    def stop(self, action_name: str) -> None:
        pass

    def summary(self) -> str:
        return ""

