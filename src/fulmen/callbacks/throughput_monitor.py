"""``ThroughputMonitor``: log batches, samples (and items) per second over a sliding window."""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable

import torch

from fulmen.callbacks.callback import Callback
from fulmen.errors import MisconfigurationException
from fulmen.trainer.state import RunningStage, logging_due


class _Rising(list):
    """The last ``maxlen`` values of a counter that must rise with each append (a counter that stands still or
    falls is a mistake in the caller's bookkeeping, named at once rather than logged as a nonsense rate)."""

    def __init__(self, name: str, maxlen: int) -> None:
        super().__init__()
        self.name, self.maxlen = name, maxlen

    def append(self, value: Any) -> None:
        if self and value <= self[-1]:
            raise ValueError(f"Throughput.update({self.name}={value}): the {self.name} so far must grow with each "
                             f"call (the last call gave {self[-1]}). Pass running totals, not per-batch counts.")
        super().append(value)
        if len(self) > self.maxlen:
            del self[0]

    @property
    def full(self) -> bool:
        return len(self) == self.maxlen


class Throughput:
    """Throughput over a sliding window of running totals (Lightning Fabric's ``Throughput``): ``update`` with the
    time and the batches, samples (and items, e.g. tokens; and FLOPs) so far on this device, ``compute`` for
    ``time``, ``batches``, ``samples`` (``lengths``) and, once ``window_size`` updates were made, the rates per
    device (``device/batches_per_sec``, ``device/samples_per_sec``, ``device/items_per_sec``,
    ``device/flops_per_sec`` and, with ``available_flops``, ``device/mfu``) and, with ``world_size > 1``, over
    all devices (``batches_per_sec``, ...). It reads no clock and syncs nothing: the caller measures.

    Args:
        available_flops: the device's peak FLOPs per second, for the model FLOPs utilisation ``device/mfu``.
        world_size: the number of devices doing the same work (the totals over all are this many times one's).
        window_size: how many updates the rates are averaged over (at least 2).
        separator: between ``device`` and the metric's name.

    Example::

        throughput = Throughput(window_size=10)
        for i in range(1, 101):
            train_one_batch()
            throughput.update(time=time.perf_counter() - t0, batches=i, samples=i * batch_size)
        throughput.compute()["device/samples_per_sec"]
    """

    def __init__(self, available_flops: float | None = None, world_size: int = 1, window_size: int = 100,
                 separator: str = "/") -> None:
        if not isinstance(world_size, int) or world_size < 1:
            raise MisconfigurationException(f"Throughput(world_size={world_size!r}): give the number of devices, >= 1.")
        if not isinstance(window_size, int) or window_size < 2:
            raise MisconfigurationException(
                f"Throughput(window_size={window_size!r}): a rate needs a window of at least 2 updates.")
        self.available_flops, self.world_size, self.separator = available_flops, world_size, separator
        self._time = _Rising("time", window_size)
        self._batches = _Rising("batches", window_size)
        self._samples = _Rising("samples", window_size)
        self._lengths = _Rising("lengths", window_size)
        self._flops: deque = deque(maxlen=window_size)

    def update(self, *, time: float, batches: int, samples: int, lengths: int | None = None,
               flops: int | None = None) -> None:
        """Record the running totals on this device: seconds since the start, batches, samples, items
        (``lengths``) so far; ``flops`` is what this device computed since the last call."""
        if samples < batches:
            raise ValueError(f"Throughput.update(samples={samples}, batches={batches}): a batch holds at least one "
                             "sample; pass the running totals of both.")
        if lengths is not None and lengths < samples:
            raise ValueError(f"Throughput.update(lengths={lengths}, samples={samples}): lengths counts the items "
                             "(e.g. tokens) of the samples so far, at least one each.")
        self._time.append(time)
        self._batches.append(batches)
        self._samples.append(samples)
        if lengths is not None:
            self._lengths.append(lengths)
            if len(self._lengths) != len(self._samples):
                raise ValueError("Throughput.update(lengths=...) was left out in some calls: pass it in every call "
                                 "or in none.")
        if flops is not None:
            self._flops.append(flops * self.world_size)  # over all devices

    def rates(self) -> dict[str, float]:
        """Batches, samples and (when updated with lengths) items per second on this device over the window;
        empty until the window is full."""
        if not self._time.full:
            return {}
        elapsed = self._time[-1] - self._time[0]
        out = {"batches_per_sec": (self._batches[-1] - self._batches[0]) / elapsed,
               "samples_per_sec": (self._samples[-1] - self._samples[0]) / elapsed}
        if self._lengths.full:
            out["items_per_sec"] = (self._lengths[-1] - self._lengths[0]) / elapsed
        return out

    def compute(self) -> dict[str, float]:
        """The totals of the last update and the rates over the window (see the class)."""
        if not self._time:
            return {}
        out: dict[str, float] = {"time": self._time[-1], "batches": self._batches[-1], "samples": self._samples[-1]}
        if self._lengths:
            out["lengths"] = self._lengths[-1]
        for name, per_device in self.rates().items():
            out[f"device{self.separator}{name}"] = per_device
            if self.world_size > 1:
                out[name] = per_device * self.world_size
        if len(self._flops) == self._flops.maxlen:
            flops_per_sec = (sum(self._flops) - self._flops[0]) / (self._time[-1] - self._time[0])
            if self.world_size > 1:
                out["flops_per_sec"] = flops_per_sec
            out[f"device{self.separator}flops_per_sec"] = flops_per_sec / self.world_size
            if self.available_flops:
                out[f"device{self.separator}mfu"] = flops_per_sec / self.world_size / self.available_flops
        return out

    def reset(self) -> None:
        """Forget every update (e.g. after a pause that is no work: validation, a checkpoint)."""
        for window in (self._time, self._batches, self._samples, self._lengths, self._flops):
            window.clear()


class _Window:
    """Running totals of one stage, timed from its start; the rates are :class:`Throughput`'s."""

    def __init__(self, size: int) -> None:
        self.throughput = Throughput(window_size=size)
        self.start = time.perf_counter()
        self.batches = self.samples = self.items = 0

    def add(self, samples: int, items: int | None) -> None:
        self.batches += 1
        self.samples += samples
        self.items += items or 0
        self.throughput.update(time=time.perf_counter() - self.start, batches=self.batches, samples=self.samples,
                               lengths=self.items if items is not None else None)

    def compute(self, stage: str, sep: str, with_items: bool) -> dict[str, float]:
        t = self.throughput
        out = {f"{stage}{sep}time": t._time[-1], f"{stage}{sep}batches": self.batches,
               f"{stage}{sep}samples": self.samples}
        if with_items:
            out[f"{stage}{sep}items"] = self.items
        out.update({f"{stage}{sep}{name}": rate for name, rate in t.rates().items()})
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
