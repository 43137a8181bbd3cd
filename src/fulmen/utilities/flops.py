"""Counting the floating-point operations of a model's forward (and backward) pass.

Example::

    from fulmen.utilities.flops import measure_flops

    with torch.device("meta"):
        model = MyModel()
        x = torch.randn(2, 128)
    flops = measure_flops(model, lambda: model(x), lambda y: y.sum())
    throughput = ThroughputMonitor(batch_size_fn=lambda b: b.size(0))   # with flops_per_batch=flops
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

__all__ = ["measure_flops"]


def measure_flops(model: nn.Module, forward_fn: Callable[[], Any], loss_fn: Callable[[Any], Any] | None = None) -> int:
    """FLOPs of ``forward_fn()`` (and of the backward pass of ``loss_fn(output)`` when given), counted by
    ``torch.utils.flop_counter``. On the ``meta`` device nothing is computed, only counted.

    Example::

        measure_flops(nn.Linear(4, 3), lambda: layer(torch.randn(2, 4)))  # 48
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = forward_fn()
        if loss_fn is not None:
            loss_fn(out).backward()
    return counter.get_total_flops()
