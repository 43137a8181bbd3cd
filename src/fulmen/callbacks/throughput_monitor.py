"""``ThroughputMonitor``: log batches, samples (and items) per second over a sliding window."""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable

import torch

from fulmen.callbacks.callback import Callback
from fulmen.errors import MisconfigurationException
from fulmen.trainer.state import RunningStage, logging_due


class _Window:
    """Cumulative counters of one stage, and a window of the last ``size`` of them for rates."""

    def __init__(self, size: int) -> None:
        self.entries: deque = deque(maxlen=size)
        self.start = time.perf_counter()
        self.batches = self.samples = self.items = 0

    def add(self, samples: int, items: int | None) -> None:
        self.batches += 1
        self.samples += samples
        self.items += items or 0
        self.entries.append((time.perf_counter() - self.start, self.batches, self.samples, self.items))

    def compute(self, stage: str, sep: str, with_items: bool) -> dict[str, float]:
        now, batches, samples, items = self.entries[-1]
        out = {f"{stage}{sep}time": now, f"{stage}{sep}batches": batches, f"{stage}{sep}samples": samples}
        if with_items:
            out[f"{stage}{sep}items"] = items
        if len(self.entries) == self.entries.maxlen:
            t0, b0, s0, i0 = self.entries[0]
            elapsed = now - t0
            if elapsed > 0:
                out[f"{stage}{sep}batches_per_sec"] = (batches - b0) / elapsed
                out[f"{stage}{sep}samples_per_sec"] = (samples - s0) / elapsed
                if with_items:
                    out[f"{stage}{sep}items_per_sec"] = (items - i0) / elapsed
        return out


class ThroughputMonitor(Callback):
    """Log throughput during training and validation: ``train/time``, ``train/batches``, ``train/samples`` and,
    once ``window_size`` batches were seen, ``train/batches_per_sec`` and ``train/samples_per_sec`` (``items``
    with ``length_fn``, e.g. tokens). Logged every ``log_every_n_steps`` optimizer steps during training and
    after each validation batch; on CUDA the device is synchronised before reading the clock.

    Args:
        batch_size_fn: Returns the number of samples in a batch.
        length_fn: Returns the number of items (e.g. tokens) in a batch, for ``items_per_sec``.
        window_size: How many batches the rates are averaged over.
        separator: Between the stage and the metric in the logged keys (``train/samples``).

    Example::

        monitor = ThroughputMonitor(batch_size_fn=lambda batch: batch[0].size(0), window_size=50)
        fulmen.Trainer(callbacks=[monitor], logger=CSVLogger("logs"))
    """

    def __init__(self, batch_size_fn: Callable[[Any], int], length_fn: Callable[[Any], int] | None = None,
                 window_size: int = 100, separator: str = "/", **kwargs: Any) -> None:
        if window_size < 2:
            raise MisconfigurationException(f"ThroughputMonitor(window_size={window_size}): needs at least 2 batches.")
        if kwargs:
            raise MisconfigurationException(
                f"ThroughputMonitor got unknown arguments {sorted(kwargs)}; it takes batch_size_fn, length_fn, "
                "window_size and separator."
            )
        self.batch_size_fn = batch_size_fn
        self.length_fn = length_fn
        self.window_size = window_size
        self.separator = separator
        self._windows: dict[str, _Window] = {}
        self._sync: Callable[[], None] = lambda: None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        device = trainer.strategy.root_device
        self._sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def _start(self, stage: str) -> None:
        self._sync()
        self._windows[stage] = _Window(self.window_size)

    def _update(self, trainer: Any, stage: str, batch: Any, log: bool, step: int) -> None:
        self._sync()
        window = self._windows[stage]
        window.add(self.batch_size_fn(batch), self.length_fn(batch) if self.length_fn else None)
        if log and trainer.loggers:
            metrics = window.compute(stage, self.separator, self.length_fn is not None)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._start(RunningStage.TRAINING.value)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        stepped = trainer._loop.batches_stepped
        self._update(trainer, RunningStage.TRAINING.value, batch, logging_due(stepped, trainer.log_every_n_steps),
                     stepped - 1)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._start(RunningStage.VALIDATING.value)

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self._update(trainer, RunningStage.VALIDATING.value, batch, True, trainer._loop.batches_stepped)
