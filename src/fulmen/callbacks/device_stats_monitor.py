"""``DeviceStatsMonitor``: log the accelerator's (and optionally the CPU's) statistics around each batch."""

from __future__ import annotations

from typing import Any, Callable

from fulmen.callbacks.callback import Callback
from fulmen.accelerators.cpu import get_cpu_stats
from fulmen.errors import MisconfigurationException
from fulmen.trainer.state import logging_due


def _stats_hook(hook: str) -> Callable[..., None]:
    """The batch hook ``hook``: log the device's statistics under ``DeviceStatsMonitor.<hook>/``."""

    def log_stats(self: DeviceStatsMonitor, trainer: Any, *args: Any, **kwargs: Any) -> None:
        self._log(trainer, hook)

    return log_stats


class DeviceStatsMonitor(Callback):
    """Log device statistics at the start and end of every training, validation and test batch (when the
    Trainer logs that step). Keys are ``DeviceStatsMonitor.<hook>/<stat>``: ``torch.cuda.memory_stats`` on a GPU,
    CPU load and memory (psutil) on a CPU, or in addition to the GPU's with ``cpu_stats=True``.

    Args:
        cpu_stats: Log CPU statistics too when training on a GPU (needs ``psutil``). None: only on a CPU.

    Example::

        fulmen.Trainer(callbacks=[DeviceStatsMonitor()], logger=CSVLogger("logs"))
    """

    def __init__(self, cpu_stats: bool | None = None) -> None:
        self._cpu_stats = cpu_stats

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        if not trainer.loggers:
            raise MisconfigurationException(
                "DeviceStatsMonitor has nothing to log to: the Trainer has logger=False. Pass a logger or drop it."
            )
        if self._cpu_stats or trainer.strategy.root_device.type == "cpu":
            get_cpu_stats()  # fail now, not mid-epoch, when psutil is missing

    def _log(self, trainer: Any, hook: str) -> None:
        if not trainer.loggers or not logging_due(trainer._loop.batches_stepped + 1, trainer.log_every_n_steps):
            return
        device = trainer.strategy.root_device
        stats = {k: float(v) for k, v in trainer.accelerator.get_device_stats(device).items()}
        if self._cpu_stats and device.type != "cpu":
            stats.update(get_cpu_stats())
        prefix = f"{type(self).__qualname__}.{hook}/"
        metrics = {prefix + k: v for k, v in stats.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer._loop.batches_stepped)

    on_train_batch_start = _stats_hook("on_train_batch_start")
    on_train_batch_end = _stats_hook("on_train_batch_end")
    on_validation_batch_start = _stats_hook("on_validation_batch_start")
    on_validation_batch_end = _stats_hook("on_validation_batch_end")
    on_test_batch_start = _stats_hook("on_test_batch_start")
    on_test_batch_end = _stats_hook("on_test_batch_end")
