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
from typing import Any, Callable, Iterator

from fulmen._utils import is_overridden
from fulmen.errors import MisconfigurationException
from fulmen.profilers.advanced import AdvancedProfiler
from fulmen.profilers.profiler import PassThroughProfiler, Profiler
from fulmen.profilers.pytorch import PyTorchProfiler
from fulmen.profilers.simple import SimpleProfiler

__all__ = ["AdvancedProfiler", "PassThroughProfiler", "Profiler", "PyTorchProfiler", "SimpleProfiler"]

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
    for hook in (*CALLBACK_HOOKS, *_MODULE_METHODS):
        if hasattr(LightningModule, hook) and is_overridden(hook, module, LightningModule):
            wrap(module, hook, f"[LightningModule]{type(module).__name__}.{hook}")
    for name in ("backward", "optimizer_step", "batch_to_device"):
        wrap(strategy, name, f"[Strategy]{type(strategy).__name__}.{name}")
    # as in Lightning, the local rank goes into file names only when several processes write them
    profiler._lightning_module = module
    profiler.setup(stage, trainer.local_rank if trainer.world_size > 1 else None, trainer.log_dir)

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
