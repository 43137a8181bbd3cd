"""``AdvancedProfiler``: cProfile inside each action.

Example::

    from fulmen.profilers.advanced import AdvancedProfiler

    trainer = fulmen.Trainer(profiler=AdvancedProfiler(filename="perf", line_count_restriction=20))
"""

from __future__ import annotations

import os
from typing import Any

from fulmen.errors import MisconfigurationException
from fulmen.profilers.profiler import Profiler

__all__ = ["AdvancedProfiler"]


class AdvancedProfiler(Profiler):
    """cProfile inside each action: per action, the functions that took the time (by cumulative time).

    ``line_count_restriction`` limits each action's listing (an int: lines; a float in (0, 1]: a fraction).

    Example::

        trainer = fulmen.Trainer(profiler=AdvancedProfiler(line_count_restriction=20))
    """

    def __init__(self, dirpath: str | os.PathLike | None = None, filename: str | None = None,
                 line_count_restriction: float = 1.0) -> None:
        super().__init__(dirpath, filename)
        self.line_count_restriction = line_count_restriction
        self.profiled_actions: dict[str, Any] = {}

    def start(self, action_name: str) -> None:
        import cProfile

        prof = self.profiled_actions.get(action_name)
        if prof is None:
            prof = self.profiled_actions[action_name] = cProfile.Profile()
        prof.enable()

    def stop(self, action_name: str) -> None:
        prof = self.profiled_actions.get(action_name)
        if prof is None:
            raise MisconfigurationException(f"Profiler action {action_name!r} was stopped without being started.")
        prof.disable()

    def summary(self) -> str:
        import io
        import pstats

        stats = {}
        for action, prof in self.profiled_actions.items():
            out = io.StringIO()
            pstats.Stats(prof, stream=out).strip_dirs().sort_stats("cumulative").print_stats(self.line_count_restriction)
            stats[action] = out.getvalue()
        return self._stats_to_str(stats) if stats else ""

    def teardown(self, stage: str | None) -> None:
        for prof in self.profiled_actions.values():
            prof.disable()

