"""``SimpleProfiler``: the wall-clock time of every action, as a table.

Example::

    from fulmen.profilers.simple import SimpleProfiler

    trainer = fulmen.Trainer(profiler=SimpleProfiler(filename="perf"))
"""

from __future__ import annotations

import os
import time
from collections import defaultdict

from fulmen.errors import MisconfigurationException
from fulmen.profilers.profiler import Profiler

__all__ = ["SimpleProfiler"]


class SimpleProfiler(Profiler):
    """Wall-clock time of every action: a table of mean duration, calls, total and share of the run.

    Example::

        trainer = fulmen.Trainer(profiler=SimpleProfiler(filename="perf"))   # -> <log_dir>/fit-perf.txt
    """

    def __init__(self, dirpath: str | os.PathLike | None = None, filename: str | None = None,
                 extended: bool = True) -> None:
        super().__init__(dirpath, filename)
        self.extended = extended
        self.recorded_durations: dict[str, list[float]] = defaultdict(list)
        self.current_actions: dict[str, float] = {}
        self._run_start = time.perf_counter()

    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        super().setup(stage, local_rank, log_dir)
        self._run_start = time.perf_counter()

    def start(self, action_name: str) -> None:
        if action_name in self.current_actions:
            raise MisconfigurationException(
                f"Profiler action {action_name!r} was started twice without stop(); pair every start() with stop(), "
                "or use `with profiler.profile(name):`."
            )
        self.current_actions[action_name] = time.perf_counter()

    def stop(self, action_name: str) -> None:
        begun = self.current_actions.pop(action_name, None)
        if begun is None:
            raise MisconfigurationException(f"Profiler action {action_name!r} was stopped without being started.")
        self.recorded_durations[action_name].append(time.perf_counter() - begun)

    def summary(self) -> str:
        if not self.recorded_durations:
            return ""
        total = max(time.perf_counter() - self._run_start, 1e-12)
        rows = sorted(((a, sum(d) / len(d), len(d), sum(d)) for a, d in self.recorded_durations.items()),
                      key=lambda r: r[3], reverse=True)
        head = ("Action", "Mean duration (s)", "Num calls", "Total time (s)", "Percentage %")
        body = [(a, f"{m:.5g}", str(n), f"{t:.5g}", f"{100 * t / total:.2f}") for a, m, n, t in rows]
        body.insert(0, ("Total", "-", str(sum(r[2] for r in rows)), f"{total:.5g}", "100 %"))
        width = [max(len(r[i]) for r in [head, *body]) for i in range(5)]
        line = lambda r: "|  " + "  |  ".join(c.ljust(w) for c, w in zip(r, width)) + "  |"  # noqa: E731
        rule = "-" * len(line(head))
        title = "FIT Profiler Report" if self._stage in (None, "fit") else f"{self._stage.upper()} Profiler Report"
        return "\n".join([title, rule, line(head), rule, *map(line, body), rule])

    def teardown(self, stage: str | None) -> None:
        self.current_actions.clear()

