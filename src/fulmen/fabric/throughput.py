"""Lightning Fabric's ``ThroughputMonitor``: :class:`~fulmen.callbacks.throughput_monitor.Throughput` (the one home
of the rate arithmetic, shared with the Trainer's callback) that logs through the Fabric's loggers."""

from __future__ import annotations

from typing import Any

from fulmen._lightning_utils import measure_flops
from fulmen.callbacks.throughput_monitor import Throughput

__all__ = ["Throughput", "ThroughputMonitor", "measure_flops"]


class ThroughputMonitor(Throughput):
    """:class:`Throughput` for a Fabric program: the world size is the Fabric's, and ``compute_and_log`` logs the
    metrics with ``fabric.log_dict`` at ``step`` (by default one more than the last call's, from 0). Only global
    rank zero records and logs: elsewhere ``update`` does nothing and ``compute``/``compute_and_log`` return ``{}``.
    The caller measures time; on CUDA synchronise first (``torch.cuda.synchronize()``) or the clock reads early.

    Args:
        fabric: a launched Fabric.
        **kwargs: :class:`Throughput`'s ``available_flops``, ``window_size``, ``separator``.

    Example::

        throughput = ThroughputMonitor(fabric, window_size=10)
        t0 = time.perf_counter()
        for i, batch in enumerate(loader, 1):
            train_step(batch)
            throughput.update(time=time.perf_counter() - t0, batches=i, samples=i * batch_size)
            if i % 10 == 0:
                throughput.compute_and_log()
    """

    def __init__(self, fabric: Any, **kwargs: Any) -> None:
        fabric._check_launched()  # the world size is known once the processes have started
        super().__init__(world_size=fabric.world_size, **kwargs)
        self._fabric = fabric
        self._rank_zero = fabric.is_global_zero
        self.step = -1

    def update(self, **kwargs: Any) -> None:
        if self._rank_zero:
            super().update(**kwargs)

    def compute(self) -> dict[str, float]:
        return super().compute() if self._rank_zero else {}

    def reset(self) -> None:
        if self._rank_zero:
            super().reset()

    def compute_and_log(self, step: int | None = None) -> dict[str, float]:
        """:meth:`compute`, logged with ``fabric.log_dict`` at ``step``; returns the metrics."""
        if not self._rank_zero:
            return {}
        self.step = self.step + 1 if step is None else step
        metrics = self.compute()
        self._fabric.log_dict(metrics, step=self.step)
        return metrics
