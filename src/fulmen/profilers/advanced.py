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
    ``dump_stats=True`` also writes each action's raw cProfile data, when the summary is made, to
    ``dirpath/{stage}-{filename}-{action}.prof`` (``dirpath`` defaults to the run's log folder); read it with
    ``pstats.Stats(path)`` or snakeviz.

    Example::

        trainer = fulmen.Trainer(profiler=AdvancedProfiler(line_count_restriction=20))
        trainer = fulmen.Trainer(profiler=AdvancedProfiler(dirpath="prof", filename="run", dump_stats=True))
    """

    def __init__(self, dirpath: str | os.PathLike | None = None, filename: str | None = None,
                 line_count_restriction: float = 1.0, dump_stats: bool = False) -> None:
        super().__init__(dirpath, filename)
        self.line_count_restriction = line_count_restriction
        self.dump_stats = dump_stats
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
            if self.dump_stats:
                self._dump(action, prof)
            out = io.StringIO()
            pstats.Stats(prof, stream=out).strip_dirs().sort_stats("cumulative").print_stats(self.line_count_restriction)
            stats[action] = out.getvalue()
        return self._stats_to_str(stats) if stats else ""

    def _dump(self, action: str, prof: Any) -> None:
        if self.dirpath is None:
            raise MisconfigurationException(
                "AdvancedProfiler(dump_stats=True) has no folder to write the .prof files to: pass "
                "AdvancedProfiler(dirpath=..., dump_stats=True), or attach it to a Trainer (which gives it the log folder)."
            )
        from fulmen.checkpoint import get_filesystem, is_local

        path = os.path.join(self.dirpath, self._prepare_filename(action_name=action, extension=".prof"))
        if is_local(path):
            os.makedirs(self.dirpath, exist_ok=True)
            prof.dump_stats(path)
            return
        import tempfile

        fs = get_filesystem(path)  # cProfile writes only local files: write one, then copy it up
        fs.makedirs(self.dirpath, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, "stats.prof")
            prof.dump_stats(local)
            fs.put_file(local, path)

    def teardown(self, stage: str | None) -> None:
        for prof in self.profiled_actions.values():
            prof.disable()

