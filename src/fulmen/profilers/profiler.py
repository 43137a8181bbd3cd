"""The profiler base class: start/stop an action, a text summary, and where the summary goes.

Example::

    from fulmen.profilers.profiler import Profiler
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

from fulmen._utils import rank_zero_info

__all__ = ["PassThroughProfiler", "Profiler"]


class Profiler:
    """Base class: ``start(action)``/``stop(action)`` (or ``with profile(action)``), ``summary()``, ``describe()``.

    ``dirpath``/``filename``: with a filename the summary goes to ``dirpath/{stage}-{filename}.txt``
    (``dirpath`` defaults to the Trainer's log directory); without one it is printed.

    Example (a custom profiler)::

        class CountingProfiler(Profiler):
            def __init__(self):
                super().__init__()
                self.counts = collections.Counter()
            def start(self, action_name): self.counts[action_name] += 1
            def stop(self, action_name): pass
            def summary(self): return str(self.counts)
    """

    #: whether the Trainer should attach this profiler at all (False only for the pass-through one)
    active = True

    def __init__(self, dirpath: str | os.PathLike | None = None, filename: str | None = None) -> None:
        self.dirpath = os.fspath(dirpath) if dirpath is not None else None
        self.filename = filename
        self._stage: str | None = None
        self._local_rank: int | None = None  # set only when several processes run, to tell their files apart

    @property
    def local_rank(self) -> int:
        """The rank of this process on its machine (0 when one process runs); it tells the ranks' files apart."""
        return 0 if self._local_rank is None else self._local_rank

    def start(self, action_name: str) -> None:
        """Begin timing ``action_name``."""
        raise NotImplementedError

    def stop(self, action_name: str) -> None:
        """End timing ``action_name``."""
        raise NotImplementedError

    def summary(self) -> str:
        """The report, as text."""
        raise NotImplementedError

    @contextmanager
    def profile(self, action_name: str) -> Iterator[None]:
        """Time the ``with`` block as ``action_name``."""
        self.start(action_name)
        try:
            yield
        finally:
            self.stop(action_name)

    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        """Called by the Trainer when a run (``stage``: fit/validate/test/predict) begins."""
        self._stage = stage
        self._local_rank = local_rank
        if self.dirpath is None:
            self.dirpath = log_dir

    def _prepare_filename(self, action_name: str | None = None, extension: str = ".txt") -> str:
        """``{stage}-{filename}-{local_rank}-{action}{extension}``, leaving out the parts that are unset."""
        parts = [self._stage, self.filename, None if self._local_rank is None else str(self._local_rank), action_name]
        base = "-".join(p for p in parts if p)
        return re.sub(r"[\\/:*?\"<>|\n\r\t]", "_", base) + extension  # characters no file system accepts

    def _stats_to_str(self, stats: dict[str, str]) -> str:
        """The report layout Lightning writes: a stage title, then "Profile stats for: ..." and each table."""
        out = [f"{self._stage.upper()} Profiler Report" if self._stage else "Profiler Report"]
        for action, text in stats.items():
            rank = f" rank: {self._local_rank}" if self._local_rank is not None else ""
            out += [f"Profile stats for: {action}{rank}", text]
        return os.linesep.join(out)

    def describe(self) -> None:
        """Write the summary: to ``dirpath/{stage}-{filename}.txt`` when a filename was given, else print it."""
        text = self.summary()
        if not text:
            return
        if self.filename:
            os.makedirs(self.dirpath or ".", exist_ok=True)
            path = os.path.join(self.dirpath or ".", self._prepare_filename())
            with open(path, "a") as f:
                f.write(text + "\n")
        else:
            rank_zero_info(text)

    def teardown(self, stage: str | None) -> None:
        """Called by the Trainer after a run; the base keeps its records."""


class PassThroughProfiler(Profiler):
    """What ``Trainer(profiler=None)`` uses: ``profile()`` works in user code and records nothing."""

    active = False

    def start(self, action_name: str) -> None:
        pass

    def stop(self, action_name: str) -> None:
        pass

    def summary(self) -> str:
        return ""

