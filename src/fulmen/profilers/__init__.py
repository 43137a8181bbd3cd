"""Profilers: where the time of a run goes, per hook and per action.

``Trainer(profiler="simple")`` times every action and prints a table at the end; ``"advanced"`` runs
cProfile inside each action; ``"pytorch"`` records operator-level timings with ``torch.profiler`` and
writes a trace that chrome://tracing (or https://ui.perfetto.dev) opens.

Profiling is attached for the length of one run by wrapping, on the instances, only what the run will
call: the callback hooks and module hooks that are overridden, the steps, and the strategy's
``backward``/``optimizer_step``/``batch_to_device``. With ``profiler=None`` nothing is wrapped and the
loop runs exactly as without this module.

Actions you time yourself show up in the same table::

    with self.trainer.profiler.profile("my_augmentation"):
        batch = augment(batch)
"""

from __future__ import annotations

import functools
import os
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from fulmen.errors import MisconfigurationException
from fulmen.utilities import is_overridden, rank_zero_info


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
        if self.dirpath is None:
            self.dirpath = log_dir

    def describe(self) -> None:
        """Write the summary: to ``dirpath/{stage}-{filename}.txt`` when a filename was given, else print it."""
        text = self.summary()
        if not text:
            return
        if self.filename:
            os.makedirs(self.dirpath or ".", exist_ok=True)
            path = os.path.join(self.dirpath or ".", f"{self._stage}-{self.filename}.txt")
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

        parts = []
        for action, prof in self.profiled_actions.items():
            out = io.StringIO()
            pstats.Stats(prof, stream=out).strip_dirs().sort_stats("cumulative").print_stats(self.line_count_restriction)
            parts.append(f"Profile stats for: {action}\n{out.getvalue()}")
        return "\n".join(parts)

    def teardown(self, stage: str | None) -> None:
        for prof in self.profiled_actions.values():
            prof.disable()


class PyTorchProfiler(Profiler):
    """``torch.profiler`` over the whole run, each action a named range; writes a Chrome trace.

    The trace goes to ``dirpath/{filename or 'pytorch'}-{stage}.pt.trace.json`` (open it in chrome://tracing
    or Perfetto); ``summary()`` is torch's operator table sorted by ``sort_by_key``. Extra keyword
    arguments go to ``torch.profiler.profile`` (e.g. ``record_shapes=True``, ``profile_memory=True``).

    Example::

        trainer = fulmen.Trainer(profiler=PyTorchProfiler(dirpath="traces", row_limit=15), max_steps=20)
    """

    def __init__(self, dirpath: str | os.PathLike | None = None, filename: str | None = None,
                 export_to_chrome: bool = True, row_limit: int = 20, sort_by_key: str | None = None,
                 **profiler_kwargs: Any) -> None:
        super().__init__(dirpath, filename)
        self.export_to_chrome, self.row_limit = export_to_chrome, row_limit
        self.sort_by_key = sort_by_key
        self.profiler_kwargs = profiler_kwargs
        self._profiler: Any = None
        self._ranges: dict[str, Any] = {}
        self._table = ""
        self.trace_path: str | None = None

    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        import torch

        super().setup(stage, local_rank, log_dir)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        kwargs = {"activities": activities, **self.profiler_kwargs}
        self._profiler = torch.profiler.profile(**kwargs)
        self._profiler.__enter__()

    def start(self, action_name: str) -> None:
        import torch

        if self._profiler is None:  # used outside a run: nothing to record into
            return
        rng = torch.profiler.record_function(action_name)
        rng.__enter__()
        self._ranges[action_name] = rng

    def stop(self, action_name: str) -> None:
        rng = self._ranges.pop(action_name, None)
        if rng is not None:
            rng.__exit__(None, None, None)

    def teardown(self, stage: str | None) -> None:
        if self._profiler is None:
            return
        for name in list(self._ranges):
            self.stop(name)
        prof, self._profiler = self._profiler, None
        prof.__exit__(None, None, None)
        if self.export_to_chrome:
            os.makedirs(self.dirpath or ".", exist_ok=True)
            self.trace_path = os.path.join(self.dirpath or ".", f"{self.filename or 'pytorch'}-{stage}.pt.trace.json")
            prof.export_chrome_trace(self.trace_path)
        key = self.sort_by_key or ("cuda_time_total" if any(e.device_type.name == "CUDA" for e in prof.events())
                                   else "cpu_time_total")
        self._table = prof.key_averages().table(sort_by=key, row_limit=self.row_limit)

    def summary(self) -> str:
        return self._table

    def describe(self) -> None:
        # the table exists once the torch profiler stopped, so teardown comes first here
        self.teardown(self._stage)
        super().describe()


_BY_NAME = {"simple": SimpleProfiler, "advanced": AdvancedProfiler, "pytorch": PyTorchProfiler}


def make_profiler(value: Any) -> Profiler:
    """The profiler for ``Trainer(profiler=value)``: None, "simple", "advanced", "pytorch" or a Profiler."""
    if value is None:
        return PassThroughProfiler()
    if isinstance(value, Profiler):
        return value
    if isinstance(value, str) and value.lower() in _BY_NAME:
        return _BY_NAME[value.lower()]()
    raise MisconfigurationException(
        f"profiler={value!r} is not known; pass 'simple', 'advanced', 'pytorch', a fulmen.profilers.Profiler, or None."
    )


# ==================================================================================================
# attaching a profiler to one run
# ==================================================================================================
def _timed(profiler: Profiler, action: str, fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        profiler.start(action)
        try:
            return fn(*args, **kwargs)
        finally:
            profiler.stop(action)

    return wrapper


def timed_iter(profiler: Profiler, action: str, iterator: Iterator) -> Iterator:
    """``iterator``, with every ``next()`` (fetching a batch) timed as ``action``."""
    while True:
        profiler.start(action)
        try:
            item = next(iterator)
        except StopIteration:
            return
        finally:
            profiler.stop(action)
        yield item


_MODULE_METHODS = ("training_step", "validation_step", "test_step", "predict_step", "configure_optimizers",
                   "optimizer_step", "optimizer_zero_grad", "lr_scheduler_step", "configure_gradient_clipping",
                   "backward")


def attach(trainer: Any, stage: str) -> Callable[[], None]:
    """Wrap what this run will call with timers; returns the function that unwraps and reports.

    Only methods that are already overridden get wrapped, so the loops' "is this hook overridden?"
    decisions do not change.
    """
    from fulmen.callbacks.callback import CALLBACK_HOOKS, Callback
    from fulmen.module import LightningModule

    profiler: Profiler = trainer.profiler
    module, strategy = trainer.lightning_module, trainer.strategy
    saved: list[tuple[Any, str, Any]] = []

    def wrap(obj: Any, name: str, action: str) -> None:
        saved.append((obj, name, obj.__dict__.get(name, _MISSING)))
        obj.__dict__[name] = _timed(profiler, action, getattr(obj, name))

    for cb in trainer.callbacks:
        for hook in CALLBACK_HOOKS:
            if is_overridden(hook, cb, Callback):
                wrap(cb, hook, f"[Callback]{cb.state_key}.{hook}")
    module_name = type(module).__name__
    for hook in (*CALLBACK_HOOKS, *_MODULE_METHODS):
        if hasattr(LightningModule, hook) and is_overridden(hook, module, LightningModule):
            wrap(module, hook, f"[LightningModule]{module_name}.{hook}")
    strategy_name = type(strategy).__name__
    for name in ("backward", "optimizer_step", "batch_to_device"):
        wrap(strategy, name, f"[Strategy]{strategy_name}.{name}")
    profiler.setup(stage, trainer.local_rank, trainer.log_dir)

    def detach() -> None:
        for obj, name, before in reversed(saved):
            if before is _MISSING:
                obj.__dict__.pop(name, None)
            else:
                obj.__dict__[name] = before
        profiler.describe()
        profiler.teardown(stage)

    return detach


_MISSING = object()
