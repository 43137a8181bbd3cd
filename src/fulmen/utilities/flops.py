"""Counting the floating-point operations of a model's forward (and backward) pass.

Example::

    from fulmen.utilities.flops import measure_flops

    with torch.device("meta"):
        model = MyModel()
        x = torch.randn(2, 128)
    flops = measure_flops(model, lambda: model(x), lambda y: y.sum())
    throughput = ThroughputMonitor(batch_size_fn=lambda b: b.size(0))   # with flops_per_batch=flops
"""

from fulmen._lightning_utils import measure_flops

__all__ = ["measure_flops"]
